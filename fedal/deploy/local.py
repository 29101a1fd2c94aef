"""A whole fedal deployment on one machine, over loopback: the deployment test and a rehearsal
of docs/deployment.md with real processes.

    fedal rehearse --workdir /tmp/fedal-local --supernodes 3 --run-config "al-rounds=2 fl-rounds=1"

(``python -m fedal.deploy.local`` is the same.) The run config starts from
``fedal.deploy.rehearsal.REHEARSAL``, a
protocol small sites can serve in which every site gets label budget (init-clients and
clients-per-round = the number of sites), and ``--run-config`` overrides it; a config whose
label demand exceeds a site's points is refused before anything starts. It prints the
experiment id (``rehearsal-<time>`` unless given) before the run and the run's results
directory after it.

does, in order, what an operator does on several machines (docs/deployment.md):

1. certificates and SuperNode keys (``fedal.deploy.certs``) for 127.0.0.1/localhost;
2. a SuperLink with TLS, ``--enable-supernode-auth`` and ``--database`` on a free port;
3. a ``flwr`` connection in a project-local ``FLWR_HOME/config.toml`` and
   ``flwr supernode register`` of every SuperNode's public key;
4. one site per SuperNode: a small ``.npz`` of the chosen data set (``fedal site export``: an IID
   part of its training split, never its test split) and a state dir, and a SuperNode with its own key, Runtime API ``--port`` and node
   config ``data-path``/``client-id``/``state-dir``/``partition-id``;
5. ``flwr run`` of this checkout against the SuperLink, then waits for the run's status.

With ``annotators='people'`` in ``--run-config`` (and ``labeling='async'``,
``labeling-deadline-s``) it also starts a labeling page next to every SuperNode (``fedal-annotate``
on a free loopback port, a token file per site in the workdir) and prints each page's address
with its token. When the run ends the pages stay up, saying that the run has finished, until
Ctrl-C (or ``--exit-when-done``: scripts).

Every process it starts runs in its own process group and is stopped by PID (the group: a
SuperLink's or SuperNode's ``flower-superexec`` and the app processes it spawned), also on an
error, Ctrl-C or interpreter exit (``LocalDeployment`` is a context manager and registers an
``atexit`` hook). Nothing listens on an address other than 127.0.0.1.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedal.deploy import QUIET_ENV, parse_flwr_json
from fedal.deploy.rehearsal import DeploymentError, check_fits_sites, rehearsal_config, site_points, write_sites

ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "fedal-local"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class LocalDeployment:
    """One SuperLink and ``n_supernodes`` SuperNodes on loopback, in ``workdir``."""

    workdir: Path
    n_supernodes: int = 3
    dataset: str = "digits"
    points_per_site: int = 0
    app_dir: Path = ROOT
    python: str = sys.executable
    # False: SuperNodes hold benchmark partitions (partition-id/num-partitions, as in simulation)
    # instead of their own .npz files; both keep their pools in their state dirs
    site_data: bool = True
    # node config persistent-worker=true: one long-lived fedal worker per SuperNode
    # (fedal.deploy.node_worker) instead of fedal's imports and data in every message's process
    persistent_worker: bool = True
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self):
        self.workdir = Path(self.workdir).resolve()
        self.bindir = Path(self.python).parent
        self.certs = self.workdir / "certs"
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.sites = self.workdir / "sites"
        self.runs = self.workdir / "runs"
        self.port = 0
        self.node_ports: dict[int, int] = {}
        self.supernodes: dict[int, Proc] = {}
        self.superlink: Proc | None = None
        self._stopped = False
        atexit.register(self.stop)

    # ------------------------------------------------------------------ environment
    def env(self) -> dict[str, str]:
        # PYTHONPATH: the processes import fedal from app_dir, whatever is installed
        return {**os.environ, **QUIET_ENV, "FLWR_HOME": str(self.home),
                "PATH": f"{self.bindir}:{os.environ.get('PATH', '')}",
                "PYTHONPATH": os.pathsep.join([str(self.app_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "FEDAL_TORCH_THREADS": os.environ.get("FEDAL_TORCH_THREADS", "1")}

    def _start(self, name: str, cmd: list[str]) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        f = open(log, "ab")
        f.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        f.flush()
        # own session = own process group: stopping it stops what it spawned too
        popen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env(), cwd=self.workdir,
                                 start_new_session=True)
        f.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def flwr(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bindir / "flwr"), *args], env=self.env(), cwd=self.workdir,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise DeploymentError(f"flwr {' '.join(args)} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        return r

    def flwr_json(self, *args: str, timeout: float = 120) -> dict:
        r = self.flwr(*args, "--format", "json", timeout=timeout, check=False)
        try:
            return parse_flwr_json(r.stdout)
        except ValueError:
            raise DeploymentError(f"flwr {' '.join(args)} gave no JSON ({r.returncode}): "
                                  f"{r.stdout[-2000:]} {r.stderr[-2000:]}") from None

    # ------------------------------------------------------------------ setup
    def prepare(self, *, labels: bool = True) -> None:
        """Certificates, keys, the CLI connection and the sites' data."""
        from fedal.deploy.certs import generate

        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.certs / "ca.crt").exists():
            generate(self.certs, [HOST, "localhost"], n_supernodes=self.n_supernodes + 1)  # +1: an unregistered key
        self.port = self.port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{HOST}:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')
        if self.site_data and not (self.sites / "site-1" / "data.npz").exists():
            write_sites(self.sites, self.n_supernodes, self.dataset, self.points_per_site, labels=labels)

    def start_superlink(self, timeout: float = 60) -> None:
        self.superlink = self._start("superlink", [
            str(self.bindir / "flower-superlink"),
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "superlink.crt"),
            "--ssl-keyfile", str(self.certs / "superlink.key"),
            "--enable-supernode-auth", "--database", str(self.workdir / "superlink.db"),
            "--disable-runtime-dependency-installation", "--host", HOST, "--port", str(self.port)])
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.superlink.alive():
                raise DeploymentError(f"the SuperLink exited ({self.superlink.popen.returncode}); see {self.superlink.log}")
            r = self.flwr("supernode", "list", CONNECTION, timeout=30, check=False)
            if r.returncode == 0:
                return
            time.sleep(1)
        raise DeploymentError(f"the SuperLink did not answer within {timeout} s; see {self.superlink.log}")

    def register(self, k: int) -> None:
        self.flwr("supernode", "register", str(self.certs / f"supernode-{k}.pub"), CONNECTION, "--name", f"site-{k}")

    def node_config(self, k: int) -> str:
        site = self.sites / f"site-{k}"
        # node-config values are TOML: strings quoted
        extra = " persistent-worker=true" if self.persistent_worker else ""
        if not self.site_data:
            return f'partition-id={k - 1} num-partitions={self.n_supernodes} state-dir="{site / "state"}"{extra}'
        return (f'data-path="{site / "data.npz"}" client-id="site-{k}" state-dir="{site / "state"}" '
                f'partition-id={k - 1}{extra}')

    def start_supernode(self, k: int, *, node_config: str | None = None, extra: tuple[str, ...] = ()) -> Proc:
        port = self.node_ports.setdefault(k, free_port())
        proc = self._start(f"supernode-{k}", [
            str(self.bindir / "flower-supernode"), "--superlink", f"{HOST}:{self.port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.certs / f"supernode-{k}.key"),
            "--host", HOST, "--port", str(port),
            "--node-config", node_config if node_config is not None else self.node_config(k), *extra])
        self.supernodes[k] = proc
        return proc

    def start_annotate(self, k: int, experiment_id: str, token_file: Path, *, wait_s: float = 600) -> tuple[Proc, str]:
        """Site k's labeling page (``fedal-annotate``, docs/labeling.md) next to its SuperNode:
        the same data, state dir and client id, the run's ``experiment_id``; it waits up to
        ``wait_s`` for the store the ClientApp creates. Returns the process and its URL."""
        if not self.site_data:
            raise DeploymentError("a labeling page needs the sites' own data (site_data=True)")
        site, port = self.sites / f"site-{k}", free_port()
        (site / "state").mkdir(parents=True, exist_ok=True)  # the page checks it exists (a typo stops it)
        proc = self._start(f"annotate-{k}", [
            self.python, "-m", "fedal.annotate.app", "--data-path", str(site / "data.npz"),
            "--state-dir", str(site / "state"), "--experiment-id", experiment_id, "--client-id", f"site-{k}",
            "--token-file", str(token_file), "--host", HOST, "--port", str(port), "--wait-s", str(wait_s)])
        return proc, f"http://{HOST}:{port}"

    def restart_supernode(self, k: int, timeout: float = 150, pause: float = 5) -> Proc:
        """Start SuperNode k again (same key, node config, state dir and port) until the SuperLink
        lets it in. After a crash the SuperLink still counts the node online until two missed
        heartbeats (2 x 30 s in Flower 1.41) and refuses it meanwhile: that SuperNode exits with
        "Failed to activate SuperNode" (exit code 305), and the next try goes after ``pause``."""
        deadline = time.time() + timeout
        while True:
            start = self.logs / f"supernode-{k}.log"
            offset = start.stat().st_size if start.exists() else 0
            proc = self.start_supernode(k)
            while proc.alive():
                with open(proc.log, "rb") as f:
                    f.seek(offset)
                    if b"SuperNode ID:" in f.read():
                        return proc
                if time.time() > deadline:
                    raise DeploymentError(f"supernode-{k} did not get back in within {timeout} s; see {proc.log}")
                time.sleep(0.5)
            self.kill(proc)  # its SuperExec is left behind retrying
            if time.time() + pause > deadline:
                raise DeploymentError(f"supernode-{k} was refused until {timeout} s; see {proc.log}")
            time.sleep(pause)

    def online(self) -> list[dict]:
        nodes = self.flwr_json("supernode", "list", CONNECTION).get("nodes", [])
        return [n for n in nodes if str(n.get("status", "")).lower() == "online"]

    def wait_online(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.online()) >= n:
                return
            dead = [p for p in self.supernodes.values() if not p.alive()]
            if dead:
                raise DeploymentError(f"{dead[0].name} exited ({dead[0].popen.returncode}); see {dead[0].log}")
            time.sleep(1)
        raise DeploymentError(f"fewer than {n} SuperNodes online after {timeout} s; see {self.logs}")

    def up(self) -> None:
        """Everything up to the run: SuperLink, registered keys, online SuperNodes."""
        self.prepare()
        self.start_superlink()
        for k in range(1, self.n_supernodes + 1):
            self.register(k)
        for k in range(1, self.n_supernodes + 1):
            self.start_supernode(k)
        self.wait_online(self.n_supernodes)

    # ------------------------------------------------------------------ runs
    def run(self, run_config: dict) -> int:
        """``flwr run`` of the app against the SuperLink; returns the run id."""
        rc = {"run-dir": str(self.runs), "dataset": self.dataset, **run_config}
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in rc.items())
        out = self.flwr_json("run", str(self.app_dir), CONNECTION, "--run-config", overrides, timeout=300)
        if not out.get("success", False) or "run-id" not in out:
            raise DeploymentError(f"flwr run failed: {out}")
        return int(out["run-id"])

    def run_dir(self, run_config: dict) -> Path:
        """Where the run of ``run_config`` (as passed to ``run``) writes its results."""
        from fedal.config import Config
        from fedal.results import run_directory

        return run_directory(Config.from_run_config({"run-dir": str(self.runs), "dataset": self.dataset,
                                                     **run_config}))

    def status(self, run_id: int) -> str:
        runs = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def wait_run(self, run_id: int, timeout: float = 600, poll: float = 5) -> str:
        """Waits until the run's status is ``finished:...``; returns that status. (Each poll is a
        ``flwr ls`` process: a second of CPU, hence the slow default poll.)"""
        deadline = time.time() + timeout
        status = ""
        while time.time() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        raise DeploymentError(f"run {run_id} is still {status!r} after {timeout} s; see {self.logs}")

    def logs_of_run(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), CONNECTION, "--show", check=False, timeout=60).stdout

    # ------------------------------------------------------------------ stopping
    def crash_supernode(self, k: int) -> None:
        """SIGKILL for SuperNode k as a machine crash would: its process group (SuperNode,
        SuperExec, a running ClientApp) and its persistent worker (own session)."""
        from fedal.deploy.node_worker import worker_pid

        self.kill(self.supernodes[k], signal.SIGKILL)
        pid = worker_pid(self.sites / f"site-{k}" / "state")
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self, proc: Proc, sig: int = signal.SIGKILL, timeout: float = 10) -> None:
        """``sig`` to the process group of ``proc`` (the process and what it spawned)."""
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.popen.wait(5)

    def stop(self) -> None:
        """Stops every process this deployment started, SuperNodes first."""
        if self._stopped:
            return
        for proc in reversed(self.procs):
            if proc.alive():
                self.kill(proc, signal.SIGTERM, timeout=10)
            else:  # the leader is gone; its group may not be
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._stopped = True

    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "") + "'"


