"""One AL round over Flower's deployment engine (real SuperLink and SuperNode processes, TLS,
SuperNode authentication) against the simulation engine (Ray), for the same small config:
digits, 3 clients holding the same partitions (node config partition-id/num-partitions plus a
state dir on the SuperNodes), one AL round.

    python -m simulations.benchmarks.bench_deployment [--out simulations/benchmarks/results/deployment.md]

Reports the recorded time_s of each round (train/probe/acquire, the ServerApp's own timers) and
the wall time of each run, and for the deployment every ClientApp message's time split into
"before the handler" (process start, imports, FAB loading: Flower starts one process per
message) and "in the handler" (fedal's work, data loading included), from
``FEDAL_CLIENT_TIMING``. Also times the per-process data loading with and without the state
dir's decoded-data cache, in fresh processes.
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
CLIENTS = 3
CONFIG = {"dataset": "digits", "partition": "iid", "init-clients": 3, "init-points": 20, "al-rounds": 1,
          "clients-per-round": 2, "points-per-client": 10, "fl-rounds": 2, "local-epochs": 1,
          "client-strategy": "entropy", "point-strategy": "entropy", "seed": 0}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]


def only_run(runs: Path) -> Path:
    (d,) = [p for p in runs.iterdir() if (p / "rounds.jsonl").exists()]
    return d


def bench_simulation(tmp: Path) -> dict:
    cfg = {**CONFIG, "run-dir": str(tmp / "sim-runs")}
    code = ("import json,sys; from simulations.engine import simulate; "
            f"simulate(json.loads(sys.argv[1]), {CLIENTS})")
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return {"wall_s": time.time() - t0, "rows": rows(only_run(tmp / "sim-runs"))}


def bench_deployment(tmp: Path, persistent: bool = False) -> dict:
    from fedal.deploy.local import LocalDeployment

    name = "persistent" if persistent else "deploy"
    timing = tmp / f"timing-{name}.jsonl"
    os.environ["FEDAL_CLIENT_TIMING"] = str(timing)
    try:
        with LocalDeployment(tmp / name, CLIENTS, "digits", site_data=False, persistent_worker=persistent) as dep:
            t0 = time.time()
            dep.up()
            t_up = time.time() - t0
            t1 = time.time()
            run_id = dep.run(CONFIG)
            status = dep.wait_run(run_id, 900, poll=1)
            wall = time.time() - t1
    finally:
        os.environ.pop("FEDAL_CLIENT_TIMING", None)
    msgs = [json.loads(line) for line in timing.read_text().splitlines()]
    return {"status": status, "up_s": t_up, "wall_s": wall, "rows": rows(only_run(dep.runs)), "messages": msgs}


def bench_loading(tmp: Path) -> dict:
    """Fresh-process cost of importing the ClientApp and loading one client's data, cold (no
    cache: what every message paid before) and from the state dir's cache."""
    code = ("import time; t0 = time.time(); import fedal.client_app; t1 = time.time(); "
            "from fedal.client_data import load_node_data; import json, sys; "
            "d = load_node_data(json.loads(sys.argv[1]), json.loads(sys.argv[2])); "
            "print(json.dumps({'import_s': t1 - t0, 'data_s': time.time() - t1}))")
    out = {}
    for label, nc in (("no state dir (no cache)", {"partition-id": 0, "num-partitions": CLIENTS}),
                      ("state dir, first message (fills cache)", None), ("state dir, cached", None)):
        nc = nc or {"partition-id": 0, "num-partitions": CLIENTS, "state-dir": str(tmp / "load-state")}
        runs = []
        for _ in range(3 if "first" not in label else 1):
            if "first" in label:
                import shutil

                shutil.rmtree(tmp / "load-state", ignore_errors=True)
            r = subprocess.run([sys.executable, "-c", code, json.dumps(CONFIG), json.dumps(nc)], check=True,
                               capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "FEDAL_STATE_DIR": ""})
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        out[label] = {k: statistics.median(r[k] for r in runs) for k in ("import_s", "data_s")}
    return out


