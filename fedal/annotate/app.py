"""The labeling page of one site (issue #14): ``fedal-annotate``.

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
from html import escape
from pathlib import Path
from urllib.parse import parse_qs, quote

import numpy as np

from fedal.annotate.annotators import AnnotationDesk
from fedal.annotate.render import image_png, point_kind, signal_svg
from fedal.store import DEFAULT_LEASE_S, PoolStore, Query, QueryClosed, StoreError, site_store_path

TOKEN_ENV = "FEDAL_ANNOTATE_TOKEN"
MIN_TOKEN_CHARS = 16
TOKEN_COOKIE, SESSION_COOKIE = "fedal_token", "fedal_session"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
REFRESH_S = 5  # an empty query pool: look again this often


def shortcut_keys(num_classes: int) -> list[str | None]:
    """The key of each class: digits 0-9 for the first ten, then the letters a-z; none beyond 36."""
    keys = [str(k) for k in range(10)] + [chr(ord("a") + k) for k in range(26)]
    return [keys[c] if c < len(keys) else None for c in range(num_classes)]


class LabelingSite:
    """What the page serves: one site's data, its pool store, the class names, the token."""

    def __init__(self, store: PoolStore, x: np.ndarray, class_names: list[str], token: str, *,
                 site_name: str = "", annotator: str = "page", lease_s: float = DEFAULT_LEASE_S) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        self.store, self.x, self.class_names, self.token = store, x, list(class_names), token
        self.kind = point_kind(x)
        self.site_name, self.annotator, self.lease_s = site_name or store.identity["client_id"], annotator, lease_s
        self.keys = shortcut_keys(len(self.class_names))

    def desk(self, session: str) -> AnnotationDesk:
        return AnnotationDesk(self.store, f"{self.annotator}/{session[:12]}", num_classes=len(self.class_names),
                              lease_s=self.lease_s)

    def class_label(self, c: int | None) -> str:
        if c is None:
            return "-"
        return self.class_names[c] if 0 <= c < len(self.class_names) else f"class {c}"


