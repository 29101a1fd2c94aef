"""A SuperNode's persistent fedal worker: fedal's imports (torch), the site's data and its open
pool store stay in one long-lived process per node instead of being loaded by every ClientApp
process (Flower 1.41 starts one per message).

Opt-in with the node config key ``persistent-worker=true`` (it needs ``state-dir``: the pools
must be in the durable store, not in the per-process Flower context). The ClientApp process
then imports only Flower and numpy, connects to ``<state-dir>/worker/worker.sock`` and hands the
message's content to the worker; on the first message (or after the worker exited) it starts
the worker itself:

    python -m fedal.deploy.node_worker SOCKET --parent-pid PID

The worker serves one request at a time, exits when its parent (the SuperNode's SuperExec, which
lives as long as the SuperNode) is gone or after ``--idle-timeout`` seconds without a request,
and refuses requests from ClientApp code other than its own (a new app bundle with other code
starts a new worker). "Its own code" is a content digest (``code_digest``) of fedal's and
strategies' ``.py`` files, not their path: the app bundle ``flwr run`` ships and a checkout of
the same commit are the same code. The worker is started with ``python -P`` and the ClientApp
process's import path, so it imports the bundle's fedal even when the SuperNode was started
with a checkout (another fedal) as its working directory.

The worker writes in ``<state-dir>/worker/worker.log`` when and with which code it started,
every request it refuses or fails (with the traceback), and why it exits. A worker that cannot
start (it exits at once, or runs other code than the ClientApp) is a *final* site error
(``fedal.site_errors``): the server skips or stops at once instead of retrying.

The socket lives in a 0700 folder: only the SuperNode's user can reach it, which is why
requests may be pickled.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

SOCKET_NAME = "worker.sock"
START_TIMEOUT_S = 120.0


CODE_PACKAGES = ("fedal", "strategies")  # what the app bundle ships as code (pyproject fab-include)


def code_root() -> Path:
    """The folder this process imported fedal from (an app bundle's, or a checkout)."""
    return Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=4)
