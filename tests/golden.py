"""Golden results: rounds.jsonl rows (timings removed) of fixed-seed runs, recorded from the code
before a refactoring, so that a change which should not alter behaviour can prove it did not.

``python -m tests.golden`` rewrites tests/data/golden_*.json from the current code: do it only for
a deliberate behaviour change, in a commit of its own that says which rows changed and why.
To check a refactoring bit for bit on one machine: ``FEDAL_GOLDEN_DIR=/tmp/g python -m tests.golden``
before it, ``FEDAL_GOLDEN_DIR=/tmp/g FEDAL_GOLDEN_EXACT=1 python -m pytest tests/test_behaviour_preserved.py``
after it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from tests.helpers import without_times

# FEDAL_GOLDEN_DIR: record and compare elsewhere, e.g. this machine's rows before a refactoring,
# compared bit for bit after it (with FEDAL_GOLDEN_EXACT=1), the committed goldens untouched
DATA = Path(os.environ.get("FEDAL_GOLDEN_DIR") or Path(__file__).resolve().parent / "data")

# in-process runs (the real ServerApp loop and ClientApp handlers, no Ray): small digits
# federations covering every client strategy, the point strategies with their own machinery
# (local diffusion, a local model, k-means) and every training mode
INPROCESS_BASE = {"dataset": "digits", "al-rounds": 2, "init-clients": 2, "init-points": 15,
                  "clients-per-round": 2, "points-per-client": 12, "fl-rounds": 2, "local-epochs": 1,
                  "pseudo-epochs": 2, "knn-k": 3, "local-k": 3,
                  # recorded when the default probe was Adam; pinned so the rows keep checking the
                  # same behaviour (the gd probe has its own case below)
                  "pseudo-optimizer": "adam"}
INPROCESS_CLIENTS = 8
INPROCESS_CASES = {
    "diffusion-diffusion-cal-der": {"client-strategy": "diffusion", "point-strategy": "diffusion",
                                    "training-mode": "cal-der"},
    "balanced-logo-retrain": {"client-strategy": "balanced-diffusion", "point-strategy": "logo",
                              "training-mode": "retrain"},
    "diffusion-margin-cal-mir-gd-sketch": {"client-strategy": "diffusion", "point-strategy": "margin",
                                           "training-mode": "cal-mir", "pseudo-optimizer": "gd",
                                           "sketch-dim": 16},
    "entropy-badge-cal-sds2": {"client-strategy": "entropy", "point-strategy": "badge",
                               "training-mode": "cal-sds2"},
    "random-entropy-cal-er-shard": {"client-strategy": "random", "point-strategy": "entropy",
                                    "training-mode": "cal-er", "partition": "shard"},
    "diffusion-hybrid-cal-sd-all-params": {"client-strategy": "diffusion", "point-strategy": "hybrid",
                                           "training-mode": "cal-sd", "pseudo-params": "all",
                                           "laplacian": "rw", "sigma-scope": "all"},
    "entropy-coreset-warm-start-iid": {"client-strategy": "entropy", "point-strategy": "coreset",
                                       "training-mode": "warm-start", "partition": "iid",
                                       "seed": 3},
}

# asynchronous labeling (simulated annotators on the simulated clock) under both budget rules:
# rows and the run's summary (labels paid, granted, withdrawn, idle fractions, latencies)
ASYNC_BASE = {**INPROCESS_BASE, "labeling": "async", "client-strategy": "diffusion", "point-strategy": "entropy",
              "annotator-latency": "lognormal:median=5,sigma=0.5", "annotators-per-site": 2,
              "query-pool-low": 4, "query-pool-refill": 9, "sim-fl-round-s": 20.0, "sim-select-s": 10.0}
ASYNC_CASES = {
    "async-selection": {},
    "async-standing": {"async-budget": "standing"},
}

# one run through Flower's simulation engine (Ray actors) with the defaults' strategies
# (diffusion / diffusion, warm start), on digits to keep it fast
SIMULATION_CONFIG = {**INPROCESS_BASE, "seed": 1}
SIMULATION_CLIENTS = 8


def inprocess_rows(name: str) -> list[dict]:
    from tests.inprocess import run_inprocess

    rows, _ = run_inprocess({**INPROCESS_BASE, **INPROCESS_CASES[name]}, INPROCESS_CLIENTS)
    return normalised(rows)


def async_result(name: str) -> dict:
    """{"rows": …, "summary": …} of an asynchronous run (the summary without its wall time)."""
    from tests.inprocess import run_inprocess

    rows, grid = run_inprocess({**ASYNC_BASE, **ASYNC_CASES[name]}, INPROCESS_CLIENTS)
    summary = {k: v for k, v in grid.loop.summary.items() if k != "wall_time_s"}
    return json.loads(json.dumps({"rows": without_times(rows), "summary": summary}, sort_keys=True))


def simulation_rows(run_dir_root: Path) -> list[dict]:
    from simulations.engine import read_rows, simulate

    return normalised(read_rows(simulate({**SIMULATION_CONFIG, "run-dir": str(run_dir_root)},
                                         num_clients=SIMULATION_CLIENTS)))


def normalised(rows: list[dict]) -> list[dict]:
    # through JSON, as rounds.jsonl stores them (tuples become lists, floats round-trip exactly)
    return json.loads(json.dumps(without_times(rows), sort_keys=True))


# Floats are compared to this relative tolerance, everything else (picks, counts, labels, the
# rows' shape) exactly. float32 reductions (test loss, entropies, training) come out differently
# in the last bits on different CPUs (vector width, MKL's kernels): the goldens recorded on one
# machine differed from another's by up to 9e-4 relative in a loss after two AL rounds of training,
# with every pick and count identical. A behaviour change moves picks, counts or accuracy (one
# test point of digits is 3e-3 of accuracy) well beyond it. FEDAL_GOLDEN_EXACT=1 compares bit for
# bit, which holds on the machine that recorded the goldens (a refactoring's check there).
REL_TOL = 2e-3


def mismatches(actual, expected, path: str = "rows") -> list[str]:
    """Where ``actual`` differs from ``expected``: [] when they match (see REL_TOL)."""
    exact = os.environ.get("FEDAL_GOLDEN_EXACT") == "1"
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(actual) != set(expected):
            return [f"{path}: keys {sorted(set(actual) ^ set(expected))} in only one of them"]
        return [m for k in sorted(expected) for m in mismatches(actual[k], expected[k], f"{path}.{k}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{path}: {len(actual)} entries, golden {len(expected)}"]
        return [m for i, (a, e) in enumerate(zip(actual, expected)) for m in mismatches(a, e, f"{path}[{i}]")]
    if (isinstance(expected, float) and isinstance(actual, float) and not exact
            and math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=1e-12)):
        return []
    return [] if actual == expected and type(actual) is type(expected) else [f"{path}: {actual!r}, golden {expected!r}"]


def load(name: str):
    return json.loads((DATA / f"golden_{name}.json").read_text())


def write(name: str, rows) -> None:
    DATA.mkdir(exist_ok=True)
    (DATA / f"golden_{name}.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    import tempfile

    for name in INPROCESS_CASES:
        write(f"inprocess_{name}", inprocess_rows(name))
        print("wrote", name)
    for name in ASYNC_CASES:
        write(name, async_result(name))
        print("wrote", name)
    if "--no-simulation" not in argv:
        with tempfile.TemporaryDirectory() as d:
            write("simulation", simulation_rows(Path(d)))
        print("wrote simulation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
