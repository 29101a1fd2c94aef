"""The labeling page of one site (issue #14): ``fedal-annotate``, its routes and command line.

A person at the site labels the queries of the site's query pool in a browser on the same
machine. The page runs next to the site's SuperNode, opens the same pool store (SQLite, shared
with the running ClientApp) and the same data (``fedal.data.site.load_site_data``), and writes
labels only through ``AnnotationDesk`` (fedal/annotate/annotators.py), so a query is paid once
and never over the budget, whoever else labels at the same time.

Data never leaves the site: the server binds to 127.0.0.1 unless ``--host`` says otherwise,
answers only requests addressed to the host it serves (a DNS-rebinding page cannot read it),
and every route but ``/healthz`` needs the site's token (a ``Authorization: Bearer`` header, or
the HttpOnly, SameSite=Strict cookie set by ``/?token=…`` or the login form). A missing token
gets 401 and a wrong one 403, with no data.

What it serves is a ``LabelingSite`` (fedal/annotate/site.py); its HTML is fedal/annotate/pages.py.
FastAPI + uvicorn: see docs/labeling.md for why.
"""


import argparse
import hmac
import ipaddress
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from fedal.annotate import pages
from fedal.annotate.annotators import run_state
from fedal.annotate.render import image_png
from fedal.annotate.site import MIN_TOKEN_CHARS, LabelingSite
from fedal.data.info import SiteDisplay, dataset_info, site_display
from fedal.data.registry import dataset_names
from fedal.store import DEFAULT_LEASE_S, BudgetSpent, PoolStore, QueryClosed, StoreError, site_store_path

TOKEN_ENV = "FEDAL_ANNOTATE_TOKEN"
TOKEN_COOKIE, SESSION_COOKIE = "fedal_token", "fedal_session"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


