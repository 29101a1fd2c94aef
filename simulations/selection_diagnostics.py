"""Per-AL-round diagnostics of client selection, on the simulator side (reports include them).

    python -m simulations.selection_diagnostics RESULTS_DIR [--out DIR] [--graph-round 1] [--graph-seed 0]

The server never sees a client's class histogram; the simulator rebuilds it from the run's seed (as
``simulations/picked_clients.py`` and ``simulations/alignment.py`` do), so after the fact we can
say what each selection did. Per AL round's selection (the picks of row r serve AL round r + 1):

- *same-class pairs*: the share of the pairs among the round's picked clients whose dominant
  classes (the largest class of each client's whole local data) are the same — random picks
  under Dirichlet α = 0.1 have about 0.1, a batch crowded into one class region far more;
- *distinct dominant classes* among the round's picks (of V);
- *label entropy*: the entropy of the class counts the round acquired, divided by log C (1 = every
  class equally, 0 = one class);
- *first-selection change*: accuracy after the first selected labels minus accuracy on the random
  initial labels (row 1 − row 0): a concentrated first batch can pull a warm-started model down.
  Per seed, and paired against the baseline over the seeds both have (one seed's runs share
  their initial labels, so row 0 is the same): a drop in one seed says little where the
  baseline's own accuracy drops between later rounds too, which the report counts beside it
  (the training noise of the regime: retraining from f⁰ each round drops often).

Across runs, Spearman's ρ between a run's mean label entropy and its mean accuracy over the budgets
says whether balanced rounds go with better models beyond a per-method average.

``client_graph.png`` draws, for one seed and one selection, each method's view: the 100 clients
placed by their true class mixes (Kamada–Kawai on the Hellinger distances, the same layout for
every method), coloured by dominant class, the method's own client graph (mutual kNN, K = 7, on its
recorded q) where it has one, and its picks numbered in pick order.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from simulations.first_selection import (  # noqa: F401  (re-exported: reports and tests use them here)
    FirstSelection, first_selection_json, first_selection_markdown, first_selection_table)

# --------------------------------------------------------------------------------------------
# Statistics (pure)
# --------------------------------------------------------------------------------------------


def dominant_classes(hist: np.ndarray) -> np.ndarray:
    """The largest class of each client's data (ties → the lower class)."""
    return np.asarray(hist).argmax(axis=1)


def same_class_pair_rate(dominant: np.ndarray, picks: Sequence[int]) -> float:
    """Share of the pairs among ``picks`` whose dominant classes agree; nan for fewer than 2 picks."""
    d = np.asarray(dominant)[list(picks)]
    pairs = len(d) * (len(d) - 1) / 2
    if pairs == 0:
        return math.nan
    same = sum(int(n) * (int(n) - 1) / 2 for n in np.unique(d, return_counts=True)[1])
    return same / pairs


def label_entropy(counts: Sequence[int]) -> float:
    """Entropy of a class-count vector over log C (nan when nothing was acquired)."""
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0 or len(c) < 2:
        return math.nan
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(c)))


@dataclass(frozen=True)
class RunDiagnostics:
    """One run: per selection (row r = 0..R−1) the three round statistics, and the accuracy change
    at the first selection."""

    seed: int
    same_class_pairs: tuple[float, ...]
    distinct_dominant: tuple[int, ...]
    label_entropy: tuple[float, ...]
    first_selection_change: float
    mean_accuracy: float
    # accuracy change from each row to the next (row r+1 − row r); [0] is the first selection's
    round_changes: tuple[float, ...] = ()

    @property
    def mean_label_entropy(self) -> float:
        v = [x for x in self.label_entropy if not math.isnan(x)]
        return float(np.mean(v)) if v else math.nan