def code_digest(root: str | None = None) -> str:
    """Which code this process runs: a SHA-256 over the relative paths and contents of the
    ``.py`` files of fedal and strategies under ``root`` (default: ``code_root()``). Equal for
    the app bundle and a checkout of the same commit, whatever their paths."""
    base = Path(root) if root is not None else code_root()
    h = hashlib.sha256(b"fedal-code-v1\n")
    files = sorted(p for pkg in CODE_PACKAGES for p in (base / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.relative_to(base).as_posix()}\n{len(data)}\n".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()[:32]


def code_id() -> dict:
    """What a request says of its code and the worker checks: the digest (the check) and the
    folder (for the log)."""
    return {"digest": code_digest(), "root": str(code_root())}


def _log(msg: str) -> None:
    """One line of ``worker.log`` (the worker's stdout and stderr go there)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {msg}", flush=True)


# ---------------------------------------------------------------------------------- framing
def _send(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!Q", len(data)) + data)


def _recv(sock: socket.socket):
    head = _recv_exact(sock, 8)
    return pickle.loads(_recv_exact(sock, struct.unpack("!Q", head)[0]))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the persistent worker closed the connection")
        buf += chunk
    return bytes(buf)


# ---------------------------------------------------------------------------------- the worker
def handle(req: dict) -> dict:
    """One message's work, as the ClientApp's local handlers do it: ``req`` holds the request's
    kind (its handler name, ``fedal.protocol.REQUESTS``) and settings, the weights sent with it
    (numpy arrays or None) and the node's configs; the reply is the typed ``fedal.protocol``
    reply, which the ClientApp encodes."""
    from fedal.client import site_worker
    from fedal.protocol import REQUESTS

    w = site_worker(req["run_config"], dict(req["node_config"]))
    reply = w.handle(REQUESTS[req["kind"]].from_config(req["config"]), req["arrays"])
    return {"ok": True, "reply": reply, "client-id": w.data.client_id}


def enabled(node_config: dict) -> bool:
    """Node config ``persistent-worker = true``: the node's messages go to its persistent worker."""
    v = node_config.get("persistent-worker", False)
    return v is True or str(v).lower() in ("true", "1", "yes")


def serve_remote(node_config: dict, run_config: dict, request, arrays):
    """A ClientApp's message done by the node's persistent worker: (the typed reply, the
    client id). Errors come back as a ``fedal.site_errors.SiteError``."""
    from fedal.site_errors import SiteError, node_client_id

    nc = dict(node_config)
    if not str(nc.get("state-dir", "")).strip():
        raise SiteError(node_client_id(nc), "node config has persistent-worker = true but no state-dir: the persistent "
                        "worker keeps the pools in the state dir's store; add state-dir=\"<local folder>\" to "
                        "--node-config", True)
    try:
        r = call(Path(str(nc["state-dir"])).expanduser(), {"kind": request.NAME, "run_config": run_config,
                                                           "node_config": nc, "config": request.to_config(),
                                                           "arrays": arrays})
    except WorkerError as e:
        raise SiteError(node_client_id(nc), str(e), e.final) from e
    return r["reply"], r["client-id"]


def serve(sock_path: Path, parent_pid: int | None, idle_timeout: float) -> None:
    from fedal.client import configure_threads

    configure_threads()
    import fedal.client  # noqa: F401  (the imports this worker exists to keep)

    sock_path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _address(sock_path) as addr:
        srv.bind(addr)
    os.chmod(sock_path, 0o600)
    mine = os.stat(sock_path).st_ino
    sock_path.with_name("worker.pid").write_text(f"{os.getpid()}\n")
    srv.listen(8)
    srv.settimeout(1.0)
    last = time.monotonic()
    me = code_id()
    _log(f"started: python {sys.executable}, fedal from {me['root']} (code {me['digest']}), socket {sock_path}, "
         f"parent pid {parent_pid}, idle timeout {idle_timeout:g} s")
    why = "stopped"
    try:
        while True:
            if parent_pid is not None and not _alive(parent_pid):
                why = f"exiting: its parent (the SuperNode's SuperExec, pid {parent_pid}) is gone"
                return
            if time.monotonic() - last > idle_timeout:
                why = f"exiting: no request for {idle_timeout:g} s (--idle-timeout)"
                return
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    req = _recv(conn)
                except (ConnectionError, EOFError, pickle.UnpicklingError):
                    continue
                if req.get("stop"):
                    _send(conn, {"ok": True})
                    why = "exiting: asked to stop"
                    return
                theirs = req.get("code") or {}
                if not isinstance(theirs, dict) or theirs.get("digest") != me["digest"]:
                    _send(conn, {"ok": False, "stale": True, "code": me})
                    why = (f"exiting: a request came from other ClientApp code ({_describe(theirs)}) than this "
                           f"worker's ({_describe(me)}); the ClientApp starts a worker with its own code")
                    return
                try:
                    reply = handle(req)
                except Exception as e:  # noqa: BLE001  (the ClientApp re-raises it)
                    from fedal.site_errors import describe, is_final

                    _log(f"{req.get('kind')!r} failed:\n{traceback.format_exc().rstrip()}")
                    reply = {"ok": False, "type": f"{type(e).__module__}.{type(e).__name__}", "message": describe(e),
                             "final": is_final(e)}
                try:
                    _send(conn, reply)
                except OSError:
                    pass
                last = time.monotonic()
    except BaseException as e:
        why = f"exiting on {type(e).__name__}: {e}"
        raise
    finally:
        _log(why)
        srv.close()
        try:
            if os.stat(sock_path).st_ino == mine:  # not a successor's socket
                sock_path.unlink()
        except OSError:
            pass


def _describe(code) -> str:
    if not isinstance(code, dict):
        return f"an unknown version ({code!r})"
    return f"fedal from {code.get('root')}, code {code.get('digest')}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------- the caller
class WorkerError(RuntimeError):
    """The persistent worker failed a message or could not serve it; the message is one line
    (the worker's error, or why no worker answered). ``final``: a site error that asking again
    does not cure (``fedal.site_errors``)."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final


def worker_socket(state_dir: Path) -> Path:
    d = Path(state_dir) / "worker"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d / SOCKET_NAME


def call(state_dir: Path, req: dict) -> dict:
    """Send one request to the node's worker, starting it when none answers."""
    sock_path = worker_socket(state_dir)
    me = code_id()
    req = {**req, "code": me}
    log = sock_path.with_name("worker.log")
    started = False
    for attempt in range(3):
        try:
            reply = _exchange(sock_path, req)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionError):
            _start(sock_path)
            started = True
            continue
        if reply.get("stale"):  # a worker of other code: it exits, start ours
            if started:  # the worker we started runs other code than ours: starting again cannot help
                raise WorkerError(
                    f"the persistent worker started for this ClientApp runs other code ({_describe(reply.get('code'))}) "
                    f"than the ClientApp ({_describe(me)}); see {log}", final=True)
            time.sleep(0.2)
            _start(sock_path)
            started = True
            continue
        if not reply["ok"]:
            raise WorkerError(reply["message"], final=bool(reply.get("final")))
        return reply
    raise WorkerError(f"the persistent worker at {sock_path} did not answer; see {log}")