# ---------------------------------------------------------------------------------- HTML
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#24324a;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
.bar{background:#3b4d6b;border-radius:4px;width:260px;height:14px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#6fcf97}
main{padding:16px 20px;max-width:1000px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 16px;margin-bottom:14px}
.meta{color:#555;font-size:14px;margin:6px 0 10px}
.guess{font-size:16px;margin:8px 0}
.guess b{font-size:18px}
.classes{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
.classes button{font-size:16px;padding:10px 14px;border:1px solid #8fa3c0;background:#eef3fb;border-radius:6px;cursor:pointer;min-width:64px}
.classes button.guessed{border-color:#24324a;border-width:2px}
.classes button:hover{background:#dbe7f8}
kbd{font-family:ui-monospace,monospace;background:#fff;border:1px solid #aaa;border-bottom-width:2px;border-radius:3px;padding:0 4px;font-size:12px;color:#333}
.actions{display:flex;gap:10px;margin-top:6px}
.actions button{padding:8px 14px;border-radius:6px;border:1px solid #aaa;background:#fafafa;cursor:pointer}
.note{padding:8px 12px;border-radius:6px;background:#fff6d6;border:1px solid #e6d38a;margin-bottom:12px}
.point img{image-rendering:pixelated;border:1px solid #ccc;max-width:100%}
.help{color:#555;font-size:13px}
"""

_SCRIPT = """
(function(){
  var sent = false;
  function press(el){ if(!el || sent) return; sent = true; el.click(); }
  document.addEventListener('keydown', function(e){
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var el = null;
    if (e.key === ' ') el = document.getElementById('skip');
    else if (e.key === 'Backspace') el = document.getElementById('undo');
    else if (e.key.length === 1) el = document.querySelector('button[data-key="' + e.key.toLowerCase() + '"]');
    if (el) { e.preventDefault(); press(el); }
  });
  document.querySelectorAll('form').forEach(function(f){
    f.addEventListener('submit', function(){ sent = true; });
  });
})();
"""


def _page(title: str, body: str, *, refresh: int | None = None) -> str:
    head = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>{head}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body>{body}<script>{_SCRIPT}</script></body></html>")


def _header(site: LabelingSite, p) -> str:
    if p.budget:
        frac = min(1.0, p.labeled / p.budget)
        bar = (f'<span class="bar" title="{p.labeled} of {p.budget}"><span style="width:{100 * frac:.1f}%"></span>'
               f"</span> <span id=\"progress\">{p.labeled} / {p.budget} labels paid</span>")
    else:
        bar = f'<span id="progress">{p.labeled} labels paid (no budget set)</span>'
    return (f"<header><h1>fedal labeling · site {escape(site.site_name)}</h1><div>{bar}</div>"
            f"<div>{p.open} open queries · {p.skipped} skipped · you: {p.by_annotator or 0}</div></header>")


def _login_page(status: int) -> str:
    why = "This page needs the site's token." if status == 401 else "That token is not valid for this site."
    return _page("fedal labeling: token needed",
                 f'<main><div class="card"><h2>{escape(why)}</h2>'
                 '<form method="post" action="/login"><label>Token <input type="password" name="token" '
                 'autocomplete="current-password" autofocus></label> <button>Open</button></form>'
                 '<p class="help">The site operator has it (the file given to <code>fedal-annotate '
                 '--token-file</code>).</p></div></main>')


def render_query_page(site: LabelingSite, q: Query | None, p, note: str = "") -> str:
    parts = [_header(site, p), "<main>"]
    if note:
        parts.append(f'<div class="note" id="note">{escape(note)}</div>')
    undo = ('<form method="post" action="/undo"><button id="undo" type="submit" title="Backspace">'
            "Undo my last label <kbd>Backspace</kbd></button></form>")
    if q is None:
        if p.spent:
            msg = f"The label budget of this site is spent ({p.labeled} of {p.budget}). Thank you!"
        else:
            msg = (f"No open queries right now. The site's client refills the pool with its latest model; "
                   f"this page looks again every {REFRESH_S} s.")
        parts.append(f'<div class="card" id="empty"><h2>{escape(msg)}</h2><div class="actions">{undo}</div></div>')
        parts.append("</main>")
        return _page("fedal labeling", "".join(parts), refresh=REFRESH_S)
    if site.kind == "signal":
        shown = signal_svg(site.x[q.index])
    else:
        shown = f'<img id="point-image" src="/point/{q.id}.png" alt="point {q.index}">'
    guess = ""
    if q.guess is not None:
        conf = "" if q.confidence is None else f" (confidence {100 * q.confidence:.0f}%)"
        guess = (f'<div class="guess" id="guess">Model\'s guess: <b>{escape(site.class_label(q.guess))}</b>'
                 f"{escape(conf)}</div>")
    buttons = []
    for c, name in enumerate(site.class_names):
        key = site.keys[c]
        attrs = f' data-key="{key}" title="key {key}"' if key else ""
        cls = ' class="guessed"' if q.guess == c else ""
        kbd = f" <kbd>{escape(key)}</kbd>" if key else ""
        buttons.append(f'<button type="submit" name="label" value="{c}" id="class-{c}"{cls}{attrs}>'
                       f"{escape(name)}{kbd}</button>")
    parts.append(
        f'<div class="card"><div class="meta" id="query-meta" data-query-id="{q.id}" data-index="{q.index}">'
        # a durable store's queries carry the AL round of the message whose model chose them
        # (fedal/async_labeling.py, PeopleSite), not the server's model counter
        f"Query {q.id} · point {q.index} · chosen by <b>{escape(q.strategy)}</b> in AL round "
        f"{q.model_version}</div><div class=\"point\">{shown}</div>{guess}"
        f'<form method="post" action="/label" id="label-form"><input type="hidden" name="query_id" value="{q.id}">'
        f'<div class="classes">{"".join(buttons)}</div></form>'
        f'<div class="actions"><form method="post" action="/skip"><input type="hidden" name="query_id" '
        f'value="{q.id}"><button id="skip" type="submit" title="Space">Skip (can\'t tell) <kbd>Space</kbd>'
        f"</button></form>{undo}</div></div>"
        '<p class="help">Keys: the key shown on each class button labels the point; <kbd>Space</kbd> skips it; '
        "<kbd>Backspace</kbd> undoes your last label (the point comes back).</p></main>")
    return _page(f"fedal labeling · query {q.id}", "".join(parts))


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
            return HTMLResponse(_login_page(status), status_code=status)
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
            # between the ClientApp's messages, a pool that runs low is refilled from the reserve its
            # last model ranked (PoolStore.promote_reserve: plain SQL, no model in this process)
            site.store.promote_reserve()
            q = desk.next()
            return q, desk.progress()

        q, p = await run_in_threadpool(work)
        return HTMLResponse(render_query_page(site, q, p, request.query_params.get("note", "")[:300]))

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
        except StoreError as e:
            return back(str(e))
        return back("" if r.paid_now else f"point {r.index} was already labeled {site.class_label(r.label)}")

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
        q = await run_in_threadpool(site.desk(session_of(request)).undo)
        return back("nothing of yours to undo" if q is None else
                    f"undone: point {q.index} is back for you to label again")

    @app.get("/point/{query_id}.png")
    async def point_png(query_id: int, request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        q = await run_in_threadpool(site.store.query, query_id)
        if q is None or site.kind != "image":  # only points that were asked about
            return PlainTextResponse("no such query image", status_code=404)
        return Response(await run_in_threadpool(image_png, site.x[q.index]), media_type="image/png")

    @app.get("/api/progress")
    async def api_progress(request: Request):
        status = check(given_token(request))
        if status is not None:
            return refuse(request, status)
        p = await run_in_threadpool(site.store.progress, f"{site.annotator}/{session_of(request)[:12]}")
        return JSONResponse({k: getattr(p, k) for k in ("budget", "labeled", "remaining", "open", "claimed",
                                                          "labeled_queries", "withdrawn", "skipped", "by_annotator")})

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
    n_classes = args.num_classes or data.num_classes
    if data.class_names is not None:
        names = list(data.class_names)
        if args.num_classes and args.num_classes != len(names):
            raise StartupError(f"--num-classes {args.num_classes} but the data names {len(names)} classes")
    elif n_classes:
        names = [str(c) for c in range(n_classes)]
    else:
        store.close()
        raise StartupError(f"the data at {data.path} names no classes and holds no labels: give --num-classes")
    try:
        site = LabelingSite(store, data.x, names, token, site_name=data.client_id, annotator=args.annotator,
                            lease_s=args.lease_s)
    except ValueError as e:
        store.close()
        raise StartupError(str(e)) from None
    return site, db


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="fedal-annotate", description=(
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
    ap.add_argument("--num-classes", type=int, default=None, help="when the data names no classes and has no y")
    ap.add_argument("--lease-s", type=float, default=DEFAULT_LEASE_S,
                    help="how long a shown query stays reserved for its browser")
    ap.add_argument("--wait-s", type=float, default=0.0,
                    help="wait up to this many seconds for the pool store to appear (the ClientApp creates it "
                         "at the run's first message); default 0: fail at once")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        site, db = build_site(args)
    except StartupError as e:
        print(f"fedal-annotate: error: {e}", file=sys.stderr)
        return 2
    host, port = args.host, args.port
    if not is_loopback(host):
        print(f"fedal-annotate: warning: serving on {host}: the site's data is visible to whoever reaches this "
              "address with the token; the default 127.0.0.1 keeps it on this machine", file=sys.stderr)
    try:  # a clear message instead of uvicorn's traceback when the port is taken
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as e:
        print(f"fedal-annotate: error: cannot serve on {host}:{port} ({e.strerror or e}); pick another --port",
              file=sys.stderr)
        return 2
    import uvicorn

    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    print(f"fedal-annotate: site {site.site_name}, {len(site.x)} points, {len(site.class_names)} classes, "
          f"store {db}\nfedal-annotate: open http://{shown}:{port}/ in a browser on this machine and enter the "
          "token", flush=True)
    extra = [] if is_loopback(host) else [host.strip("[]"), shown]
    # no access log: request lines may carry ?token=
    uvicorn.run(create_app(site, allowed_hosts=extra), host=host.strip("[]"), port=port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