def run_diagnostics(run, hist: np.ndarray) -> RunDiagnostics:
    """``run``: a ``simulations.reports.Run`` (rows with chosen_clients and acquired_per_class)."""
    dom = dominant_classes(hist)
    sel = [r for r in run.rounds if r.chosen_clients]
    acc = [r.accuracy for r in run.rounds]
    return RunDiagnostics(
        seed=run.seed,
        same_class_pairs=tuple(same_class_pair_rate(dom, r.chosen_clients) for r in sel),
        distinct_dominant=tuple(int(len(set(dom[list(r.chosen_clients)].tolist()))) for r in sel),
        label_entropy=tuple(label_entropy(r.acquired_per_class) if r.acquired_per_class else math.nan
                            for r in sel),
        first_selection_change=(acc[1] - acc[0]) if len(acc) > 1 else math.nan,
        mean_accuracy=float(np.mean(acc[1:])) if len(acc) > 1 else math.nan,
        round_changes=tuple(float(b - a) for a, b in zip(acc, acc[1:])),
    )


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def diagnostics_table(per_group: Mapping[str, Sequence[RunDiagnostics]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group: mean ± std over runs of each run's mean over its selections."""
    out = {}
    for g, runs in per_group.items():
        out[g] = {
            "same_class_pairs": _mean_std(np.nanmean(r.same_class_pairs) for r in runs),
            "distinct_dominant": _mean_std(float(np.mean(r.distinct_dominant)) for r in runs),
            "label_entropy": _mean_std(r.mean_label_entropy for r in runs),
            "first_selection_change": _mean_std(r.first_selection_change for r in runs),
        }
    return out


def entropy_accuracy_correlation(runs: Iterable[RunDiagnostics]) -> tuple[float, float, int]:
    """Spearman's ρ (and p) between per-run mean label entropy and mean accuracy, and the run count."""
    from scipy.stats import spearmanr

    pairs = [(r.mean_label_entropy, r.mean_accuracy) for r in runs
             if not (math.isnan(r.mean_label_entropy) or math.isnan(r.mean_accuracy))]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    res = spearmanr(*zip(*pairs))
    return float(res.statistic), float(res.pvalue), len(pairs)


# --------------------------------------------------------------------------------------------
# Loading and rendering
# --------------------------------------------------------------------------------------------


def collect(runs: Iterable, group_by: str = "method", cache: dict | None = None) -> dict[str, list[RunDiagnostics]]:
    """Each run's diagnostics by group; class histograms rebuilt once per partition (``cache``)."""
    from simulations.alignment import recorded_clients
    from simulations.picked_clients import DATA_KEYS, client_histograms

    cache = {} if cache is None else cache
    per: dict[str, list[RunDiagnostics]] = defaultdict(list)
    for run in runs:
        if not any(r.chosen_clients for r in run.rounds):
            continue
        m = recorded_clients(run)
        rc = {k: v for k, v in run.config.items() if k in DATA_KEYS}
        key = json.dumps([rc, m], sort_keys=True)
        if key not in cache:
            cache[key] = client_histograms(rc, m)
        per[run.group(group_by)].append(run_diagnostics(run, cache[key]))
    return dict(per)


def _f(mean: float, std: float, digits: int = 2, scale: float = 1.0) -> str:
    if math.isnan(mean):
        return "—"
    s = f"{scale * mean:+.{digits}f}" if scale != 1.0 else f"{mean:.{digits}f}"
    return s if math.isnan(std) else f"{s} ± {scale * std:.{digits}f}"


def report_markdown(per_group: Mapping[str, Sequence[RunDiagnostics]], groups: Sequence[str],
                    baseline: str | None = None) -> list[str]:
    table = diagnostics_table(per_group)
    lines = ["## Selection diagnostics (simulator side)", "",
             "Per AL round's selection, mean over a run's selections, then mean ± std over runs: the "
             "share of pairs among the round's picks with the same dominant class, the number of "
             "distinct dominant classes among them, the entropy of the round's acquired labels over "
             "log C, and the accuracy change at the first selection (row 1 − row 0, points). "
             "`python -m simulations.selection_diagnostics` explains each.", "",
             "| method | runs | same-class pairs | distinct dominant classes | label entropy | first-selection change (points) |",
             "|---|---:|---:|---:|---:|---:|"]
    for g in groups:
        if g not in table:
            continue
        t = table[g]
        lines.append(f"| {g} | {len(per_group[g])} | {_f(*t['same_class_pairs'])} | {_f(*t['distinct_dominant'], 1)} "
                     f"| {_f(*t['label_entropy'])} | {_f(*t['first_selection_change'], 1, 100.0)} |")
    rho, p, n = entropy_accuracy_correlation(r for rs in per_group.values() for r in rs)
    if n >= 3:
        lines += ["", f"Across all {n} runs, Spearman's ρ between a run's mean label entropy and its mean "
                      f"accuracy over the budgets after round 0: {rho:+.2f} (p = {p:.1g})."]
    return lines + [""] + first_selection_markdown(per_group, groups, baseline)


def table_json(per_group: Mapping[str, Sequence[RunDiagnostics]]) -> dict:
    return {g: {k: {"mean": m, "std": s} for k, (m, s) in cells.items()}
            for g, cells in diagnostics_table(per_group).items()}


# --------------------------------------------------------------------------------------------
# The client-graph picture
# --------------------------------------------------------------------------------------------


def graph_edges(q: np.ndarray, k: int = 7) -> list[tuple[int, int]]:
    """Mutual kNN edges (the client graph's, Eq. 13) from a recorded q, in q's index order."""
    from fedal.graph import _mutual_from_knn
    from fedal.knn import KNN

    n = len(q)
    k = min(k, n - 1)
    if k < 1:
        return []
    d = np.asarray(q, dtype=np.float64) + np.diag(np.full(n, np.inf))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    edges = _mutual_from_knn(KNN(idx, np.take_along_axis(d, idx, axis=1), 0), n)
    return list(zip(edges.i.tolist(), edges.j.tolist()))


def layout(hist: np.ndarray, seed: int = 0) -> dict[int, tuple[float, float]]:
    """Client positions from their true class mixes: Kamada–Kawai on Hellinger distances."""
    import networkx as nx

    from simulations.alignment import hellinger_matrix

    h = hellinger_matrix(hist)
    g = nx.complete_graph(len(h))
    dist = {i: {j: float(h[i, j]) + 1e-3 for j in range(len(h)) if j != i} for i in range(len(h))}
    init = {i: (math.cos(2 * math.pi * i / len(h)), math.sin(2 * math.pi * i / len(h))) for i in range(len(h))}
    return nx.kamada_kawai_layout(g, dist=dist, pos=init)


def plot_client_graphs(panels: Sequence[tuple[str, list[tuple[int, int]], list[int]]], hist: np.ndarray,
                       path: str | Path, title: str = "") -> Path:
    """One panel per (method, edges in client ids, picks in order) on one shared layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    pos = layout(hist)
    dom = dominant_classes(hist)
    colors = plt.get_cmap("tab10")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (name, edges, picks) in zip(axes.ravel(), panels):
        g = nx.Graph()
        g.add_nodes_from(range(len(hist)))
        g.add_edges_from(edges)
        nx.draw_networkx_edges(g, pos, ax=ax, width=0.4, alpha=0.35, edge_color="0.4")
        nx.draw_networkx_nodes(g, pos, ax=ax, node_size=28, linewidths=0,
                               node_color=[colors(int(c) % 10) for c in dom])
        nx.draw_networkx_nodes(g, pos, ax=ax, nodelist=list(picks), node_size=170, node_color="none",
                               edgecolors="black", linewidths=1.6)
        nx.draw_networkx_labels(g, {p: (pos[p][0], pos[p][1] + 0.07) for p in picks}, ax=ax,
                                labels={p: str(i + 1) for i, p in enumerate(picks)}, font_size=8,
                                font_weight="bold")
        same = same_class_pair_rate(dom, picks)
        ax.set_title(f"{name}\n{len(set(dom[list(picks)].tolist()))} classes of {len(picks)}, "
                     f"same-class pairs {same:.2f}", fontsize=9)
        ax.axis("off")
    from matplotlib.lines import Line2D

    present = sorted(set(dom.tolist()))
    fig.legend(handles=[Line2D([], [], marker="o", ls="", color=colors(c % 10), label=f"class {c}") for c in present],
               loc="lower center", ncol=min(len(present), 10), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def graph_panels(runs: Iterable, group_by: str, groups: Sequence[str], seed: int, row: int):
    """For each group's run of ``seed``: (name, edges, picks) of the selection in ``row``."""
    from fedal.results import Q_FILE
    from simulations.alignment import has_q, read_q

    by_group = {}
    for run in runs:
        if run.seed == seed and len(run.rounds) > row and run.rounds[row].chosen_clients:
            by_group.setdefault(run.group(group_by), run)
    panels = []
    for g in groups:
        run = by_group.get(g)
        if run is None:
            continue
        edges: list[tuple[int, int]] = []
        if has_q(run):
            qs = read_q(Path(run.path) / Q_FILE)
            if row + 1 in qs:  # q_r{r+1}: the graph of the selection made after row r
                q, clients = qs[row + 1]
                edges = [(int(clients[a]), int(clients[b])) for a, b in graph_edges(q)]
        panels.append((g, edges, [int(c) for c in run.rounds[row].chosen_clients]))
    return panels, next(iter(by_group.values()), None)


def write_graph_figure(runs: Sequence, group_by: str, groups: Sequence[str], out: Path, *, seed: int | None = None,
                       row: int = 0, cache: dict | None = None) -> Path | None:
    """client_graph.png for the selection in ``row`` (0: the first selection) of ``seed`` (the
    lowest seed when None); None when no run of that seed selected clients there."""
    from simulations.alignment import recorded_clients
    from simulations.picked_clients import DATA_KEYS, client_histograms

    seeds = sorted({r.seed for r in runs})
    if not seeds:
        return None
    seed = seeds[0] if seed is None else seed
    panels, run = graph_panels(runs, group_by, groups, seed, row)
    if run is None:
        return None
    rc = {k: v for k, v in run.config.items() if k in DATA_KEYS}
    cache = {} if cache is None else cache
    key = json.dumps([rc, recorded_clients(run)], sort_keys=True)
    if key not in cache:
        cache[key] = client_histograms(rc, recorded_clients(run))
    return plot_client_graphs(panels, cache[key], Path(out) / "client_graph.png",
                              f"Selection for AL round {row + 1}, seed {seed}: clients placed by class mix, "
                              "coloured by dominant class; picks numbered in order")


def main(argv=None) -> int:
    from simulations.reports.load import ReportError, load_runs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a suite's results directory")
    ap.add_argument("--out", help="write diagnostics.md and client_graph.png into this directory")
    ap.add_argument("--graph-round", type=int, default=1, help="AL round whose selection is drawn (default 1, the first)")
    ap.add_argument("--graph-seed", type=int, default=None, help="seed drawn (default: the lowest)")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.root)
    except ReportError as e:
        raise SystemExit(str(e)) from None
    if not runs:
        raise SystemExit(f"no completed runs under {args.root}")
    cache: dict = {}
    per = collect(runs, cache=cache)
    groups = sorted(per)
    text = "\n".join(report_markdown(per, groups))
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "diagnostics.md").write_text(text + "\n")
        fig = write_graph_figure(runs, "method", groups, out, seed=args.graph_seed,
                                 row=args.graph_round - 1, cache=cache)
        if fig is not None:
            print(f"wrote {fig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