def main(argv: list[str] | None = None, prog: str = "python -m fedal.deploy.local") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="folder for certs, FLWR_HOME, sites, logs, runs")
    ap.add_argument("--supernodes", type=int, default=3)
    ap.add_argument("--dataset", default="digits", help="data set the sites' .npz files are cut from")
    ap.add_argument("--points-per-site", type=int, default=0, help="0: an equal share of the training split")
    ap.add_argument("--run-config", default="", help="run-config overrides of REHEARSAL as TOML key=value pairs")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    ap.add_argument("--no-persistent-worker", dest="persistent_worker", action="store_false",
                    help="no persistent-worker=true in the node configs: fedal's imports and data are loaded "
                         "by every message's ClientApp process")
    ap.add_argument("--exit-when-done", action="store_true",
                    help="with annotators='people': stop the labeling pages and exit when the run ends "
                         "(by default they stay up, saying the run has finished, until Ctrl-C)")
    args = ap.parse_args(argv)
    import tomllib

    from fedal.config import ConfigError

    try:
        rc = tomllib.loads("\n".join(args.run_config.split())) if args.run_config else {}
        rc = rehearsal_config(args.supernodes, {"dataset": args.dataset, **rc})
        rc.setdefault("experiment-id", time.strftime("rehearsal-%Y%m%d-%H%M%S"))
        check_fits_sites(rc, site_points(args.dataset, args.supernodes, args.points_per_site))
    except (tomllib.TOMLDecodeError, ConfigError, DeploymentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # SIGTERM (kill, a service manager) stops what was started, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with LocalDeployment(Path(args.workdir), args.supernodes, args.dataset, args.points_per_site,
                         persistent_worker=args.persistent_worker) as dep:
        t0 = time.time()
        print(f"experiment id {rc['experiment-id']}", flush=True)
        dep.up()
        print(f"SuperLink on {HOST}:{dep.port}, {args.supernodes} SuperNodes online ({time.time() - t0:.0f} s); "
              f"logs in {dep.logs}", flush=True)
        pages: list[Proc] = []
        if rc.get("annotators") == "people":
            # people label: a page next to every SuperNode (docs/labeling.md), one token per site
            import secrets

            for k in range(1, args.supernodes + 1):
                token = dep.workdir / f"token-site-{k}"
                fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
                secret = secrets.token_urlsafe(18)
                with os.fdopen(fd, "w") as f:
                    f.write(secret)
                proc, url = dep.start_annotate(k, rc["experiment-id"], token, wait_s=args.timeout)
                pages.append(proc)
                print(f"site-{k}: labeling page {url}/?token={secret} (token in {token})", flush=True)
        run_id = dep.run(rc)
        print(f"run {run_id} submitted; waiting", flush=True)
        status = dep.wait_run(run_id, args.timeout)
        print(f"run {run_id}: {status} after {time.time() - t0:.0f} s; results in {dep.run_dir(rc)}; "
              f"paid labels in {dep.sites}/site-*/state/pools/{rc['experiment-id']}/", flush=True)
        code = 0 if status == "finished:completed" else 1
        if pages and not args.exit_when_done:
            # people may still have a page open: it now says that the run has finished (instead of
            # a browser's "connection refused") until the operator stops the rehearsal
            print("the labeling pages stay up and say that the run has finished; press Ctrl-C to stop them",
                  flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill stops them as Ctrl-C does
            try:
                while any(p.alive() for p in pages):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return code


if __name__ == "__main__":
    raise SystemExit(main())
