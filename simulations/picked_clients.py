"""Which clients did each method pick? A simulation-side diagnostic for comparison suites.

    python -m simulations.picked_clients results/mnist1d-dirichlet [--out FILE.md]

The federated protocol never lets the server see a client's class histogram; the simulator can
rebuild it (the partition is deterministic under the run's seed), so after the fact we can ask how
representative each method's picks were. Per method (mean over runs):

- *dominant share*: the share of a picked client's data held by its largest class (1 = a
  single-class client; under Dirichlet α = 0.1 the mean over all 100 clients is about 0.69);
- *TV to population*: total-variation distance between the class mix of all picked clients' data
  (pooled, with repeats) and that of the whole federation (0 = representative);
- *final imbalance*: most / least labeled class of the labeled set after the last round.

Below the table, Spearman's rank correlation across all runs between the TV distance and the final
accuracy says whether unrepresentative picks go with worse models beyond a per-method average.

Used to explain why uncertainty-driven client selection loses to random selection on
MNIST-1D Dirichlet (docs/results.md, "Comparing client and point selection").
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PickStats:
    dominant_share: float
    tv_to_population: float
    final_imbalance: float


def pick_stats(hist: np.ndarray, picks: list[int], final_labeled: list[int] | np.ndarray) -> PickStats:
    """``hist``: (clients, classes) data counts per client; ``picks``: chosen partition ids over
    all rounds (repeats count); ``final_labeled``: labeled points per class at the end."""
    hist = np.asarray(hist, dtype=np.float64)
    if not picks:
        raise ValueError("no picks: the run chose no client")
    sizes = hist.sum(1)
    if np.any(sizes[picks] == 0):
        raise ValueError("a picked client holds no data")
    dominant = float(np.mean(hist[picks].max(1) / sizes[picks]))
    mix = hist[picks].sum(0)
    pop = hist.sum(0)
    tv = 0.5 * float(np.abs(mix / mix.sum() - pop / pop.sum()).sum())
    lab = np.asarray(final_labeled, dtype=np.float64)
    imb = float(lab.max() / lab.min()) if lab.min() > 0 else float("inf")
    return PickStats(dominant, tv, imb)


def tv_accuracy_correlation(tvs, accuracies) -> tuple[float, float]:
    """Spearman's rank correlation (and its two-sided p-value) between per-run TV distances and
    final accuracies; ranks, because neither is expected to be linear in the other."""
    from scipy.stats import spearmanr

    tvs, accuracies = np.asarray(tvs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    if tvs.shape != accuracies.shape or tvs.size < 3:
        raise ValueError(f"need at least 3 runs with one TV and one accuracy each, got {tvs.size} and {accuracies.size}")
    res = spearmanr(tvs, accuracies)
    return float(res.statistic), float(res.pvalue)


# the run-config keys that decide which data each client holds
DATA_KEYS = ("dataset", "data-root", "partition", "dirichlet-alpha", "shard-class-fraction", "seed")


def client_histograms(run_config: dict, num_clients: int) -> np.ndarray:
    from fedal.config import Config
    from fedal.data import client_data, load_dataset

    cfg = Config.from_run_config(run_config)
    c = load_dataset(cfg.dataset, cfg.data_root).num_classes
    return np.stack([np.bincount(client_data(cfg, p, num_clients)[1], minlength=c) for p in range(num_clients)])


def main(argv=None) -> int:
    from simulations.reports.load import ReportError, load_runs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a suite's results directory")
    ap.add_argument("--out", help="write the Markdown table here as well")
    ap.add_argument("--clients", type=int, default=100, help="number of clients of the suite (default 100)")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.root)  # completed runs only, validated as the reports read them
    except ReportError as e:
        raise SystemExit(str(e)) from None
    if not runs:
        raise SystemExit(f"no completed runs under {args.root}")
    cache: dict[str, np.ndarray] = {}
    # per method: (pick statistics, final accuracy) of each run, kept together so the
    # correlation below pairs every run's TV with its own accuracy
    per: dict[str, list[tuple[PickStats, float]]] = defaultdict(list)
    for run in runs:
        rc = {k: v for k, v in run.config.items() if k in DATA_KEYS}
        key = json.dumps(rc, sort_keys=True)
        if key not in cache:  # one partition per (dataset, partition, seed), shared by all methods
            cache[key] = client_histograms(rc, args.clients)
        picks = [p for r in run.rounds for p in r.chosen_clients]
        stats = pick_stats(cache[key], picks, run.rounds[-1].labeled_per_class)
        per[run.method].append((stats, run.rounds[-1].accuracy))
    lines = ["| method | runs | dominant share of picked clients | TV(picked class mix, population) | final imbalance (max/min class) | final accuracy |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, rows in sorted(per.items(), key=lambda kv: np.mean([s.tv_to_population for s, _ in kv[1]])):
        a = np.array([[s.dominant_share, s.tv_to_population, s.final_imbalance, acc] for s, acc in rows])
        lines.append(f"| {m} | {len(rows)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} ± {a[:, 1].std(ddof=1) if len(a) > 1 else 0:.3f} "
                     f"| {a[:, 2].mean():.2f} | {100 * a[:, 3].mean():.1f}% |")
    every = [(s.tv_to_population, acc) for rows in per.values() for s, acc in rows]
    if len(every) >= 3:
        rho, p = tv_accuracy_correlation(*zip(*every))
        lines += ["", f"Across all {len(every)} runs, Spearman's rank correlation between the TV distance and the "
                      f"final accuracy is {rho:+.2f} (p = {p:.1g})."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
