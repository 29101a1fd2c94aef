"""Comparison harness: named suites of (method × setting × seed) runs through Flower's simulation
engine, one results directory per run keyed by config hash and seed, resumable.

    python -m simulations.compare SUITE [--seeds 0 1 2 3 4] [--methods Rand Ours] [--results results]
                                        [--engine ray|inprocess] [--jobs N]
    python -m simulations.compare --list

Each run is a separate process (``python -m simulations.engine``): a fresh Ray cluster per run
keeps runs independent and a crash in one from poisoning the rest. A finished run (its
``summary.json`` exists) is skipped, so an interrupted suite resumes where it stopped. Runs are
sequential by default: each simulation already runs one client actor per core; ``--jobs 2``
fills the gaps (server phases, stragglers) at the price of contended wall times. ``--engine
inprocess`` runs the same handlers without Ray (the same rows; ``simulations/inprocess.py``) on
one core, so there ``--jobs 2`` uses both cores.

Reports are produced from the results files afterwards with ``python -m simulations.reports``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fedal.config import TRAINING_MODES, Config, ConfigError
from fedal.numerics import process_env
from fedal.results import LOG_FILE, SUMMARY_FILE
from simulations.run_index import find_identical, finished_runs, numerics_conflicts, reuse

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Method:
    name: str
    overrides: dict


# The paper's comparison (seeds/001 §5, Fig. 3, Table 1) plus LoGo and BASE (issue #4).
# "Hybrid" is our reading of F-AL (top c·W by entropy, then k-center diversity; docs/method.md, "Baselines and training modes").
PAPER_METHODS = (
    Method("Rand", {"client-strategy": "random", "point-strategy": "random"}),
    Method("Rand+Ent", {"client-strategy": "random", "point-strategy": "entropy"}),
    Method("Ent+Ent", {"client-strategy": "entropy", "point-strategy": "entropy"}),
    Method("Rand+Hybrid", {"client-strategy": "random", "point-strategy": "hybrid"}),
    Method("Ent+Hybrid", {"client-strategy": "entropy", "point-strategy": "hybrid"}),
    Method("Rand+LoGo", {"client-strategy": "random", "point-strategy": "logo"}),
    Method("Rand+BASE", {"client-strategy": "random", "point-strategy": "base"}),
    Method("Ours", {"client-strategy": "diffusion", "point-strategy": "diffusion"}),
)

ABLATION_METHODS = (
    Method("Rand", {"client-strategy": "random", "point-strategy": "random"}),
    Method("Ours", {"client-strategy": "diffusion", "point-strategy": "diffusion"}),
    Method("Ours w/o impact", {"client-strategy": "diffusion", "point-strategy": "diffusion",
                               "client-impact": False}),
    Method("Ours rho=0", {"client-strategy": "diffusion", "point-strategy": "diffusion", "rho": 0.0}),
    Method("Ours rw-Laplacian", {"client-strategy": "diffusion", "point-strategy": "diffusion",
                                 "laplacian": "rw"}),
    Method("Ours+Ent points", {"client-strategy": "diffusion", "point-strategy": "entropy"}),
    # the other half of the decomposition: the paper's local diffusion behind random clients
    Method("Rand+Diffusion points", {"client-strategy": "random", "point-strategy": "diffusion"}),
)

# Selection is held fixed (Ent+Ent: a forward pass per probe) so that the modes differ only in
# training, and a suite of 7 modes × 3 seeds fits in about an hour on 2 cores.
TRAINING_MODE_METHODS = tuple(
    Method(mode, {"client-strategy": "entropy", "point-strategy": "entropy", "training-mode": mode})
    for mode in TRAINING_MODES
)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    base: dict
    methods: tuple[Method, ...]
    clients: int = 100
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    needs_data: bool = False  # image suites: runnable once the dataset is under data-root


def _vision(name: str, dataset: str, partition: str, clients: int = 100, budget: dict | None = None) -> Suite:
    # seeds/001 §5: pretrained ResNet101 + 3×200 head; frozen-feature mode keeps CPUs usable
    base = {"dataset": dataset, "partition": partition, "backbone": "resnet101",
            "freeze-backbone": True, **(budget or {})}
    return Suite(name, f"{dataset}, {partition}, {clients} clients (the paper's image setting)",
                 base, PAPER_METHODS, clients=clients, needs_data=True)


# How the method comparisons on MNIST-1D train: warm start (docs/method.md, "Baselines and training modes"), the same for every method.
# Measured in the training-modes suite (reports/mnist1d-training-modes): under Dirichlet α=0.1 the
# the paper's default ``retrain`` (15 FL rounds × 2 epochs from f^0 each AL round) ends at 39% accuracy,
# still far from converged, while warm start reaches 70% at 3.7× less training time. A comparison
# of selection methods on an undertrained learner measures training noise more than selection,
# and would cost ~4× the CPU. The literal-default suite stays available as ``*-retrain``.
COMPARISON_TRAINING = {"training-mode": "warm-start"}
MNIST1D_DIRICHLET = {"dataset": "mnist1d", "partition": "dirichlet"}
MNIST1D_SHARD = {"dataset": "mnist1d", "partition": "shard"}
# The paper fine-tunes a pretrained backbone; for MNIST-1D ours is self-supervised on samples
# generated with another seed (python -m simulations.pretrain; the weights are committed).
PRETRAINED = {"backbone-weights": "weights/mnist1d-cnn1d-ssl.pt"}

# Issue #11: the revised client geometry (probe after each of the last ⌈T/4⌉ FL rounds, exhausted
# clients out of the graph) against the baselines, plus fedal's own balanced variant.
ADAM_PROBE = {"pseudo-optimizer": "adam"}
GEOMETRY_METHODS = (
    Method("Rand", {"client-strategy": "random", "point-strategy": "random"}),
    Method("Rand+Ent", {"client-strategy": "random", "point-strategy": "entropy"}),
    Method("Ent+Ent", {"client-strategy": "entropy", "point-strategy": "entropy"}),
    Method("Rand+BASE", {"client-strategy": "random", "point-strategy": "base"}),
    Method("Rand+LoGo", {"client-strategy": "random", "point-strategy": "logo"}),
    Method("Ours", {"client-strategy": "diffusion", "point-strategy": "diffusion"}),
    Method("Ours+Bal", {"client-strategy": "balanced-diffusion", "point-strategy": "diffusion"}),
    # the first revision's probe (one Adam epoch), run before the per-round alignment of the
    # probe suite showed the paper's single gradient step aligning better
    Method("Ours adam-probe", {"client-strategy": "diffusion", "point-strategy": "diffusion", **ADAM_PROBE}),
    Method("Ours+Bal adam-probe", {"client-strategy": "balanced-diffusion", "point-strategy": "diffusion",
                                   **ADAM_PROBE}),
)
# Issue #23: client selection beyond the paper. fedal's diffusion coverage with each of the point
# strategies that did best behind random clients (BASE, LoGo) and the paper's local diffusion, and
# the literature's client selectors with the point strategy that measured best behind coverage
# (a pilot on the paper's regime, seeds 0-1: docs/method.md, "Client selection beyond the paper").
RULE_POINTS = "base"
CLIENT_RULE_METHODS = (
    Method("Cov+Diff", {"client-strategy": "diffusion-coverage", "point-strategy": "diffusion"}),
    Method("Cov+BASE", {"client-strategy": "diffusion-coverage", "point-strategy": "base"}),
    Method("Cov+LoGo", {"client-strategy": "diffusion-coverage", "point-strategy": "logo"}),
    Method("DivFL", {"client-strategy": "divfl", "point-strategy": RULE_POINTS}),
    # fedal's balanced DivFL: the facility location weighted toward the classes the labeled set
    # lacks (DivFL's winners in B end with less even labeled sets than Rand's: docs/results.md)
    Method("DivFL+Bal", {"client-strategy": "balanced-divfl", "point-strategy": RULE_POINTS}),
    # the same with each client's argmax share over U as its class mix: in A the retrained head's
    # mean softmax is close to uniform, and DivFL+Bal's first pick there is DivFL's (docs/results.md)
    Method("DivFL+Bal-argmax", {"client-strategy": "balanced-divfl", "point-strategy": RULE_POINTS,
                                "predicted-mix": "argmax"}),
    # fedal's cumulative DivFL: the facility location continued from the clients that already hold
    # labels, so rounds add up (DivFL's labeled set ends twice as uneven as Rand's: docs/results.md)
    Method("DivFL+Cum", {"client-strategy": "cumulative-divfl", "point-strategy": RULE_POINTS}),
    # the same with a labeled client covering only as far as its data is labeled (DivFL+Cum's rounds
    # crowd in B Dirichlet pretrained), and with LoGo points (BASE points lose in B Shard pretrained)
    Method("DivFL+CumS", {"client-strategy": "cumulative-divfl", "point-strategy": RULE_POINTS, "cumulative-cover": "share"}),
    Method("DivFL+Cum+LoGo", {"client-strategy": "cumulative-divfl", "point-strategy": "logo"}),
    # and with Rand's own random points: the client rule alone (behind random clients BASE points
    # lose in B Shard pretrained and win 1 budget at most elsewhere: reports/v2)
    Method("DivFL+Cum+Rand", {"client-strategy": "cumulative-divfl", "point-strategy": "random"}),
    # the class-mix oracle (simulator only, --engine inprocess): clients picked by their true class
    # counts, behind random and BASE points. Could any client rule win here by class mix?
    Method("Oracle+Rand", {"client-strategy": "oracle-balance", "point-strategy": "random"}),
    Method("Oracle+BASE", {"client-strategy": "oracle-balance", "point-strategy": "base"}),
    # fedal's mix balance: the oracle's greedy on the clients' predicted class mixes (deployable)
    Method("Mix+Rand", {"client-strategy": "mix-balance", "point-strategy": "random"}),
    Method("Mix+BASE", {"client-strategy": "mix-balance", "point-strategy": "base"}),
    # and on BBSE's mixes, the estimate whose greedy beats random batches at the first selection
    # (simulations/mix_estimates.py)
    Method("MixB+Rand", {"client-strategy": "mix-balance", "point-strategy": "random", "predicted-mix": "bbse"}),
    Method("MixB+BASE", {"client-strategy": "mix-balance", "point-strategy": "base", "predicted-mix": "bbse"}),
    # and gated: random clients while some class has no labeled point (at the first selection of
    # B Shard pretrained 2-7 classes have none, and BBSE cannot see them: simulations/mix_estimates.py)
    Method("MixG+Rand", {"client-strategy": "mix-balance", "point-strategy": "random", "predicted-mix": "bbse",
                         "mix-gate": "all-classes"}),
    Method("Clustered", {"client-strategy": "clustered", "point-strategy": RULE_POINTS}),
    Method("Pow-d", {"client-strategy": "pow-d", "point-strategy": RULE_POINTS}),
    Method("KCenter", {"client-strategy": "kcenter", "point-strategy": RULE_POINTS}),
)
GEOMETRY_METHODS = GEOMETRY_METHODS + CLIENT_RULE_METHODS
# The decisive test of #23: the paper's own training regime (seeds/001 §5) — a frozen pretrained
# backbone with the head retrained from f^0 every AL round, η = 0.001 decayed ×0.1 every 10 FL
# rounds — on equal-size clients, 10 seeds (the paper's count).
PAPER_REGIME = {"dataset": "mnist1d", **PRETRAINED, "freeze-backbone": True, "training-mode": "retrain",
                "lr-schedule": "step", "learning-rate": 0.001}
PAPER_REGIME_METHODS = tuple(m for m in GEOMETRY_METHODS if m.name in (
    "Rand", "Rand+BASE", "Rand+Ent", "Ent+Ent", "Ours", "Ours+Bal")) + CLIENT_RULE_METHODS

# The probe's optimiser, measured by the alignment of q with the clients' true class mixes
PROBE_METHODS = (
    Method("Ours", {"client-strategy": "diffusion", "point-strategy": "diffusion"}),  # gd × 1
    Method("Ours adam-probe", {"client-strategy": "diffusion", "point-strategy": "diffusion", **ADAM_PROBE}),
)

SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("mnist1d-dirichlet", "the paper's protocol on MNIST-1D, Dirichlet α=0.1, 100 clients, warm-start training",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING}, PAPER_METHODS),
    Suite("mnist1d-shard", "the paper's protocol on MNIST-1D, Shard (20% of the classes per client), warm-start training",
          {**MNIST1D_SHARD, **COMPARISON_TRAINING}, PAPER_METHODS),
    Suite("mnist1d-dirichlet-scratch", "revised client geometry, MNIST-1D Dirichlet α=0.1, CNN from scratch",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING}, GEOMETRY_METHODS),
    Suite("mnist1d-dirichlet-pretrained", "revised client geometry, MNIST-1D Dirichlet α=0.1, self-supervised backbone",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING, **PRETRAINED}, GEOMETRY_METHODS),
    Suite("mnist1d-shard-scratch", "revised client geometry, MNIST-1D Shard (20% of classes), CNN from scratch",
          {**MNIST1D_SHARD, **COMPARISON_TRAINING}, GEOMETRY_METHODS),
    Suite("mnist1d-shard-pretrained", "revised client geometry, MNIST-1D Shard (20% of classes), self-supervised backbone",
          {**MNIST1D_SHARD, **COMPARISON_TRAINING, **PRETRAINED}, GEOMETRY_METHODS),
    Suite("mnist1d-paper-regime-dirichlet", "the paper's regime (frozen SSL backbone, head retrained each AL round, "
          "step lr), MNIST-1D equal-size clients with Dirichlet α=0.1 class mixes",
          {**PAPER_REGIME, "partition": "dirichlet-equal", "dirichlet-alpha": 0.1}, PAPER_REGIME_METHODS,
          seeds=tuple(range(10))),
    Suite("mnist1d-paper-regime-shard", "the paper's regime (frozen SSL backbone, head retrained each AL round, "
          "step lr), MNIST-1D Shard (20% of the classes per client)",
          {**PAPER_REGIME, "partition": "shard"}, PAPER_REGIME_METHODS, seeds=tuple(range(10))),
    Suite("mnist1d-probe", "the probe's optimiser (gd vs adam): alignment of q with true class mixes, Dirichlet α=0.1",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING}, PROBE_METHODS, seeds=(0, 1)),
    Suite("mnist1d-probe-pretrained", "as mnist1d-probe with the self-supervised backbone",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING, **PRETRAINED}, PROBE_METHODS, seeds=(0, 1)),
    Suite("mnist1d-dirichlet-retrain", "as mnist1d-dirichlet with the paper's default retrain (about 4× the CPU)",
          MNIST1D_DIRICHLET, PAPER_METHODS),
    Suite("mnist1d-ablations", "ablations of the paper's method on MNIST-1D, Dirichlet α=0.1, warm-start training",
          {**MNIST1D_DIRICHLET, **COMPARISON_TRAINING}, ABLATION_METHODS),
    Suite("mnist1d-training-modes", "retrain vs warm start vs continual AL (seeds/002), MNIST-1D Dirichlet",
          MNIST1D_DIRICHLET, TRAINING_MODE_METHODS, seeds=(0, 1, 2)),
    Suite("digits-smoke", "a 2-minute sanity suite on scikit-learn digits, 10 clients",
          {"dataset": "digits", "partition": "dirichlet", "dirichlet-alpha": 0.5, "al-rounds": 3,
           "init-clients": 3, "init-points": 20, "clients-per-round": 3, "points-per-client": 20,
           "fl-rounds": 5}, PAPER_METHODS[:3] + PAPER_METHODS[-1:], clients=10, seeds=(0, 1)),
    _vision("cifar10-dirichlet", "cifar10", "dirichlet"),
    _vision("cifar10-shard", "cifar10", "shard"),
    _vision("cifar100-dirichlet", "cifar100", "dirichlet"),
    _vision("cifar100-shard", "cifar100", "shard"),
    _vision("fashion-mnist-dirichlet", "fashion-mnist", "dirichlet"),
    _vision("fashion-mnist-shard", "fashion-mnist", "shard"),
    _vision("emnist-letters-dirichlet", "emnist-letters", "dirichlet"),
    _vision("emnist-letters-shard", "emnist-letters", "shard"),
    # seeds/001 §5: CINIC-10 with 300 clients, V = 10, W = 100
    _vision("cinic10-dirichlet", "cinic10", "dirichlet", clients=300,
            budget={"clients-per-round": 10, "points-per-client": 100}),
    _vision("cinic10-shard", "cinic10", "shard", clients=300,
            budget={"clients-per-round": 10, "points-per-client": 100}),
]}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace("+", "-"))


@dataclass
class PlannedRun:
    suite: Suite
    method: Method
    seed: int
    run_config: dict = field(default_factory=dict)
    run_dir: Path = Path()

    @property
    def done(self) -> bool:
        return (self.run_dir / SUMMARY_FILE).exists()


def plan(suite: Suite, results: Path, seeds=None, methods=None, extra: dict | None = None) -> list[PlannedRun]:
    chosen = suite.methods
    if methods:
        known = {m.name for m in suite.methods}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown} for suite {suite.name!r}; valid: {', '.join(sorted(known))}")
        chosen = tuple(m for m in suite.methods if m.name in methods)
    runs = []
    # seed-major order: an interrupted suite has every method at the first seeds
    for seed in (seeds if seeds is not None else suite.seeds):
        for method in chosen:
            rc = {**suite.base, **method.overrides, **(extra or {}), "seed": seed,
                  "method-name": method.name, "suite": suite.name}
            try:
                cfg = Config.from_run_config(rc)  # every run validated before the first starts
            except ConfigError as e:
                raise SystemExit(f"suite {suite.name!r}, method {method.name!r}: {e}") from None
            run_dir = results / suite.name / slug(method.name) / f"{cfg.config_hash()}-s{seed}"
            rc.update({"run-dir": str(run_dir.parent), "run-name": run_dir.name})
            runs.append(PlannedRun(suite, method, seed, rc, run_dir))
    return runs


_CHILDREN: set[subprocess.Popen] = set()  # the runs under way (run_one), stopped with the runner
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by _stop_runs: no queued run starts after it
STOPPED = 128 + signal.SIGTERM  # the exit code of a run or runner stopped by SIGTERM


def simulator_only(run_config: dict) -> bool:
    """Whether a run's client strategy reads what only the in-process simulator has."""
    from fedal import selection

    name = run_config.get("client-strategy")
    return name in selection.available() and selection.get(name).simulator_only