# ---------------------------------------------------------------------------------- the app
def create_app(site: LabelingSite, *, allowed_hosts: list[str] | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="fedal labeling page", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = sorted(set(LOOPBACK_NAMES) | set(allowed_hosts or []))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    @app.middleware("http")
    async def no_cache(request: Request, call_next):
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        return response

    def given_token(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(TOKEN_COOKIE)

    def check(token: str | None) -> int | None:
        """None when the token is right, else the HTTP status to answer."""
        if not token:
            return 401
        return None if hmac.compare_digest(token.encode(), site.token.encode()) else 403

    def refuse(request: Request, status: int) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(pages.login_page(status), status_code=status)
        return PlainTextResponse("token required" if status == 401 else "wrong token", status_code=status)

    def login_response(token: str, request: Request) -> Response:
        status = check(token)
        if status is not None:
            return refuse(request, status)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        if not request.cookies.get(SESSION_COOKIE):
            resp.set_cookie(SESSION_COOKIE, secrets.token_hex(12), httponly=True, samesite="strict")
        return resp

    def session_of(request: Request) -> str:
        return request.cookies.get(SESSION_COOKIE) or "api"

    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[-1] for k, v in parse_qs(body).items()}

    async def int_fields(request: Request, *names: str):
        """The form's integer fields, or the 400 response that names them."""
        f = await form(request)
        try:
            return {n: int(f[n]) for n in names}, None
        except (KeyError, ValueError):
            return None, PlainTextResponse(f"{', '.join(names)}: integers required", status_code=400)

    def back(note: str = "") -> Response:
        return RedirectResponse("/" + (f"?note={quote(note)}" if note else ""), status_code=303)

    @app.get("/healthz")
    def healthz():
        return PlainTextResponse("ok")

    @app.get("/")
    async def index(request: Request):
        if "token" in request.query_params:  # a link with the token: set the cookie, drop it from the URL
            return login_response(request.query_params["token"], request)
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        desk = site.desk(session_of(request))

        def work():
            run, q = site.run(), None
            if not run.finished:  # a finished run's page claims nothing
                # between the ClientApp's messages, a pool that runs low is refilled from the reserve its
                # last model ranked (PoolStore.promote_reserve: plain SQL, no model in this process)
                site.store.promote_reserve()
                q = desk.next()
            p = desk.progress()
            empty = None if q is not None else pages.empty_state(p, run.finished)
            if empty == "preparing" and not len(site.store.candidates()):  # none will come: say so
                empty = "nothing-left"
            return q, p, empty, site.store.last_paid(desk.annotator)

        q, p, empty, last = await run_in_threadpool(work)
        return HTMLResponse(site.render(q, p, empty, last, request.query_params.get("note", "")[:300]))

    @app.post("/login")
    async def login(request: Request):
        return login_response((await form(request)).get("token", ""), request)

    @app.post("/label")
    async def label(request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        v, bad = await int_fields(request, "query_id", "label")
        if bad is not None:
            return bad
        desk = site.desk(session_of(request))
        try:
            r = await run_in_threadpool(desk.submit, v["query_id"], v["label"])
        except BudgetSpent:
            return back("That point is no longer needed: everything asked for so far is labeled. Nothing was "
                        "counted.")
        except QueryClosed:
            return back("That point is no longer needed (it was labeled, skipped or withdrawn meanwhile). "
                        "Nothing was counted.")
        except StoreError as e:
            return back(str(e))
        # paid now: the page confirms it from the store (PoolStore.last_paid), with its Undo
        return back("" if r.paid_now else f"That point was already labeled \u2018{site.class_label(r.label)}\u2019; "
                    "nothing changed.")

    @app.post("/skip")
    async def skip(request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        v, bad = await int_fields(request, "query_id")
        if bad is not None:
            return bad
        try:
            await run_in_threadpool(site.desk(session_of(request)).skip, v["query_id"])
        except StoreError as e:
            return back(str(e))
        return back()

    @app.post("/undo")
    async def undo(request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        f = await form(request)
        try:
            expected = int(f["query_id"]) if f.get("query_id") else None  # the page's button names its label
        except ValueError:
            return PlainTextResponse("query_id: an integer required", status_code=400)
        desk = site.desk(session_of(request))

        def work():
            if site.run().finished:
                return "This labeling run has finished; its labels can no longer be changed."
            last = site.store.last_paid(desk.annotator)
            if last is None:
                return "You have no label to undo."
            if expected is not None and last.id != expected:
                return ("Nothing was undone: the label that button named is no longer your last one (another "
                        "tab?). The page now shows your last label.")
            if desk.undo() is None:
                return "You have no label to undo."
            return (f"Undone: your label \u2018{site.class_label(last.label)}\u2019 was removed. The point is back; "
                    "label it again.")

        return back(await run_in_threadpool(work))

    @app.get("/point/{query_id}.png")
    async def point_png(query_id: int, request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        q = await run_in_threadpool(site.store.query, query_id)
        if q is None or site.kind != "image":  # only points that were asked about
            return PlainTextResponse("no such query image", status_code=404)
        png = await run_in_threadpool(image_png, site.point(q.index), dark_ink=site.display.dark_ink)
        return Response(png, media_type="image/png")

    @app.get("/api/progress")
    async def api_progress(request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        p = await run_in_threadpool(site.store.progress, site.session_annotator(session_of(request)))
        run = await run_in_threadpool(site.run)
        return JSONResponse({**{k: getattr(p, k) for k in ("budget", "labeled", "remaining", "open", "claimed",
                                                            "labeled_queries", "withdrawn", "skipped",
                                                            "by_annotator")}, "run_finished": run.finished})

    return app


# ---------------------------------------------------------------------------------- command line
class StartupError(Exception):
    """A startup problem the operator can fix; the message says how."""


def read_token(args) -> str:
    sources = [s for s in (args.token is not None and "--token", args.token_file and "--token-file") if s]
    if len(sources) > 1:
        raise StartupError("give the token once: --token or --token-file, not both")
    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise StartupError(f"token file {path} cannot be read ({e.strerror or e})") from None
        where = f"token file {path}"
    elif args.token is not None:
        token, where = args.token.strip(), "--token"
    elif os.environ.get(TOKEN_ENV):
        token, where = os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        raise StartupError(f"no token: pass --token-file FILE (recommended; make one with `python -c \"import "
                           f"secrets; print(secrets.token_urlsafe(24))\" > FILE`), set {TOKEN_ENV}, or --token")
    if len(token) < MIN_TOKEN_CHARS:
        raise StartupError(f"the token from {where} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                           "(a random one: python -c \"import secrets; print(secrets.token_urlsafe(24))\")")
    return token


def is_loopback(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_site(args) -> tuple[LabelingSite, Path]:
    from fedal.data.site import SiteDataError, load_site_data

    token = read_token(args)
    state_dir = Path(args.state_dir).expanduser()
    if not state_dir.exists():
        raise StartupError(f"state-dir {state_dir} does not exist; give the state directory the site's SuperNode "
                           "uses (its node config 'state-dir'), where the pool store lives")
    if not state_dir.is_dir():
        raise StartupError(f"state-dir {state_dir} is not a directory")
    try:
        data = load_site_data(args.data_path, args.client_id)
    except SiteDataError as e:
        raise StartupError(str(e)) from None
    try:
        db = Path(args.store).expanduser() if args.store else site_store_path(state_dir, args.experiment_id,
                                                                               data.client_id)
    except StoreError as e:
        raise StartupError(str(e)) from None
    # the ClientApp creates the store at its run's first message: a page started next to the
    # SuperNode before the run may wait for it
    deadline = time.monotonic() + max(0.0, float(getattr(args, "wait_s", 0.0) or 0.0))
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if not db.exists():
        # the stores the ClientApp made here, as <experiment id>/<client id>.sqlite
        found = sorted(str(p.relative_to(state_dir / "pools")) for p in state_dir.glob("pools/*/*.sqlite"))
        raise StartupError(
            f"no pool store at {db}: the site's ClientApp creates it when it first runs. Start the SuperNode "
            "and the run first (or give --wait-s), with the same data-path, state-dir, experiment id and client id"
            f" (client id here: {data.client_id})" + (f"; stores in {state_dir}: {', '.join(found)}" if found else ""))
    try:
        store = PoolStore(db, args.experiment_id, data.client_id, data.n_points, data.fingerprint)
    except StoreError as e:
        raise StartupError(str(e)) from None
    recorded = run_state(store).dataset  # the run's dataset, as the site's ClientApp recorded it
    given = getattr(args, "dataset", None)
    if given and recorded and given != recorded:
        store.close()
        raise StartupError(f"--dataset {given} but the site's ClientApp runs dataset {recorded} (recorded in {db}); "
                           "leave --dataset out")

    def display_for(dataset: str | None) -> SiteDisplay:
        """How the points are drawn and the classes named: the site's data first, then the dataset's."""
        info = dataset_info(dataset, getattr(args, "data_root", None) or "") if dataset else None
        return site_display(data.x.shape[1:], site_names=data.class_names, site_shape=data.shape, info=info,
                            num_classes=args.num_classes, labeled_classes=data.num_classes,
                            where=f"the data at {data.path}")

    dataset = given or recorded
    try:
        try:
            display = display_for(dataset)
        except ValueError:
            if dataset is not None:
                raise
            # nothing names the classes yet: the ClientApp records the dataset at the run's first
            # message, just after it creates the store; wait for it while --wait-s allows
            while dataset is None and time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                dataset = run_state(store).dataset
            display = display_for(dataset)
        site = LabelingSite(store, data.x, list(display.class_names), token, site_name=data.client_id,
                            annotator=args.annotator, lease_s=args.lease_s, display=display,
                            resolve=display_for if dataset is None else None)
    except ValueError as e:
        store.close()
        raise StartupError(str(e)) from None
    return site, db


def parse_args(argv=None, prog: str = "fedal annotate"):
    ap = argparse.ArgumentParser(prog=prog, description=(
        "The labeling page of one site: label the site's query pool in a browser on this machine. Run it "
        "next to the site's SuperNode with the same data-path, state-dir, experiment id and client id."))
    ap.add_argument("--data-path", required=True, help="the site's data: an .npz file or an image folder")
    ap.add_argument("--state-dir", required=True, help="the SuperNode's state directory (holds the pool store)")
    ap.add_argument("--experiment-id", required=True, help="the federation's experiment id")
    ap.add_argument("--client-id", default=None, help="this site's client id (default: derived from the data, "
                    "as the ClientApp does)")
    ap.add_argument("--store", default=None, help="the pool store file, if not the default under --state-dir")
    ap.add_argument("--token", default=None, help=f"the site's token (visible in the process list: prefer "
                    f"--token-file or ${TOKEN_ENV})")
    ap.add_argument("--token-file", default=None, help="a file holding the site's token")
    ap.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this "
                    "machine only; anything else serves site data to the network)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--annotator", default="page", help="a name for who labels here (recorded with each label)")
    ap.add_argument("--num-classes", type=int, default=None, help="when neither the data nor its dataset names "
                    "the classes and the data has no y")
    ap.add_argument("--dataset", default=None, choices=dataset_names(), help="the run's dataset, for how points are "
                    "drawn and classes named (default: as the site's ClientApp recorded it in the store)")
    ap.add_argument("--data-root", default=None, help="the dataset's files, where its class names come from "
                    "them (cifar100)")
    ap.add_argument("--lease-s", type=float, default=DEFAULT_LEASE_S,
                    help="how long a shown query stays reserved for its browser")
    ap.add_argument("--wait-s", type=float, default=0.0,
                    help="wait up to this many seconds for the pool store to appear (the ClientApp creates it "
                         "at the run's first message); default 0: fail at once")
    return ap.parse_args(argv)


def main(argv=None, prog: str = "fedal annotate") -> int:
    # prog: how the user called it (fedal/cli.py passes "fedal annotate"; fedal-annotate is its old name)
    args = parse_args(argv, prog)
    try:
        site, db = build_site(args)
    except StartupError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    host, port = args.host, args.port
    if not is_loopback(host):
        print(f"{prog}: warning: serving on {host}: the site's data is visible to whoever reaches this "
              "address with the token; the default 127.0.0.1 keeps it on this machine", file=sys.stderr)
    try:  # a clear message instead of uvicorn's traceback when the port is taken
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as e:
        print(f"{prog}: error: cannot serve on {host}:{port} ({e.strerror or e}); pick another --port",
              file=sys.stderr)
        return 2
    import uvicorn

    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    d, names = site.display, site.class_names
    print(f"{prog}: site {site.site_name}, {len(site.x)} points drawn as {d.kind}s of shape "
          f"{'x'.join(map(str, d.shape))}, {len(names)} classes ({', '.join(names[:5])}"
          f"{', ...' if len(names) > 5 else ''}), store {db}\n"
          f"{prog}: open http://{shown}:{port}/ in a browser on this machine and enter the token", flush=True)
    extra = [] if is_loopback(host) else [host.strip("[]"), shown]
    # no access log: request lines may carry ?token=
    uvicorn.run(create_app(site, allowed_hosts=extra), host=host.strip("[]"), port=port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
