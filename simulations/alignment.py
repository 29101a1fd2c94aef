"""Does the client graph reflect how different the clients' data are? A simulation-side check.

    python -m simulations.alignment RESULTS_DIR [--clients N] [--out FILE.md] [--plot FILE.png]

Diffusion client selection builds its client graph from the distance
q(z, y) = mean over recorded FL rounds t of ||m_t(z) - m_t(y)|| between clients' normalised
pseudo-parameter updates m_t. The diffusion-FAL paper (Figure 2) validates q by correlating it with
the distance between the clients' true class distributions (Pearson 0.82). Runs with diffusion
client selection write ``q.npz`` next to ``rounds.jsonl``: for every AL round r whose selection
used the graph, ``q_r{r}`` (float32 (n, n), symmetric, zero diagonal) and ``clients_r{r}``
(int64 (n,), the partition ids of the graph's clients in matrix order; clients without unlabeled
data are left out of the graph, so n can shrink).

The server never sees a client's class histogram; the simulator rebuilds it (the partition is
deterministic under the run's seed). Here h_z is the class histogram of client z's *whole* local
data (labeled and unlabeled alike): the graph is meant to describe the clients' data
distributions, and the whole partition is the fixed quantity the paper's class distribution
refers to (the labeled part changes with every acquisition).

The statistic, per AL round:

- *alignment*: for each client z in the graph, the Pearson correlation over the other graph
  clients y != z between q[z, y] and Hellinger(h_z, h_y); the mean over z of those correlations.
  A z whose row is constant in either quantity (no correlation defined) is skipped; nan when no z
  is left;
- *pooled*: one Pearson correlation over all pairs z < y of the graph.

1 means the graph orders every client's neighbours exactly as their class mixes differ (up to a
linear map), 0 that it knows nothing about them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from fedal.results import CONFIG_FILE, Q_FILE

DEFAULT_CLIENTS = 100  # simulations.engine's default number of simulated clients

_Q_KEY = re.compile(r"q_r(\d+)")


# --------------------------------------------------------------------------------------------
# Statistics (pure)
# --------------------------------------------------------------------------------------------


def hellinger_matrix(hist) -> np.ndarray:
    """Pairwise Hellinger distances between the class distributions of ``hist``'s rows.

    ``hist``: (M, C) class counts (or proportions) per client; each row is normalised to a
    distribution p. H(p, q) = (1/sqrt(2)) * ||sqrt(p) - sqrt(q)||_2 = sqrt(1 - sum_i sqrt(p_i q_i)),
    so H lies in [0, 1]: 0 for identical class mixes, 1 for clients sharing no class.
    Returns (M, M), symmetric, zero diagonal. A row without data has no distribution: ValueError.
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2:
        raise ValueError(f"hist must be (clients, classes), got shape {hist.shape}")
    if np.any(hist < 0):
        raise ValueError("hist has negative counts")
    sizes = hist.sum(1)
    if np.any(sizes == 0):
        raise ValueError(f"client(s) {np.flatnonzero(sizes == 0).tolist()} hold no data: no class distribution")
    if len(hist) == 0:
        return np.zeros((0, 0))
    root = np.sqrt(hist / sizes[:, None])
    # the norm form, row by row: exactly 0 for identical mixes (sqrt(1 - BC) would turn BC's
    # rounding error into ~1e-8), and memory linear in M
    h = np.stack([np.linalg.norm(root - r, axis=1) for r in root]) / math.sqrt(2.0)
    h = np.minimum(np.maximum(h, h.T), 1.0)  # exactly symmetric, rounding kept inside [0, 1]
    np.fill_diagonal(h, 0.0)
    return h