def worker_pid(state_dir: Path) -> int | None:
    """The pid of the node's worker as it recorded it (it may have exited since)."""
    try:
        return int((Path(state_dir) / "worker" / "worker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def stop(state_dir: Path) -> bool:
    """Ask the node's worker to exit; False when none was running."""
    try:
        _exchange(Path(state_dir) / "worker" / SOCKET_NAME, {"stop": True})
        return True
    except (OSError, ConnectionError):
        return False


@contextlib.contextmanager
def _address(sock_path: Path):
    """The address to bind or connect ``sock_path`` by. A Unix socket's path is limited to about
    107 bytes (``OSError: AF_UNIX path too long``), less than a deep state-dir needs; a longer
    one is reached through an open descriptor of its folder, ``/proc/self/fd/<fd>/worker.sock``
    (Linux), which is short whatever the folder."""
    path = str(sock_path)
    if len(os.fsencode(path)) < 100:
        yield path
        return
    fd = os.open(sock_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{sock_path.name}"
    finally:
        os.close(fd)


def _exchange(sock_path: Path, req: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, _address(sock_path) as addr:
        s.connect(addr)
        _send(s, req)
        return _recv(s)


def _start(sock_path: Path) -> None:
    lock = open(sock_path.with_name("start.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find it running
        try:
            _exchange_probe(sock_path)
            return
        except OSError:
            pass
        # this process's import path, and -P: without it `python -m` puts the working directory
        # first, and a SuperNode started in a checkout would give the worker the checkout's
        # fedal instead of the app bundle's
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        log_path = sock_path.with_name("worker.log")
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, "-P", "-m", "fedal.deploy.node_worker", str(sock_path),
                                 "--parent-pid", str(os.getppid())], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                _exchange_probe(sock_path)
                return
            except OSError:
                if proc.poll() is not None:
                    raise WorkerError(f"the persistent worker exited at start (exit code {proc.returncode}): "
                                      f"{_last_line(log_path)}; see {log_path}", final=True) from None
                time.sleep(0.1)
        raise WorkerError(f"the persistent worker did not start within {START_TIMEOUT_S:g} s; see {log_path}")
    finally:
        lock.close()


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "an empty log"


def _exchange_probe(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, _address(sock_path) as addr:
        s.connect(addr)  # connecting is enough: the worker drops an empty request


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedal.deploy.node_worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("socket")
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--idle-timeout", type=float, default=3600.0)
    args = ap.parse_args(argv)
    serve(Path(args.socket), args.parent_pid, args.idle_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
