"""Run one fedal experiment through Flower's simulation engine from Python.

``flwr run .`` is the user-facing way; scripts, tests and the comparison runner use this
function, which binds the run config into the apps (the deprecated ``run_simulation`` entry
point passes an empty run config) and returns the results rows the ServerApp recorded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedal.deploy import QUIET_ENV
from fedal.results import ROUNDS_FILE, SUMMARY_FILE

for _k, _v in {**QUIET_ENV, "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)


def simulate(run_config: dict, num_clients: int, *, num_cpus: float = 1.0, num_gpus: float | None = None,
             verbose: bool = False) -> Path:
    """Run the AL protocol with ``num_clients`` simulated SuperNodes; returns the run directory.

    ``num_gpus`` per client defaults to 0.25 when CUDA is present and ``device`` is not cpu
    (four client actors share a GPU), else 0."""
    from flwr.simulation import run_simulation

    from fedal.client_app import build_client_app
    from fedal.config import Config
    from fedal.results import run_directory
    from strategies.server_app import build_server_app

    cfg = Config.from_run_config(run_config)  # validate before starting Ray
    if num_gpus is None:
        import torch

        num_gpus = 0.25 if (cfg.device != "cpu" and torch.cuda.is_available()) else 0.0
    run_simulation(
        server_app=build_server_app(run_config),
        client_app=build_client_app(run_config),
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
                        "init_args": {"logging_level": 30, "log_to_driver": True}},
        verbose_logging=verbose,
    )
    run_dir = run_directory(cfg)
    if not (run_dir / SUMMARY_FILE).exists():
        raise RuntimeError(f"the simulation ended without completing the run; see the log and {run_dir}")
    return run_dir


def simulate_inprocess(run_config: dict, num_clients: int) -> Path:
    """The same run through ``simulations.inprocess`` (no Ray: one process, one core, the same
    rows as ``simulate``); returns the run directory."""
    from fedal.config import Config
    from fedal.results import run_directory
    from simulations.inprocess import run_inprocess

    cfg = Config.from_run_config(run_config)
    run_inprocess(run_config, num_clients, log=lambda line: print(line, flush=True), record=True)
    return run_directory(cfg)


ENGINES = {"ray": simulate, "inprocess": simulate_inprocess}


class RunDirInUse(RuntimeError):
    """Another process is writing the run directory."""


def hold_run_dir(run_dir: str | Path) -> int:
    """Lock ``run_dir`` (created if missing) for the rest of this process: an exclusive ``flock``
    on the directory itself, so nothing is written into it, released by the kernel when the
    process ends however it ends. A second process making the same run (the same suite started
    twice on one results folder, or a run orphaned by a killed runner) is refused at once,
    instead of appending its rows between the first one's. Returns the descriptor that holds
    the lock (no lock where the platform has no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return -1
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(f"{d} is being written by another process (this run, the same config and seed, "
                          "started twice?); let that one finish or stop it, then run again; nothing was "
                          "written") from None
    return fd


def read_rows(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / ROUNDS_FILE) as f:
        return [json.loads(line) for line in f]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run one fedal experiment in Flower's simulation engine.")
    ap.add_argument("--clients", type=int, default=100, help="simulated SuperNodes (default 100)")
    ap.add_argument("--run-config", default="{}", help="run config as a JSON object (kebab-case keys)")
    ap.add_argument("--num-gpus", type=float, default=None,
                    help="GPU fraction per client (default: 0.25 with CUDA and device != cpu, else 0)")
    ap.add_argument("--engine", choices=sorted(ENGINES), default="ray",
                    help="ray: Flower's simulation engine (default); inprocess: the same handlers "
                         "without Ray, same rows, one core (simulations/inprocess.py)")
    args = ap.parse_args(argv)
    from fedal.config import Config
    from fedal.numerics import process_env

    need = process_env(json.loads(args.run_config).get("numerics", "native"))
    if argv is None and any(os.environ.get(k) != v for k, v in need.items()):
        # numpy's OpenBLAS chose its kernels when it loaded: start again with them fixed
        os.execve(sys.executable, [sys.executable, "-m", "simulations.engine", *sys.argv[1:]], {**os.environ, **need})
    from fedal.results import run_directory

    try:
        hold_run_dir(run_directory(Config.from_run_config(json.loads(args.run_config))))
    except RunDirInUse as e:
        raise SystemExit(f"error: {e}") from None
    if args.engine == "ray":
        run_dir = simulate(json.loads(args.run_config), args.clients, num_gpus=args.num_gpus)
    else:
        run_dir = simulate_inprocess(json.loads(args.run_config), args.clients)
    print(f"fedal: results in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