def _constant(x: np.ndarray) -> bool:
    """Constant up to rounding (relative to the values' magnitude)."""
    return x.size == 0 or float(np.ptp(x)) <= 1e-9 * max(1.0, float(np.abs(x).max()))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant (no correlation defined)."""
    if a.size < 2 or _constant(a) or _constant(b):
        return math.nan
    a = a - a.mean()
    b = b - b.mean()
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def _graph_distances(q, clients, hist) -> tuple[np.ndarray, np.ndarray]:
    """(q, Hellinger) as two (n, n) float64 matrices over the graph's clients, validated."""
    q = np.asarray(q, dtype=np.float64)
    clients = np.asarray(clients)
    hist = np.asarray(hist)
    n = clients.shape[0] if clients.ndim == 1 else -1
    if clients.ndim != 1 or q.shape != (n, n):
        raise ValueError(f"q must be (n, n) for the n = {clients.size} graph clients, got q {q.shape}, clients {clients.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("q has non-finite entries")
    if clients.size and (clients.min() < 0 or clients.max() >= len(hist)):
        raise ValueError(f"client ids {clients.min()}..{clients.max()} outside the {len(hist)} histograms")
    if len(np.unique(clients)) != clients.size:
        raise ValueError("a client appears twice in the graph")
    return q, hellinger_matrix(hist[clients.astype(np.int64)])


def alignment(q, clients, hist) -> float:
    """Mean over graph clients z of Pearson_y!=z(q[z, y], Hellinger(h_z, h_y)).

    ``q``: (n, n) distances among the graph's clients; ``clients``: (n,) their partition ids, in
    q's order; ``hist``: (M, C) class counts of all M clients' local data (row = partition id).
    A z whose row is constant in q or in Hellinger is skipped; nan when none is left.
    """
    q, h = _graph_distances(q, clients, hist)
    n = len(q)
    rs = []
    for z in range(n):
        others = np.arange(n) != z
        r = _pearson(q[z, others], h[z, others])
        if not math.isnan(r):
            rs.append(r)
    return float(np.mean(rs)) if rs else math.nan


def pooled_alignment(q, clients, hist) -> float:
    """One Pearson correlation between q and Hellinger over all pairs z < y of the graph (nan
    when either is constant over the pairs, or with fewer than 2 pairs)."""
    q, h = _graph_distances(q, clients, hist)
    iu = np.triu_indices(len(q), k=1)
    return _pearson(q[iu], h[iu])


class RoundAlignment(NamedTuple):
    round: int  # the AL round whose client selection the graph served
    alignment: float  # mean over graph clients of the per-client Pearson
    pooled: float  # Pearson over all pairs
    nodes: int  # clients in the graph


def read_q(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``q.npz`` as {round: (q, clients)}, rounds in increasing order."""
    path = Path(path)
    with np.load(path) as z:
        keys = set(z.files)
        out = {}
        for k in keys:
            m = _Q_KEY.fullmatch(k)
            if m is None:
                continue
            c = f"clients_r{m.group(1)}"
            if c not in keys:
                raise ValueError(f"{path}: {k} has no {c}")
            out[int(m.group(1))] = (z[k], z[c])
    return dict(sorted(out.items()))


def run_alignment(run_dir: str | Path, hist) -> list[RoundAlignment]:
    """(round, alignment, pooled, nodes) for every AL round recorded in ``run_dir/q.npz``;
    ``hist``: (M, C) class counts of the run's clients (row = partition id)."""
    path = Path(run_dir) / Q_FILE
    rows = []
    for r, (q, clients) in read_q(path).items():
        try:
            rows.append(RoundAlignment(r, alignment(q, clients, hist), pooled_alignment(q, clients, hist), int(len(clients))))
        except ValueError as e:
            raise ValueError(f"{path}, round {r}: {e}") from None
    return rows


# --------------------------------------------------------------------------------------------
# Over runs
# --------------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1, nan below 2), n) over the finite values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


@dataclass(frozen=True)
class AlignmentCell:
    """One group at one AL round: a value per run (seed)."""

    seeds: tuple[int, ...]
    alignment: tuple[float, ...]
    pooled: tuple[float, ...]
    nodes: tuple[int, ...]

    @property
    def mean(self) -> float:
        return _stats(self.alignment)[0]

    @property
    def std(self) -> float:
        return _stats(self.alignment)[1]

    @property
    def pooled_mean(self) -> float:
        return _stats(self.pooled)[0]

    @property
    def pooled_std(self) -> float:
        return _stats(self.pooled)[1]


AlignmentTable = dict[str, dict[int, AlignmentCell]]  # group -> AL round -> cell


def has_q(run) -> bool:
    return (Path(run.path) / Q_FILE).is_file()


def recorded_clients(run, default: int = DEFAULT_CLIENTS) -> int:
    """The number of simulated clients of a run: ``--clients N`` of the command line recorded in
    its config.json (``argv``), else ``default``."""
    try:
        argv = json.loads((Path(run.path) / CONFIG_FILE).read_text()).get("argv") or []
    except (OSError, ValueError, AttributeError):
        return default
    for i, a in enumerate(argv):
        try:
            if a == "--clients" and i + 1 < len(argv):
                return int(argv[i + 1])
            if isinstance(a, str) and a.startswith("--clients="):
                return int(a.split("=", 1)[1])
        except ValueError:
            return default
    return default


def alignment_table(
    runs: Iterable,
    group_by: str = "method",
    num_clients: int | None = None,
    cache: dict[str, np.ndarray] | None = None,
) -> AlignmentTable:
    """Per group and AL round, each run's alignment; runs without q.npz are left out.

    num_clients None: each run's recorded ``--clients`` (else 100). Class histograms are rebuilt
    once per partition (dataset, partition, alpha, shard fraction, seed, clients) and kept in
    ``cache``, shared by all methods.
    """
    from simulations.picked_clients import DATA_KEYS, client_histograms

    cache = {} if cache is None else cache
    acc: dict[str, dict[int, list[tuple[int, RoundAlignment]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if not has_q(run):
            continue
        m = recorded_clients(run) if num_clients is None else num_clients
        rc = {k: v for k, v in run.config.items() if k in DATA_KEYS}
        key = json.dumps([rc, m], sort_keys=True)
        if key not in cache:
            cache[key] = client_histograms(rc, m)
        for ra in run_alignment(run.path, cache[key]):
            acc[run.group(group_by)][ra.round].append((run.seed, ra))
    return {
        g: {
            r: AlignmentCell(tuple(s for s, _ in rows), tuple(a.alignment for _, a in rows),
                             tuple(a.pooled for _, a in rows), tuple(a.nodes for _, a in rows))
            for r, rows in sorted(per.items())
        }
        for g, per in acc.items()
    }


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _f(mean: float, std: float = math.nan) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "---") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([align] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


EXPLANATION = (
    "Alignment = for each client z in the client graph, Pearson's correlation over the other graph "
    "clients y between the graph distance q(z, y) (mean distance of normalised pseudo-parameter "
    "updates, `q.npz`) and the Hellinger distance between the class histograms of z's and y's whole "
    "local data; mean over z (clients whose row is constant are skipped). Pooled = one Pearson "
    "correlation over all client pairs. 1 = the graph ranks clients exactly as their class mixes "
    "differ; 0 = unrelated (the diffusion-FAL paper's Figure 2 reports 0.82)."
)


def method_markdown(table: AlignmentTable, groups: Sequence[str] | None = None) -> str:
    """One table per group: rows AL round; mean ± sample std over seeds of alignment and pooled."""
    out = []
    for g in groups if groups is not None else sorted(table):
        if g not in table:
            continue
        out += [f"### {g}", ""]
        rows = [[r, len(c.seeds), f"{np.mean(c.nodes):.1f}", _f(c.mean, c.std), _f(c.pooled_mean, c.pooled_std)]
                for r, c in table[g].items()]
        out += [_md_table(["AL round", "runs", "clients in graph (mean)", "alignment", "pooled"], rows), ""]
    return "\n".join(out).rstrip()


def report_markdown(table: AlignmentTable, groups: Sequence[str], group_by: str = "method") -> list[str]:
    """Lines of the reports' "Client-geometry alignment" section (image alignment.png)."""
    rounds = sorted({r for cells in table.values() for r in cells})
    gs = [g for g in groups if g in table] + sorted(set(table) - set(groups))
    md = ["## Client-geometry alignment", "", "![Alignment of the client graph with class distributions](alignment.png)", ""]
    md += [EXPLANATION + " Columns are AL rounds; mean ± sample std (ddof=1) over seeds.", ""]
    md += [_md_table([group_by, *map(str, rounds)],
                     [[g] + [_f(table[g][r].mean, table[g][r].std) if r in table[g] else "—" for r in rounds] for g in gs]), ""]
    md += ["Pooled Pearson correlation over all client pairs (mean over seeds):", ""]
    md += [_md_table([group_by, *map(str, rounds)],
                     [[g] + [_f(table[g][r].pooled_mean) if r in table[g] else "—" for r in rounds] for g in gs]), ""]
    return md


def table_json(table: AlignmentTable) -> dict:
    return {
        g: {r: {"seeds": c.seeds, "alignment": c.alignment, "pooled": c.pooled, "nodes": c.nodes,
                "mean": c.mean, "std": c.std, "pooled_mean": c.pooled_mean} for r, c in cells.items()}
        for g, cells in table.items()
    }


def plot_alignment(table: AlignmentTable, path: str | Path, colors: Mapping[str, object] | None = None,
                   title: str = "") -> Path:
    """Alignment (mean, ±1 std band over seeds) vs AL round, one line per group."""
    from simulations.reports.plots import _RC, _pyplot, group_colors

    plt = _pyplot()
    groups = sorted(table)
    colors = dict(colors or {})
    missing = [g for g in groups if g not in colors]
    colors.update(group_colors(missing, None) if missing else {})
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 5))
        for g in groups:
            x = np.array(sorted(table[g]))
            m = np.array([table[g][r].mean for r in x])
            s = np.nan_to_num(np.array([table[g][r].std for r in x]))
            ax.plot(x, m, marker="o", ms=4, lw=2, color=colors[g], label=g)
            ax.fill_between(x, m - s, m + s, color=colors[g], alpha=0.15, lw=0)
        ax.axhline(0.0, color="0.5", lw=1, ls=":")
        ax.set_ylim(-1.05, 1.05)  # a correlation
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("AL round")
        ax.set_ylabel("Alignment (Pearson, q vs Hellinger)")
        ax.set_title(title or "Client graph vs class distributions (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    from simulations.reports.load import ReportError, load_runs

    ap = argparse.ArgumentParser(prog="python -m simulations.alignment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a suite's results directory")
    ap.add_argument("--clients", type=int, default=None,
                    help=f"number of clients of the suite (default: each run's recorded --clients, else {DEFAULT_CLIENTS})")
    ap.add_argument("--out", help="write the Markdown tables here as well")
    ap.add_argument("--plot", help="write a PNG of alignment vs AL round here")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.root)  # completed runs only
    except ReportError as e:
        raise SystemExit(f"error: {e}") from None
    runs = [r for r in runs if has_q(r)]
    if not runs:
        raise SystemExit(f"error: no completed run under {args.root} has {Q_FILE} "
                         "(only runs with diffusion client selection write it)")
    try:
        table = alignment_table(runs, "method", args.clients)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    text = "\n".join(["## Client-geometry alignment", "", EXPLANATION + " Mean ± sample std (ddof=1) over seeds.", "",
                      method_markdown(table)])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        plot_alignment(table, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