def run_one(run: PlannedRun, log_file: Path, engine: str = "ray") -> int:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "simulations.engine", "--clients", str(run.suite.clients),
           "--engine", engine, "--run-config", json.dumps(run.run_config)]
    with open(log_file, "w") as f:
        with _CHILDREN_LOCK:  # a stop cannot fall between the check and the start
            if _STOPPING.is_set():
                return STOPPED
            env = {**os.environ, **process_env(run.run_config.get("numerics", "native"))}
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
            _CHILDREN.add(proc)
        try:
            return proc.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)


def _stop_runs(signum, frame) -> None:
    """SIGTERM to the runner stops its runs too, not only the runner (Ctrl-C reaches them through
    the terminal's process group): a run left going would write its directory with nobody to
    report it, and the queued runs would start one by one as the stopped ones end."""
    _STOPPING.set()
    with _CHILDREN_LOCK:
        for proc in _CHILDREN:
            proc.terminate()
    raise SystemExit(128 + signum)


def main(argv=None, prog: str = "python -m simulations.compare") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="suite name (see --list)")
    ap.add_argument("--list", action="store_true", help="list the suites and exit")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the suite's)")
    ap.add_argument("--methods", nargs="+", help="subset of the suite's methods, by name")
    ap.add_argument("--results", default="results", help="results root (default: results/)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra run-config values for every run, e.g. data-root=/data")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                    help="ray: Flower's simulation engine (default); inprocess: the same handlers "
                         "in one process without Ray — the same rows, one core per run, so "
                         "--jobs 2 uses both cores (simulations/inprocess.py)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time (default 1; wall times recorded in results are then contended)")
    ap.add_argument("--allow-mixed-numerics", action="store_true",
                    help="add seeds to a method whose finished runs computed on other numerics (fedal/numerics.py)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs = {args.jobs} is invalid; valid: an integer >= 1")
    if args.list or not args.suite:
        for s in SUITES.values():
            print(f"{s.name:28s} {len(s.methods)} methods × {len(s.seeds)} seeds, {s.clients} clients — {s.description}")
        return 0
    if args.suite not in SUITES:
        raise SystemExit(f"unknown suite {args.suite!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[args.suite]
    extra = dict(kv.partition("=")[::2] for kv in args.set)
    runs = plan(suite, Path(args.results), args.seeds, args.methods, extra)
    todo = [r for r in runs if not r.done]
    oracle = sorted({r.method.name for r in todo if simulator_only(r.run_config)})
    if oracle and args.engine != "inprocess":
        raise SystemExit(f"{', '.join(oracle)} read the clients' true class counts, which only --engine inprocess "
                         f"gives (--engine {args.engine} was asked); nothing was run")
    index = finished_runs(Path(args.results))
    same = {id(r): find_identical(r, Path(args.results), index) for r in todo}
    print(f"suite {suite.name}: {len(runs)} runs, {len(runs) - len(todo)} already done, "
          f"{sum(v is not None for v in same.values())} identical to finished runs elsewhere, "
          f"{sum(v is None for v in same.values())} to run")
    mixed = numerics_conflicts([r for r in todo if same[id(r)] is None])
    if mixed and not (args.dry_run or args.allow_mixed_numerics):
        raise SystemExit("these methods' finished runs computed on other numerics than new runs here would, so "
                         "their seeds would mix two environments:\n  " + "\n  ".join(mixed) + "\nuse another "
                         "--results root (e.g. with --set numerics=portable), or --allow-mixed-numerics; nothing was run")
    if args.dry_run:
        print("".join(f"  mixes numerics: {line}\n" for line in mixed), end="")
        for r in runs:
            state = "done" if r.done else ("same" if same.get(id(r)) else "todo")
            print(f"  {state}  {r.method.name:18s} seed {r.seed}  {r.run_dir}")
        return 0
    for r in todo:
        if same[id(r)] is not None:
            reuse(r, same[id(r)])
            print(f"reused {same[id(r)]} as {r.method.name} seed {r.seed} (same config hash and seed)")
    todo = [r for r in todo if not r.done]
    t_start = time.time()

    def one(r: PlannedRun) -> tuple[PlannedRun, int, float]:
        t0 = time.time()
        return r, run_one(r, r.run_dir / LOG_FILE, args.engine), time.time() - t0

    # --jobs > 1 runs whole simulations side by side (each its own Ray cluster); results do not
    # depend on it, only the wall times recorded in them do, so timing suites should use 1
    _STOPPING.clear()
    previous = signal.signal(signal.SIGTERM, _stop_runs)
    try:
        failures = _run_all(todo, one, args.jobs, t_start)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"suite {suite.name}: {len(todo) - failures} runs completed, {failures} failed; "
          f"report: python -m simulations.reports {Path(args.results) / suite.name} --out <dir>")
    return 1 if failures else 0


def _run_all(todo: list[PlannedRun], one, jobs: int, t_start: float) -> int:
    """Runs ``todo`` (``jobs`` at a time) with a progress line per finished run; returns the
    number that failed."""
    failures = 0
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for i, fut in enumerate(as_completed([pool.submit(one, r) for r in todo]), 1):
            r, code, took = fut.result()
            eta = (time.time() - t_start) / i * (len(todo) - i)
            status = "ok" if code == 0 and r.done else f"FAILED (exit {code}; see {r.run_dir / LOG_FILE})"
            failures += status != "ok"
            bar = "#" * int(30 * i / len(todo))
            print(f"[{bar:30s}] {i}/{len(todo)} {r.method.name} seed {r.seed}: {status} in {took:.0f}s, "
                  f"ETA {eta / 60:.0f} min", flush=True)
    except BaseException:  # SIGTERM (_stop_runs) or Ctrl-C: the queued runs must not start
        _STOPPING.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