def round_line(name: str, r: dict) -> str:
    t = r["time_s"]
    return (f"| {name} | {r['round']} | {t.get('train', 0):.2f} | {t.get('probe', 0):.2f} | "
            f"{t.get('acquire', 0):.2f} | {sum(t.values()):.2f} | {r['accuracy']:.4f} |")


def message_table(msgs: list[dict]) -> list[str]:
    lines = ["| message | n | before handler (median, s) | handler (median, s) | handler, first per node (median, s) |",
             "|---|---|---|---|---|"]
    first = {}
    for m in sorted(msgs, key=lambda m: m["at"]):
        first.setdefault(m["node"], m)
    firsts = {id(m) for m in first.values()}
    for kind in ("info", "acquire", "train", "probe"):
        ms = [m for m in msgs if m["type"] == kind]
        if not ms:
            continue
        f = [m["handler-s"] for m in ms if id(m) in firsts]
        lines.append(f"| {kind} | {len(ms)} | {statistics.median(m['before-handler-s'] for m in ms):.2f} | "
                     f"{statistics.median(m['handler-s'] for m in ms):.2f} | "
                     + (f"{statistics.median(f):.2f} |" if f else "- |"))
    return lines


def report(sim: dict, dep: dict, loading: dict, pers: dict) -> str:
    import platform

    lines = ["# Deployment engine vs simulation engine: one AL round", "",
             f"`python -m simulations.benchmarks.bench_deployment`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch threads 1 per process.", "",
             f"Config: `{json.dumps(CONFIG)}`, {CLIENTS} clients on the same partitions in both engines.", "",
             "## Rounds (the ServerApp's timers, seconds)", "",
             "| engine | round | train | probe | acquire | total | accuracy |", "|---|---|---|---|---|---|---|"]
    lines += [round_line("simulation (Ray)", r) for r in sim["rows"]]
    lines += [round_line("deployment", r) for r in dep["rows"]]
    lines += ["", f"Wall time of the run: simulation {sim['wall_s']:.1f} s (Ray start included); deployment "
              f"{dep['wall_s']:.1f} s from `flwr run` to status `{dep['status']}` (plus {dep['up_s']:.1f} s to "
              "start the SuperLink and SuperNodes, register keys and see them online).", "",
              "## Deployment: per ClientApp message (one process each, fedal's work in it)", ""]
    lines += message_table(dep["messages"])
    lines += ["", "## Deployment with a persistent worker per node (node config persistent-worker=true)", "",
              f"Wall time of the run: {pers['wall_s']:.1f} s to status `{pers['status']}`.", "",
              "| engine | round | train | probe | acquire | total | accuracy |", "|---|---|---|---|---|---|---|"]
    lines += [round_line("deployment, persistent worker", r) for r in pers["rows"]]
    lines += [""] + message_table(pers["messages"])
    lines += ["", "## A fresh process: import the ClientApp, load one client's data (median of 3)", "",
              "| case | import fedal.client_app (s) | load the client's data (s; the first use of fedal.client imports torch) |", "|---|---|---|"]
    lines += [f"| {k} | {v['import_s']:.2f} | {v['data_s']:.2f} |" for k, v in loading.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "simulations/benchmarks/results/deployment.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedal-bench-deploy-") as tmp:
        tmp = Path(tmp)
        loading = bench_loading(tmp)
        print(json.dumps(loading), flush=True)
        sim = bench_simulation(tmp)
        print(f"simulation: {sim['wall_s']:.1f} s", flush=True)
        dep = bench_deployment(tmp)
        print(f"deployment: {dep['wall_s']:.1f} s, {dep['status']}", flush=True)
        pers = bench_deployment(tmp, persistent=True)
        print(f"deployment, persistent worker: {pers['wall_s']:.1f} s, {pers['status']}", flush=True)
    text = report(sim, dep, loading, pers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
