"""Cost of ``numerics = portable`` against ``native`` (fedal/numerics.py), side by side.

    .venv/bin/python -m simulations.benchmarks.bench_numerics [--al-rounds 2] [--repeats 2] [--out PATH]

The same MNIST-1D run (100 clients, Dirichlet α = 0.1, the self-supervised backbone fine-tuned,
as the mnist1d-dirichlet-pretrained suite), once per numerics, alternating native and portable
``--repeats`` times so that a slower stretch of a shared machine falls on both. Each run is its own
process (``python -m simulations.engine --engine inprocess``: one core), one at a time. Reported:
the time of each phase summed over the run's AL rounds, as recorded in its rows, and the ratio
portable / native of the medians. ``--strategy`` picks the client strategy (``random``: training
only; ``cumulative-divfl`` with ``--points logo`` adds the probe and LoGo's k-means).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("train", "probe", "select", "acquire", "evaluate")


def one_run(numerics: str, args, run_dir: Path) -> dict[str, float]:
    rc = {"dataset": "mnist1d", "partition": "dirichlet", "training-mode": "warm-start",
          "backbone-weights": "weights/mnist1d-cnn1d-ssl.pt", "client-strategy": args.strategy,
          "point-strategy": args.points, "seed": 0, "al-rounds": args.al_rounds, "numerics": numerics,
          "run-dir": str(run_dir), "run-name": numerics}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "simulations.engine", "--clients", "100", "--engine", "inprocess",
                    "--run-config", json.dumps(rc)], cwd=ROOT, check=True, capture_output=True)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (run_dir / numerics / "rounds.jsonl").read_text().splitlines()]
    out = {p: sum(r.get("time_s", {}).get(p, 0.0) for r in rows) for p in PHASES}
    out["wall (process)"] = wall
    out["accuracy"] = rows[-1]["accuracy"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--al-rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--points", default="random")
    ap.add_argument("--out", help="write the table (markdown) here too")
    args = ap.parse_args(argv)
    times: dict[str, list[dict[str, float]]] = {"native": [], "portable": []}
    for i in range(args.repeats):
        for numerics in ("native", "portable"):
            with tempfile.TemporaryDirectory() as d:
                times[numerics].append(one_run(numerics, args, Path(d)))
            print(f"repeat {i + 1}, {numerics}: {times[numerics][-1]}", file=sys.stderr, flush=True)
    keys = [*PHASES, "wall (process)"]
    med = {n: {k: statistics.median(t[k] for t in ts) for k in keys} for n, ts in times.items()}
    lines = [f"numerics: {args.strategy} clients, {args.points} points, MNIST-1D Dirichlet pretrained, "
             f"{args.al_rounds} AL rounds, {args.repeats} repeats each, alternating; load average before: "
             f"{os.getloadavg()[0]:.2f}", "",
             "| seconds (median) | native | portable | portable / native |", "|---|---:|---:|---:|"]
    for k in keys:
        n, p = med["native"][k], med["portable"][k]
        if n > 0.05 or p > 0.05:
            lines.append(f"| {k} | {n:.1f} | {p:.1f} | {p / n:.2f} |")
    acc = {n: [round(t["accuracy"], 4) for t in ts] for n, ts in times.items()}
    lines += ["", f"accuracy after the last round: native {acc['native']}, portable {acc['portable']}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
