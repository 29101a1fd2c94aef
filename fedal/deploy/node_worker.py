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
and refuses requests from ClientApp code other than its own (a new app bundle starts a new
worker). The socket lives in a 0700 folder: only the SuperNode's user can reach it, which is why
requests may be pickled.
"""

from __future__ import annotations

import argparse
import fcntl
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


def code_id() -> str:
    """Which fedal this process runs (the app bundle's folder)."""
    return str(Path(__file__).resolve().parents[1])


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
    """One message's work, as the ClientApp's local handlers do it."""
    import numpy as np
    import torch

    from fedal.client import load_node_data, node_pool_store, node_state_dir, ClientWorker

    nc = dict(req["node_config"])
    data = load_node_data(req["run_config"], nc)
    store = node_pool_store(data, node_state_dir(nc))
    w = ClientWorker(data, store)
    kind, conf = req["kind"], req["config"]
    state = ({k: torch.from_numpy(np.array(v)) for k, v in req["arrays"].items()}
             if req["arrays"] is not None else None)
    metrics, out = w.handle(kind, conf, state)
    if out is not None:  # tensors go back as arrays over the socket
        name, d = out
        out = (name, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in d.items()})
    return {"ok": True, "metrics": metrics, "out": out, "client-id": data.client_id}


def serve(sock_path: Path, parent_pid: int | None, idle_timeout: float) -> None:
    from fedal.client import configure_threads

    configure_threads()
    import fedal.client  # noqa: F401  (the imports this worker exists to keep)

    sock_path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    mine = os.stat(sock_path).st_ino
    sock_path.with_name("worker.pid").write_text(f"{os.getpid()}\n")
    srv.listen(8)
    srv.settimeout(1.0)
    last = time.monotonic()
    me = code_id()
    try:
        while True:
            if parent_pid is not None and not _alive(parent_pid):
                return
            if time.monotonic() - last > idle_timeout:
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
                    return
                if req.get("code") != me:
                    _send(conn, {"ok": False, "stale": True})
                    return  # the caller starts a worker with its own code
                try:
                    reply = handle(req)
                except Exception as e:  # noqa: BLE001  (the ClientApp re-raises it)
                    reply = {"ok": False, "type": f"{type(e).__module__}.{type(e).__name__}", "message": str(e),
                             "traceback": traceback.format_exc()}
                try:
                    _send(conn, reply)
                except OSError:
                    pass
                last = time.monotonic()
    finally:
        srv.close()
        try:
            if os.stat(sock_path).st_ino == mine:  # not a successor's socket
                sock_path.unlink()
        except OSError:
            pass


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
    """The persistent worker failed a message; the message is the worker's error."""


def worker_socket(state_dir: Path) -> Path:
    d = Path(state_dir) / "worker"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d / SOCKET_NAME


def call(state_dir: Path, req: dict) -> dict:
    """Send one request to the node's worker, starting it when none answers."""
    sock_path = worker_socket(state_dir)
    req = {**req, "code": code_id()}
    for attempt in range(3):
        try:
            reply = _exchange(sock_path, req)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionError):
            _start(sock_path)
            continue
        if reply.get("stale"):  # a worker of another app bundle: it exits, start ours
            time.sleep(0.2)
            _start(sock_path)
            continue
        if not reply["ok"]:
            raise WorkerError(f"{reply['type']}: {reply['message']}\n(in the persistent worker)\n{reply['traceback']}")
        return reply
    raise WorkerError(f"the persistent worker at {sock_path} did not answer")


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


def _exchange(sock_path: Path, req: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock_path))
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
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        log = open(sock_path.with_name("worker.log"), "ab")
        subprocess.Popen([sys.executable, "-m", "fedal.deploy.node_worker", str(sock_path),
                          "--parent-pid", str(os.getppid())], env=env, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                _exchange_probe(sock_path)
                return
            except OSError:
                time.sleep(0.1)
        raise WorkerError(f"the persistent worker did not start within {START_TIMEOUT_S:g} s; see "
                          f"{sock_path.with_name('worker.log')}")
    finally:
        lock.close()


def _exchange_probe(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock_path))  # connecting is enough: the worker drops an empty request


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
