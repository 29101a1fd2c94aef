"""Run fedal with `flwr run .` on a local simulation SuperLink, then stop that SuperLink.

flwr 1.41 keeps SuperLink connections in ``$FLWR_HOME/config.toml``; this script points
FLWR_HOME at a project-local folder (``.flwr/``) so it never touches the user's own Flower
config, writes a ``local`` connection with the requested number of simulated SuperNodes (one
CPU each), runs ``flwr run . --stream``, and stops the detached local SuperLink by PID.

    python -m simulations.flwr_run [--supernodes 100] [--run-config "client-strategy='entropy'"]

The overrides are validated before a SuperLink starts (exit 2 on a bad key or value), and the
exit status is 1 when `flwr run` exits 0 but the run itself failed (its status from `flwr ls`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedal.deploy import QUIET_ENV, parse_flwr_json
from fedal.errors import ConfigError
from fedal.numerics import process_env

ROOT = Path(__file__).resolve().parents[1]


def write_flower_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    return home


def federation_config(supernodes: int, cpus: int = 1, gpus: float = 0.0) -> str:
    # one CPU per simulated client: Ray's default of 2 would leave a single actor on 2 cores
    return (f"num-supernodes={supernodes} client-resources-num-cpus={int(cpus)} "
            f"client-resources-num-gpus={float(gpus)}")


def stop_local_superlink(home: Path) -> list[int]:
    """Stop the local SuperLink started under ``home`` and what it spawned (they carry
    ``--parent-pid``), by PID. Returns the PIDs signalled."""
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    procs = [line.strip().split(" ", 1) for line in out.splitlines()[1:] if " " in line.strip()]
    doomed = {pid for pid, args in procs if "flower-superlink" in args and str(home) in args}
    for _ in range(2):  # superlink → superexec → flwr-simulation
        doomed |= {pid for pid, args in procs if any(f"--parent-pid {p}" in args for p in doomed)}
    pids = sorted(int(p) for p in doomed)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a SuperLink busy starting up may ignore TERM
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def requested_numerics(run_config: str = "") -> str:
    """The ``numerics`` a ``flwr run`` with these ``--run-config`` overrides gets: the override
    parsed as flwr parses it (key=value pairs or one .toml file), else the default (fedal/defaults.py,
    which pyproject.toml repeats: a test keeps them equal)."""
    from flwr.common.config import parse_config_args

    from fedal.defaults import DEFAULTS

    overrides = parse_config_args([run_config]) if run_config else {}
    return str(overrides.get("numerics", DEFAULTS["numerics"]))


def check_run_config(run_config: str = "") -> None:
    """Validate ``--run-config`` overrides as the ServerApp will (``Config.from_run_config`` over
    the defaults pyproject.toml repeats) before a SuperLink starts: otherwise a typo costs half a
    minute and ends in a traceback inside Flower's log. Raises ConfigError, or ValueError for
    what flwr itself cannot parse."""
    from flwr.common.config import parse_config_args

    from fedal.config import Config

    try:
        overrides = parse_config_args([run_config]) if run_config else {}
    except Exception as e:  # tomli's decode error, flwr's ValueError, a missing .toml file
        raise ValueError(f"--run-config {run_config!r} is not key=value pairs or a .toml file flwr can read: {e}") from None
    Config.from_run_config(overrides)


def run_outcome(env: dict, since: float) -> tuple[str, str] | None:
    """(status, details) of the latest run the local SuperLink under ``env``'s FLWR_HOME started
    at or after ``since``: `flwr run --stream` exits 0 when the run fails (flwr 1.41), so the
    run's own status ("finished:completed", "finished:failed", ...) says how it went. None when
    `flwr ls` cannot tell."""
    try:
        out = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "--format", "json"], env=env,
                             capture_output=True, text=True, timeout=120).stdout
        runs = parse_flwr_json(out).get("runs", [])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    floor = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(since)))
    mine = [r for r in runs if str(r.get("pending-at", "")) >= floor]
    if not mine:
        return None
    last = max(mine, key=lambda r: str(r.get("pending-at", "")))
    return str(last.get("status", "")), str(last.get("status-details", ""))


def flwr_run(run_config: str = "", supernodes: int = 100, home: Path | None = None,
             timeout: float | None = None, capture: bool = False, gpus: float = 0.0) -> subprocess.CompletedProcess:
    """`flwr run` on a local simulation SuperLink. The returned returncode is 1 when flwr exits 0
    but the run itself did not complete (its status, from `flwr ls`, is printed on stderr)."""
    home = write_flower_home(home or ROOT / ".flwr")
    bindir = Path(sys.executable).parent
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home), "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    if requested_numerics(run_config) == "portable":
        env.update(process_env("portable"))  # the SuperLink's simulation processes inherit it (fedal/numerics.py)
    cmd = [str(bindir / "flwr"), "run", str(ROOT), "--stream",
           "--federation-config", federation_config(supernodes, 1, gpus)]
    if run_config:
        cmd += ["--run-config", run_config]
    since = time.time() - 1  # the SuperLink stamps whole seconds
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout, text=True, capture_output=capture)
        if p.returncode == 0:
            outcome = run_outcome(env, since)
            if outcome is not None and outcome[0] != "finished:completed":
                msg = f"fedal run: the run ended {outcome[0]}: {outcome[1]}"
                print(msg, file=sys.stderr, flush=True)
                p = subprocess.CompletedProcess(p.args, 1, p.stdout, (p.stderr or "") + msg + "\n" if capture else p.stderr)
        return p
    finally:
        stop_local_superlink(home)


def main(argv=None, prog: str = "python -m simulations.flwr_run") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernodes", type=int, default=100, help="simulated clients (default: 100, the paper's)")
    ap.add_argument("--run-config", default="", help="run-config overrides, e.g. \"client-strategy='entropy'\"")
    ap.add_argument("--gpus-per-client", type=float, default=0.0, help="GPU fraction per client (device=cuda)")
    args = ap.parse_args(argv)
    if args.supernodes < 1:
        ap.error(f"--supernodes must be at least 1, got {args.supernodes}")
    try:
        check_run_config(args.run_config)
    except (ConfigError, ValueError) as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 2
    return flwr_run(args.run_config, args.supernodes, gpus=args.gpus_per_client).returncode


if __name__ == "__main__":
    raise SystemExit(main())
