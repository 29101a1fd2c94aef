"""Flower's simulation engine (Ray) against the in-process grid, side by side in one run.

    .venv/bin/python -m simulations.benchmarks.bench_engines [--al-rounds 2] [--clients 100] [--out PATH]

The same run config (MNIST-1D, Dirichlet, warm start, Rand+Rand: the cheapest selection, so the
engine's overhead is the largest share) goes through ``simulations.engine.simulate`` (Ray, one
client actor per core) and ``simulate_inprocess`` (one process), each in a fresh subprocess,
alternating, ``--repeats`` times. Reported: wall and CPU seconds per run (CPU: the whole
machine's busy time during the run, see ``busy_cpu_s``) and their ratios, plus whether the rows are identical (timings aside).
The comparison runner's ``--engine inprocess`` rests on the rows being identical; the speed
decides whether ``--jobs 2`` on two cores is worth it. The load average is printed: on a
shared machine compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat). Ray's raylet starts its worker
    processes outside the run's process tree, so RUSAGE_CHILDREN missed most of Ray's CPU
    (measured: 13-14 s for a run that kept two cores busy for 33-37 s); machine-wide busy time
    counts every process, which is exact on an otherwise idle machine (the load is printed)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def one(engine: str, rc: dict, clients: int) -> tuple[float, float, list[dict]]:
    before = busy_cpu_s()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simulations.engine", "--engine", engine, "--clients", str(clients),
                    "--run-config", json.dumps(rc)], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t
    cpu = busy_cpu_s() - before
    from simulations.engine import read_rows
    from tests.helpers import without_times

    rows = without_times(read_rows(Path(rc["run-dir"]) / rc["run-name"]))
    return wall, cpu, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--al-rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    base = {"dataset": "mnist1d", "partition": "dirichlet", "training-mode": "warm-start",
            "client-strategy": "random", "point-strategy": "random", "al-rounds": args.al_rounds, "seed": 0}
    lines = [f"| engine | wall s | CPU s | rows identical |", "|---|---:|---:|---|"]
    res: dict[str, list[tuple[float, float]]] = {"ray": [], "inprocess": []}
    with tempfile.TemporaryDirectory() as d:
        ref = None
        for i in range(args.repeats):
            for engine in ("ray", "inprocess"):
                rc = {**base, "run-dir": d, "run-name": f"{engine}-{i}"}
                wall, cpu, rows = one(engine, rc, args.clients)
                ref = rows if ref is None else ref
                res[engine].append((wall, cpu))
                lines.append(f"| {engine} | {wall:.1f} | {cpu:.1f} | {rows == ref} |")
                print(lines[-1], f"(load {os.getloadavg()[0]:.2f})", flush=True)
    mean = {e: [sum(v[k] for v in r) / len(r) for k in (0, 1)] for e, r in res.items()}
    summary = (f"\nin-process / Ray: wall {mean['inprocess'][0] / mean['ray'][0]:.2f}×, "
               f"CPU {mean['inprocess'][1] / mean['ray'][1]:.2f}× "
               f"({args.clients} clients, {args.al_rounds} AL rounds, {args.repeats} repeat(s))")
    print(summary)
    if args.out:
        Path(args.out).write_text("# Engines: Ray vs in-process\n\n`python -m simulations.benchmarks.bench_engines "
                                  + " ".join(argv or sys.argv[1:]) + "`\n\n" + "\n".join(lines) + "\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
