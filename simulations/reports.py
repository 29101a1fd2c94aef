"""Reports over finished experiment results: tables, significance tests and plots.

Everything here reads results *files* written by the experiment runner (never a live run), so a
report can be regenerated at any time from a results root:

    .venv/bin/python -m simulations.reports RESULTS_ROOT --out OUT_DIR [--baseline Rand]
        [--group-by method] [--title ...] [--alpha 0.05] [--filter dataset=cifar10 ...]
        [--speedup-baseline retrain] [--timing]

Results schema (one run directory per (config, seed), at any depth below the root):
  config.json   {"method", "suite", "seed", "config_hash", "config": {kebab-case keys}}
  rounds.jsonl  one row per AL round r = 0..R: {"round", "labels", "accuracy", "chosen_clients",
                "acquired", "acquired_per_class", "labeled_per_class", "time_s": {...}}
  summary.json  {"completed": true, ...}; absent while the run is unfinished.
  q.npz         optional (diffusion client selection): the client graph's distances per AL round;
                adds a "Client-geometry alignment" section and alignment.png (simulations/alignment.py).

What is computed, and the paper it mirrors:
  * accuracy per group x label budget (mean +- sample std over seeds) and the improvement over a
    baseline group (Figure 3 of the diffusion-FAL paper: "mean accuracy improvement ... from
    random selection", shaded +- std);
  * significance counts vs the baseline (its Table 1): at how many budgets a group is
    significantly better / worse under Student's two-sample t-test over seeds (equal variances,
    two-sided, alpha = 0.05; the paper's "alpha = 0.95" is the confidence level). A paired
    t-test is added as a separate, clearly labelled column when seeds pair up;
  * the class-imbalance ratio of the labeled set (BASE paper: labels of the most sampled class /
    labels of the least sampled class), inf when some class has no label;
  * cumulative training time per budget and the speedup over a reference group (for the
    continual-training modes, grouped by `training-mode`).

Statistics are pure functions over `Run` objects (the tests use them on synthetic runs);
`write_report` renders them into OUT_DIR (summary.md, accuracy.png, imbalance.png, report.json).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

# Files that make a directory a run directory.
CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"

ROUND_REQUIRED = ("round", "labels", "accuracy")
CONFIG_REQUIRED = ("method", "seed")
# Run-level attributes that `--group-by` can name besides the kebab-case run-config keys.
TOP_LEVEL_KEYS = ("method", "suite", "seed", "config_hash")

# Sample standard deviation (ddof=1) everywhere: the same variance estimate the t-test uses, and
# the unbiased choice for the handful of seeds (5-10) these experiments have.
DDOF = 1


class ReportError(Exception):
    """A results root that cannot be reported on; the message says which file and why."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    round: int
    labels: int
    accuracy: float
    acquired: int = 0
    chosen_clients: tuple[int, ...] = ()
    acquired_per_class: tuple[int, ...] | None = None
    labeled_per_class: tuple[int, ...] | None = None
    time_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    path: Path
    method: str
    suite: str
    seed: int
    config_hash: str
    config: Mapping[str, object]
    rounds: tuple[Round, ...]
    summary: Mapping[str, object]

    def group(self, key: str) -> str:
        """The value of `key` for this run, as a group label: a top-level field or a config key."""
        if key in TOP_LEVEL_KEYS:
            return str(getattr(self, key))
        if key in self.config:
            return _fmt_value(self.config[key])
        raise ReportError(
            f"cannot group by {key!r}: run {self.path} has no such field; "
            f"available: {', '.join(TOP_LEVEL_KEYS)}, or config keys {', '.join(sorted(self.config))}"
        )


@dataclass(frozen=True)
class SkippedRun:
    path: Path
    method: str | None  # from config.json when readable, to say which group lost a seed


@dataclass(frozen=True)
class Results:
    root: Path
    runs: list[Run]
    skipped: list[SkippedRun]


def _fmt_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _opt_ints(row: dict, key: str) -> tuple[int, ...] | None:
    v = row.get(key)
    return None if v is None else tuple(int(x) for x in v)


def read_rounds(path: Path) -> tuple[Round, ...]:
    """Parse rounds.jsonl; a bad line raises ReportError naming the file and the line number."""
    rounds = []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f"{where}: corrupted JSON line ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise ReportError(f"{where}: expected a JSON object per line")
            missing = [k for k in ROUND_REQUIRED if k not in row]
            if missing:
                raise ReportError(f"{where}: missing field(s) {', '.join(missing)}")
            try:
                acc = float(row["accuracy"])
                rounds.append(
                    Round(
                        round=int(row["round"]),
                        labels=int(row["labels"]),
                        accuracy=acc,
                        acquired=int(row.get("acquired", 0)),
                        chosen_clients=tuple(int(c) for c in row.get("chosen_clients", ())),
                        acquired_per_class=_opt_ints(row, "acquired_per_class"),
                        labeled_per_class=_opt_ints(row, "labeled_per_class"),
                        time_s={k: float(v) for k, v in (row.get("time_s") or {}).items()},
                    )
                )
            except (TypeError, ValueError) as e:
                raise ReportError(f"{where}: bad value: {e}") from e
            if not 0.0 <= acc <= 1.0:
                raise ReportError(f"{where}: accuracy {acc} outside [0, 1]")
    if not rounds:
        raise ReportError(f"{path}: no rounds")
    idx = [r.round for r in rounds]
    if idx != list(range(len(rounds))):
        raise ReportError(f"{path}: rounds must be numbered 0..R in order, got {idx}")
    return tuple(rounds)


def _is_run_dir(d: Path) -> bool:
    return any((d / f).is_file() for f in (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE))


def load_results(root: str | Path) -> Results:
    """All run directories below `root`: completed runs parsed, incomplete ones listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"results root {root} does not exist or is not a directory")
    dirs = sorted({p.parent for name in (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE) for p in root.rglob(name)})
    dirs = [d for d in dirs if _is_run_dir(d)]
    if not dirs:
        raise ReportError(
            f"results root {root} contains no run directories (none has {CONFIG_FILE}, {ROUNDS_FILE} or {SUMMARY_FILE})"
        )
    runs, skipped = [], []
    for d in dirs:
        summary_path = d / SUMMARY_FILE
        summary = _read_json(summary_path) if summary_path.is_file() else None
        if not summary or summary.get("completed") is not True:
            # Unfinished (or crashed) run: its last line may be half-written, so it is not parsed;
            # only its method is read, best effort, to say which group is missing a seed.
            method = None
            try:
                method = str(json.loads((d / CONFIG_FILE).read_text()).get("method"))
            except (OSError, ValueError, AttributeError):
                pass
            skipped.append(SkippedRun(d, method))
            continue
        if not (d / CONFIG_FILE).is_file() or not (d / ROUNDS_FILE).is_file():
            raise ReportError(f"run {d} is marked completed but lacks {CONFIG_FILE} or {ROUNDS_FILE}")
        cfg = _read_json(d / CONFIG_FILE)
        missing = [k for k in CONFIG_REQUIRED if k not in cfg]
        if missing:
            raise ReportError(f"{d / CONFIG_FILE}: missing field(s) {', '.join(missing)}")
        runs.append(
            Run(
                path=d,
                method=str(cfg["method"]),
                suite=str(cfg.get("suite", "")),
                seed=int(cfg["seed"]),
                config_hash=str(cfg.get("config_hash", "")),
                config=dict(cfg.get("config") or {}),
                rounds=read_rounds(d / ROUNDS_FILE),
                summary=summary,
            )
        )
    return Results(root=root, runs=runs, skipped=skipped)


def load_runs(root: str | Path) -> list[Run]:
    """Completed runs below `root` (incomplete ones are skipped; see `load_results`)."""
    return load_results(root).runs


def filter_runs(runs: Iterable[Run], filters: Mapping[str, str] | None) -> list[Run]:
    """Runs whose group value for every key equals the given string (e.g. dataset=cifar10)."""
    runs = list(runs)
    if not filters:
        return runs
    return [r for r in runs if all(r.group(k) == v for k, v in filters.items())]


def group_runs(runs: Iterable[Run], group_by: str = "method") -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.group(group_by)].append(r)
    return dict(groups)


def _ordered_groups(groups: Iterable[str], baseline: str | None) -> list[str]:
    """Baseline first, then the others alphabetically: a stable order (and colour) per group."""
    gs = sorted(set(groups))
    if baseline in gs:
        gs.remove(baseline)
        gs.insert(0, baseline)
    return gs


def require_group(groups: Iterable[str], name: str, what: str, group_by: str) -> None:
    groups = sorted(set(groups))
    if name not in groups:
        raise ReportError(
            f"{what} {name!r} not found among the {group_by} groups present: {', '.join(groups) or '(none)'}"
        )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One group at one label budget: a value per run (seed)."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=DDOF)) if self.n > DDOF else math.nan


Table = dict[str, dict[int, Cell]]  # group -> budget (labels) -> cell


def _table(runs: Iterable[Run], group_by: str, rows_of) -> Table:
    acc: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        g = run.group(group_by)
        for budget, value in rows_of(run).items():
            acc[g][budget].append((run.seed, value))
    return {
        g: {
            b: Cell(tuple(s for s, _ in pairs), tuple(v for _, v in pairs))
            for b, pairs in sorted(cells.items())
        }
        for g, cells in acc.items()
    }


def accuracy_table(runs: Iterable[Run], group_by: str = "method", from_round: int = 0) -> Table:
    """Test accuracy of the model trained on `labels` labels, per group and budget.

    from_round=1 drops round 0, the budget of the initial random labels that precede any active
    selection (the paper's Table 1 counts at most 11 of its 12 budgets, i.e. the AL rounds only).
    """
    return _table(runs, group_by, lambda run: {r.labels: r.accuracy for r in run.rounds[from_round:]})


def budgets(table: Table) -> list[int]:
    return sorted({b for cells in table.values() for b in cells})


def _pairs_up(a: Cell, b: Cell) -> bool:
    """Seeds pair up when both cells hold exactly the same seeds, each once."""
    return len(set(a.seeds)) == a.n and len(set(b.seeds)) == b.n and set(a.seeds) == set(b.seeds)


def _paired_diffs(a: Cell, b: Cell) -> np.ndarray:
    bv = dict(zip(b.seeds, b.values))
    return np.array([v - bv[s] for s, v in zip(a.seeds, a.values)])


@dataclass(frozen=True)
class Improvement:
    """Mean accuracy of a group minus the baseline's at one budget, with its spread.

    paired: std is the sample std over seeds of the per-seed difference (seeds pair up).
    unpaired: std is sqrt(s_group^2 + s_baseline^2), the std of a single-seed difference when
    the two groups' seeds are independent draws (same scale as the paired case).
    """

    mean: float
    std: float
    n: int
    paired: bool


def improvement_over(table: Table, baseline: str) -> dict[str, dict[int, Improvement]]:
    base = table[baseline]
    out: dict[str, dict[int, Improvement]] = {}
    for g, cells in table.items():
        out[g] = {}
        for b, cell in cells.items():
            if b not in base:
                continue
            ref = base[b]
            if _pairs_up(cell, ref):
                d = _paired_diffs(cell, ref)
                std = float(np.std(d, ddof=DDOF)) if d.size > DDOF else math.nan
                out[g][b] = Improvement(float(d.mean()), std, int(d.size), True)
            else:
                std = math.sqrt(cell.std**2 + ref.std**2)
                out[g][b] = Improvement(cell.mean - ref.mean, std, min(cell.n, ref.n), False)
    return out


def improvement(runs: Iterable[Run], baseline: str = "Rand", group_by: str = "method"):
    table = accuracy_table(runs, group_by)
    require_group(table, baseline, "baseline", group_by)
    return improvement_over(table, baseline)


@dataclass(frozen=True)
class Comparison:
    """A group vs the baseline at one budget.

    verdict: "better" / "worse" (significant at alpha, direction by the mean difference), "tie"
    (not significant) or "n/a" (either side has < 2 seeds: no test possible, not a tie).
    paired_*: the same with the paired t-test, only when seeds pair up (else None).
    """

    n: int
    n_baseline: int
    diff: float
    t: float
    p: float
    verdict: str
    paired_p: float | None = None
    paired_verdict: str | None = None


def _verdict(p: float, diff: float, alpha: float) -> str:
    # nan p: both sides constant and equal -> no evidence of a difference.
    if not math.isnan(p) and p < alpha:
        return "better" if diff > 0 else "worse"
    return "tie"


def _ttest(fn, *args):
    from scipy import stats

    with warnings.catch_warnings():
        # Near-constant accuracies trigger scipy's precision-loss warning; the result is still
        # the right call (huge |t| or nan handled in _verdict).
        warnings.simplefilter("ignore", RuntimeWarning)
        res = getattr(stats, fn)(*args)
    return float(res.statistic), float(res.pvalue)


def compare_cells(cell: Cell | None, ref: Cell | None, alpha: float = 0.05) -> Comparison:
    n = cell.n if cell else 0
    nb = ref.n if ref else 0
    if n < 2 or nb < 2:
        diff = cell.mean - ref.mean if cell and ref else math.nan
        return Comparison(n, nb, diff, math.nan, math.nan, "n/a")
    diff = cell.mean - ref.mean
    # Student's two-sample t-test, equal variances (the paper's Table 1 test).
    t, p = _ttest("ttest_ind", np.array(cell.values), np.array(ref.values))
    verdict = _verdict(p, diff, alpha)
    pp = pv = None
    if _pairs_up(cell, ref):
        bv = dict(zip(ref.seeds, ref.values))
        _, pp = _ttest("ttest_rel", np.array(cell.values), np.array([bv[s] for s in cell.seeds]))
        pv = _verdict(pp, diff, alpha)
    return Comparison(n, nb, diff, t, p, verdict, pp, pv)


def significance_table(table: Table, baseline: str, alpha: float = 0.05) -> dict[str, dict[int, Comparison]]:
    """Per group (other than the baseline) and budget present in either: the t-test verdict."""
    base = table[baseline]
    out = {}
    for g, cells in table.items():
        if g == baseline:
            continue
        bs = sorted(set(cells) | set(base))
        out[g] = {b: compare_cells(cells.get(b), base.get(b), alpha) for b in bs}
    return out


@dataclass(frozen=True)
class SignificanceCounts:
    better: int
    worse: int
    ties: int
    na: int  # budgets where a test was impossible (< 2 seeds on either side)
    paired_better: int
    paired_worse: int
    paired_tested: int  # budgets where seeds paired up and the paired test ran

    @property
    def tested(self) -> int:
        return self.better + self.worse + self.ties


def count_significance(comparisons: Mapping[int, Comparison]) -> SignificanceCounts:
    vs = [c.verdict for c in comparisons.values()]
    pvs = [c.paired_verdict for c in comparisons.values() if c.paired_verdict is not None]
    return SignificanceCounts(
        better=vs.count("better"),
        worse=vs.count("worse"),
        ties=vs.count("tie"),
        na=vs.count("n/a"),
        paired_better=pvs.count("better"),
        paired_worse=pvs.count("worse"),
        paired_tested=len(pvs),
    )


def significance_counts(
    runs: Iterable[Run],
    baseline: str = "Rand",
    alpha: float = 0.05,
    group_by: str = "method",
    exclude_initial: bool = False,
) -> dict[str, SignificanceCounts]:
    """Table 1: for each group vs the baseline, at how many budgets it is better / worse."""
    table = accuracy_table(runs, group_by, from_round=1 if exclude_initial else 0)
    require_group(table, baseline, "baseline", group_by)
    return {g: count_significance(c) for g, c in significance_table(table, baseline, alpha).items()}


def imbalance_ratio(labeled_per_class: Sequence[int]) -> tuple[float, int]:
    """(labels of the most labeled class / labels of the least labeled class, #classes with 0).

    The ratio is inf when some class has no label at all (BASE paper's class-imbalance ratio).
    """
    counts = np.asarray(labeled_per_class)
    if counts.size == 0:
        raise ValueError("labeled_per_class is empty")
    zeros = int(np.sum(counts == 0))
    lo, hi = counts.min(), counts.max()
    if hi == 0:
        return math.nan, zeros  # nothing labeled yet: no ratio
    return (math.inf if lo == 0 else float(hi / lo)), zeros


@dataclass(frozen=True)
class ImbalanceCell:
    seeds: tuple[int, ...]
    ratios: tuple[float, ...]
    zero_classes: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.ratios)

    @property
    def mean(self) -> float:
        # One seed with an unlabeled class makes the mean inf: that is the honest summary.
        return float(np.mean(self.ratios))

    @property
    def std(self) -> float:
        r = np.array(self.ratios)
        if self.n <= DDOF or not np.all(np.isfinite(r)):
            return math.nan
        return float(np.std(r, ddof=DDOF))

    @property
    def mean_zero_classes(self) -> float:
        return float(np.mean(self.zero_classes))


def imbalance_ratios(runs: Iterable[Run], group_by: str = "method") -> dict[str, dict[int, ImbalanceCell]]:
    """Imbalance ratio of the cumulative labeled set, per group and labeled-set size.

    Keyed by sum(labeled_per_class), the size of the labeled set the row describes (after that
    round's acquisition). The last round acquires nothing, so its row repeats the previous one;
    the later row wins. Runs without labeled_per_class contribute nothing.
    """
    acc: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        per_size = {}
        for r in run.rounds:
            if r.labeled_per_class is None:
                continue
            ratio, zeros = imbalance_ratio(r.labeled_per_class)
            per_size[int(sum(r.labeled_per_class))] = (ratio, zeros)
        for size, (ratio, zeros) in per_size.items():
            acc[run.group(group_by)][size].append((run.seed, ratio, zeros))
    return {
        g: {
            b: ImbalanceCell(tuple(x[0] for x in v), tuple(x[1] for x in v), tuple(x[2] for x in v))
            for b, v in sorted(cells.items())
        }
        for g, cells in acc.items()
    }


def has_train_times(runs: Iterable[Run]) -> bool:
    runs = list(runs)
    return bool(runs) and all("train" in r.time_s for run in runs for r in run.rounds)


def training_times(runs: Iterable[Run], group_by: str = "method") -> Table:
    """Cumulative time_s.train up to (and including) the round that evaluated each budget."""

    def cum(run: Run) -> dict[int, float]:
        total, out = 0.0, {}
        for r in run.rounds:
            total += r.time_s.get("train", math.nan)
            out[r.labels] = total
        return out

    return _table(runs, group_by, cum)


def speedups(times: Table, reference: str) -> dict[str, dict[int, float]]:
    """Mean cumulative training time of `reference` / that of each group, per budget."""
    ref = times[reference]
    out = {}
    for g, cells in times.items():
        out[g] = {}
        for b, cell in cells.items():
            if b in ref:
                out[g][b] = ref[b].mean / cell.mean if cell.mean > 0 else math.inf
    return out


@dataclass(frozen=True)
class MatchedSpeedup:
    """The speedup at matched accuracy (docs/method.md, "Baselines and training modes") for one group (None where the target is never met)."""

    target: float  # the reference group's mean accuracy at its largest budget
    budget: int | None  # first budget whose mean accuracy reaches the target
    time_s: float | None  # mean cumulative training time there
    speedup: float | None  # reference's time to reach the target / this group's


def matched_speedups(acc: Table, times: Table, reference: str) -> dict[str, MatchedSpeedup]:
    """Training time to first reach (in mean accuracy over seeds) the final mean accuracy of
    ``reference``, and the speedup = reference's time to reach it / the group's.

    The per-budget speedup compares equal label counts; this compares equal accuracy, which is
    what docs/method.md, "Baselines and training modes" calls the speedup. The reference reaches its own target at the latest at its
    last budget (earlier if its curve is not monotone)."""

    def first(g: str, target: float) -> tuple[int | None, float | None]:
        for b in sorted(acc[g]):
            if acc[g][b].mean >= target - 1e-12 and b in times[g]:
                return b, times[g][b].mean
        return None, None

    target = acc[reference][max(acc[reference])].mean
    _, ref_time = first(reference, target)
    out = {}
    for g in acc:
        b, t = first(g, target)
        sp = None if t is None or ref_time is None else (ref_time / t if t > 0 else math.inf)
        out[g] = MatchedSpeedup(target, b, t, sp)
    return out


def phase_totals(runs: Iterable[Run], group_by: str = "method") -> dict[str, dict[str, float]]:
    """Mean over runs of the total time per phase (train, evaluate, probe, select, acquire)."""
    per: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        tot: dict[str, float] = defaultdict(float)
        for r in run.rounds:
            for k, v in r.time_s.items():
                tot[k] += v
        per[run.group(group_by)].append(tot)
    out = {}
    for g, tots in per.items():
        keys = sorted({k for t in tots for k in t})
        out[g] = {k: float(np.mean([t.get(k, 0.0) for t in tots])) for k in keys}
    return out


# Where a run wrote its files: differs per seed (run-name ends in -s<seed>) and for a run reused
# from another suite, never between experiments.
OUTPUT_KEYS = ("run-dir", "run-name")


def mixed_config_keys(runs: Sequence[Run], group_by: str) -> dict[str, list[str]]:
    """Per group, config keys (other than seeds and the group key) whose values differ.

    Pooling runs of different datasets or partitions into one group silently mixes experiments;
    the report lists such keys so a reader can add --filter.
    """
    out = {}
    for g, rs in group_runs(runs, group_by).items():
        keys = sorted({k for r in rs for k in r.config})
        mixed = [
            k
            for k in keys
            if "seed" not in k and k != group_by and k not in OUTPUT_KEYS
            and len({json.dumps(r.config.get(k), sort_keys=True) for r in rs}) > 1
        ]
        for top in ("suite", "method"):
            if top != group_by and len({getattr(r, top) for r in rs}) > 1:
                mixed.insert(0, top)
        if mixed:
            out[g] = mixed
    return out


def duplicate_seeds(runs: Sequence[Run], group_by: str) -> dict[str, list[int]]:
    out = {}
    for g, rs in group_runs(runs, group_by).items():
        seen, dup = set(), set()
        for r in rs:
            (dup if r.seed in seen else seen).add(r.seed)
        if dup:
            out[g] = sorted(dup)
    return out


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: reports run headless)
# --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def group_colors(groups: Sequence[str], baseline: str | None) -> dict[str, object]:
    """One colour per group, the same in every figure: baseline black, others tab10 in order."""
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    others = [g for g in groups if g != baseline]
    colors: dict[str, object] = {g: palette[i % len(palette)] for i, g in enumerate(others)}
    if baseline in groups:
        colors[baseline] = "black"
    return colors


_RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11}


def plot_accuracy(
    table: Table,
    improvements: Mapping[str, Mapping[int, Improvement]] | None,
    baseline: str | None,
    path: Path,
    title: str = "",
) -> Path:
    """Figure 3 layout: mean accuracy vs #labels (left), improvement over the baseline (right)."""
    plt = _pyplot()
    groups = _ordered_groups(table, baseline)
    colors = group_colors(groups, baseline)
    ncols = 2 if improvements is not None else 1
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.0), squeeze=False)
        ax = axes[0, 0]
        for g in groups:
            cells = table[g]
            x = np.array(sorted(cells))
            m = np.array([cells[b].mean for b in x]) * 100
            s = np.array([cells[b].std for b in x]) * 100
            ax.plot(x, m, marker="o", ms=4, lw=2, color=colors[g], label=g)
            ax.fill_between(x, m - s, m + s, color=colors[g], alpha=0.12, lw=0)
        ax.set_xlabel("Number of labels")
        ax.set_ylabel("Test accuracy (%)")
        ax.set_title("Mean accuracy (±1 std over seeds)")
        ax.grid(alpha=0.3)
        notes = []
        if improvements is not None:
            ax = axes[0, 1]
            ax.axhline(0, color=colors.get(baseline, "black"), lw=1.5, ls="--")
            unpaired = []
            for g in groups:
                if g == baseline:
                    continue
                imp = improvements[g]
                x = np.array(sorted(imp))
                if x.size == 0:
                    continue
                m = np.array([imp[b].mean for b in x]) * 100
                s = np.array([imp[b].std for b in x]) * 100
                ax.plot(x, m, marker="o", ms=4, lw=2, color=colors[g])
                ax.fill_between(x, m - s, m + s, color=colors[g], alpha=0.18, lw=0)
                if not all(imp[b].paired for b in x):
                    unpaired.append(g)
            ax.set_xlabel("Number of labels")
            ax.set_ylabel(f"Improvement over {baseline} (% points)")
            ax.set_title(f"Mean improvement over {baseline}")
            ax.grid(alpha=0.3)
            band = "right-panel bands: ±1 std over seeds of the per-seed difference"
            if unpaired:
                band += f"; unpaired seeds ({', '.join(unpaired)}): ±√(s²_method + s²_{baseline}) instead"
            notes.append(band)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        # Legend and band note below both panels (figure fractions of the 5-inch height), so
        # neither hides a curve.
        note_h = 0.045 if notes else 0.0
        per_row = 3 * ncols  # a single panel is too narrow for six legend entries in a row
        rows = 1 + (len(labels) - 1) // per_row
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_h),
                   ncol=min(len(labels), per_row), frameon=False)
        if notes:
            fig.text(0.5, 0.012, "; ".join(notes), ha="center", va="bottom", fontsize=9.5, color="0.3")
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, note_h + 0.075 * rows, 1, 1))
        fig.savefig(path, dpi=130, bbox_inches="tight")  # long titles and legends stay inside
        plt.close(fig)
    return path


def plot_imbalance(imb: Mapping[str, Mapping[int, ImbalanceCell]], baseline: str | None, path: Path, title: str = ""):
    """Mean class-imbalance ratio vs labeled-set size; inf means are drawn as ▲ on the top edge."""
    plt = _pyplot()
    groups = _ordered_groups(imb, baseline)
    colors = group_colors(groups, baseline)
    finite = [c.mean for cells in imb.values() for c in cells.values() if math.isfinite(c.mean)]
    top = max(finite) if finite else 2.0
    log = bool(finite) and top / max(min(finite), 1.0) > 30
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 5.6))
        y_inf = top * (1.6 if log else 1.08)
        any_inf = False
        for g in groups:
            cells = imb[g]
            x = np.array(sorted(cells))
            m = np.array([cells[b].mean for b in x])
            fin = np.isfinite(m)
            ax.plot(x[fin], m[fin], marker="o", ms=4, lw=2, color=colors[g], label=g)
            if (~fin).any():
                any_inf = True
                ax.plot(x[~fin], np.full((~fin).sum(), y_inf), ls="none", marker="^", ms=8, color=colors[g])
        if log:
            ax.set_yscale("log")
        ax.set_ylim(bottom=0.9 if log else 1.0 if finite else 0, top=y_inf * (1.3 if log else 1.05))
        ax.axhline(1.0, color="0.5", lw=1, ls=":")
        ax.set_xlabel("Number of labels (after the round's acquisition)")
        ax.set_ylabel("Imbalance ratio (most / least labeled class)")
        ax.set_title(title or "Class imbalance of the labeled set (mean over seeds)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        note_h = 0.04 if any_inf else 0.0
        ncol = min(len(labels), 4)
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_h), ncol=ncol, frameon=False)
        if any_inf:
            fig.text(0.5, 0.012, "▲ on the top edge: ratio = ∞ (some class has no label in ≥ 1 seed)",
                     ha="center", va="bottom", fontsize=9.5, color="0.3")
        fig.tight_layout(rect=(0, note_h + 0.065 * (1 + (len(labels) - 1) // ncol), 1, 1))
        fig.savefig(path, dpi=130, bbox_inches="tight")  # long titles and legends stay inside
        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f}"


def _mean_std_pct(mean: float, std: float) -> str:
    return _pct(mean) if math.isnan(std) else f"{_pct(mean)} ± {_pct(std)}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(x: float) -> str:
    if math.isnan(x):
        return "—"
    return "inf" if math.isinf(x) else f"{x:.2f}"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _fmt_secs(s: float) -> str:
    if math.isnan(s):
        return "—"
    return f"{s:.0f} s" if s >= 100 else f"{s:.1f} s" if s >= 1 else f"{s:.3f} s"


def _counts(better: int, worse: int) -> str:
    """Table 1's "better / -worse" cell: "11 / 0", "1 / -5"."""
    return f"{better} / {-worse}"


_SIGN = {"better": "+", "worse": "−", "tie": "·", "n/a": "n/a"}


def _shell_command() -> str:
    """The command line that ran this process, with a `cd` when not run from the repository root
    (relative paths in it are relative to the working directory)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    cmd = shlex.join(argv)
    cwd = Path.cwd()
    if cwd != Path(__file__).resolve().parents[1]:
        cmd = f"cd {shlex.quote(str(cwd))} && {cmd}"
    return cmd


def _alignment_section(runs: Sequence[Run], group_by: str, groups: Sequence[str], baseline: str | None,
                       out: Path, data: dict) -> list[str]:
    """The "Client-geometry alignment" section (and alignment.png, data["alignment"]) when some
    run recorded its client graph distances (q.npz, diffusion client selection); else nothing."""
    from simulations import alignment as A

    if not any(A.has_q(r) for r in runs):
        return []
    try:
        table = A.alignment_table(runs, group_by)
    except ValueError as e:
        raise ReportError(f"client-geometry alignment: {e}") from e
    A.plot_alignment(table, out / "alignment.png", group_colors(groups, baseline))
    data["alignment"] = A.table_json(table)
    return A.report_markdown(table, groups, group_by)


def write_report(
    root: str | Path,
    out: str | Path,
    *,
    baseline: str | None = "Rand",
    group_by: str = "method",
    title: str | None = None,
    alpha: float = 0.05,
    filters: Mapping[str, str] | None = None,
    speedup_baseline: str | None = None,
    timing: bool | None = None,
    exclude_initial: bool = False,
    command: str | None = None,
) -> Path:
    """Write summary.md, accuracy.png, imbalance.png (when labeled_per_class is present) and
    report.json into `out`; returns the path of summary.md.

    baseline None disables the improvement and significance sections. exclude_initial drops
    round 0 from the significance counts only (tables and plots keep it). timing None: the timing
    section is written when every round has time_s.train or a speedup baseline is given.
    """
    results = load_results(root)
    runs = filter_runs(results.runs, filters)
    if not runs:
        what = f" matching {dict(filters)}" if filters else ""
        raise ReportError(
            f"results root {results.root} has no completed runs{what} "
            f"({len(results.runs)} completed, {len(results.skipped)} incomplete skipped)"
        )
    table = accuracy_table(runs, group_by)
    if baseline is not None:
        require_group(table, baseline, "baseline", group_by)
    if speedup_baseline is not None:
        require_group(table, speedup_baseline, "speedup baseline", group_by)
    if timing is None:
        timing = speedup_baseline is not None or has_train_times(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Results: {results.root.name}"
    groups = _ordered_groups(table, baseline)
    bs = budgets(table)
    data: dict[str, object] = {"title": title, "group_by": group_by, "baseline": baseline, "alpha": alpha}

    md = [f"# {title}", ""]
    md += ["Regenerate with:", "", "```", command or _shell_command(), "```", ""]
    # Runs per group, skipped incomplete runs.
    by_group = group_runs(runs, group_by)
    skipped_by: dict[str, int] = defaultdict(int)
    for s in results.skipped:
        skipped_by[s.method or "?"] += 1
    md += ["## Runs", ""]
    if filters:
        md += ["Filter: " + ", ".join(f"`{k}={v}`" for k, v in filters.items()), ""]
    md.append(
        _md_table(
            [group_by, "completed runs", "seeds"],
            [[g, len(by_group[g]), ", ".join(str(s) for s in sorted({r.seed for r in by_group[g]}))] for g in groups],
        )
    )
    md.append("")
    if results.skipped:
        detail = ", ".join(f"{m}: {n}" for m, n in sorted(skipped_by.items()))
        md += [f"Skipped {len(results.skipped)} incomplete run(s) (no completed summary.json) — by method: {detail}.", ""]
    else:
        md += ["Skipped 0 incomplete runs.", ""]
    mixed = mixed_config_keys(runs, group_by)
    for g, keys in mixed.items():
        md.append(f"- Note: group **{g}** pools runs that differ in {', '.join(f'`{k}`' for k in keys)}; "
                  "use `--filter KEY=VALUE` to separate them.")
    for g, seeds in duplicate_seeds(runs, group_by).items():
        md.append(f"- Note: group **{g}** has several runs with seed(s) {seeds}; all are used as samples, "
                  "and its seeds are treated as unpaired.")
    if mixed or duplicate_seeds(runs, group_by):
        md.append("")

    # Accuracy.
    imps = improvement_over(table, baseline) if baseline is not None else None
    plot_accuracy(table, imps, baseline, out / "accuracy.png", title)
    md += ["## Accuracy", "", "![Accuracy and improvement over the baseline](accuracy.png)", ""]
    md += [
        f"Test accuracy (%) by number of labels: mean ± sample std (ddof=1) over seeds; best mean per budget "
        f"in **bold**; (n=k) marks a cell with fewer runs than its group.",
        "",
    ]
    best = {b: max((table[g][b].mean for g in groups if b in table[g]), default=math.nan) for b in bs}
    rows = []
    for g in groups:
        row = [g]
        for b in bs:
            c = table[g].get(b)
            if c is None:
                row.append("—")
                continue
            s = _mean_std_pct(c.mean, c.std)
            if c.mean == best[b]:
                s = f"**{s}**"
            if c.n < len(by_group[g]):
                s += f" (n={c.n})"
            row.append(s)
        rows.append(row)
    md += [_md_table([group_by, *map(str, bs)], rows), ""]
    data["accuracy"] = {g: {b: asdict(c) | {"mean": c.mean, "std": c.std} for b, c in cells.items()} for g, cells in table.items()}

    if baseline is not None:
        md += [f"### Improvement over {baseline} (% points)", ""]
        md += [
            "Mean of (group − baseline) accuracy. ± is the sample std over seeds of the per-seed difference "
            "where seeds pair up (same seeds in both groups); cells marked † have unpaired seeds and show "
            "√(s²_group + s²_baseline) instead.",
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline:
                continue
            row = [g]
            for b in bs:
                i = imps[g].get(b)
                row.append("—" if i is None else _mean_std_pct(i.mean, i.std) + ("" if i.paired else " †"))
            rows.append(row)
        md += [_md_table([group_by, *map(str, bs)], rows), ""]
        data["improvement"] = {g: {b: asdict(i) for b, i in v.items()} for g, v in imps.items()}

        # Significance (Table 1).
        sig_table = accuracy_table(runs, group_by, from_round=1) if exclude_initial else table
        # A group with nothing beyond round 0 simply has no row (the baseline too: empty table).
        sig = significance_table(sig_table, baseline, alpha) if baseline in sig_table else {}
        counts = {g: count_significance(c) for g, c in sig.items()}
        md += [f"## Significance vs {baseline}", ""]
        md += [
            f"Number of label budgets at which each {group_by} is significantly **better** (+) / **worse** (−) "
            f"than {baseline}: Student's two-sample t-test over seeds (`scipy.stats.ttest_ind`, equal variances, "
            f"two-sided, α = {alpha:g}; direction from the mean difference) — the test of the paper's Table 1. "
            f"Budgets where either side has fewer than 2 seeds are counted as n/a, not as ties. "
            f"The last column is an extra paired t-test (`scipy.stats.ttest_rel`), run only at budgets where "
            f"the seeds pair up. "
            + ("The initial budget (round 0, random labels before any selection) is excluded."
               if exclude_initial else "Every budget counts, including round 0 (the initial random labels)."),
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline or g not in sig:
                continue
            c = counts[g]
            paired = f"{_counts(c.paired_better, c.paired_worse)} (of {c.paired_tested})" if c.paired_tested else "seeds not paired"
            rows.append([g, _counts(c.better, c.worse), c.ties, c.na, c.tested + c.na, paired])
        md += [
            _md_table(
                [group_by, "Student t: better / worse", "ties", "n/a", "budgets", "paired t (ttest_rel): better / worse"],
                rows,
            ),
            "",
        ]
        md += [
            f"Per budget (Student's t-test): + better, − worse, · not significant, n/a untestable; p-value in brackets.",
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline or g not in sig:
                continue
            rows.append([g] + [
                "—" if b not in sig[g] else
                (_SIGN[sig[g][b].verdict] + ("" if sig[g][b].verdict == "n/a" else f" ({_p(sig[g][b].p)})"))
                for b in budgets(sig_table)
            ])
        md += [_md_table([group_by, *map(str, budgets(sig_table))], rows), ""]
        data["significance"] = {
            g: {"counts": asdict(counts[g]), "per_budget": {b: asdict(c) for b, c in sig[g].items()}} for g in sig
        }

    # Class imbalance.
    imb = imbalance_ratios(runs, group_by)
    if imb:
        plot_imbalance(imb, baseline, out / "imbalance.png", f"Class imbalance of the labeled set — {title}")
        sizes = sorted({b for cells in imb.values() for b in cells})
        md += ["## Class imbalance of the labeled set", "", "![Class-imbalance ratio](imbalance.png)", ""]
        md += [
            "Imbalance ratio = labels of the most labeled class / labels of the least labeled class "
            "(cumulative `labeled_per_class` after each round's acquisition; columns are the labeled-set size), "
            "mean over seeds. `inf` when some class has no label in at least one seed; then [z] is the mean "
            "number of classes with zero labels.",
            "",
        ]
        rows = []
        for g in _ordered_groups(imb, baseline):
            row = [g]
            for b in sizes:
                c = imb[g].get(b)
                if c is None:
                    row.append("—")
                elif math.isinf(c.mean):
                    row.append(f"inf [{c.mean_zero_classes:g}]")
                else:
                    row.append(_ratio(c.mean) if math.isnan(c.std) else f"{_ratio(c.mean)} ± {c.std:.2f}")
            rows.append(row)
        md += [_md_table([group_by, *map(str, sizes)], rows), ""]
        data["imbalance"] = {
            g: {b: asdict(c) | {"mean": c.mean, "mean_zero_classes": c.mean_zero_classes} for b, c in v.items()}
            for g, v in imb.items()
        }

    # Training time and speedup.
    if timing:
        times = training_times(runs, group_by)
        md += ["## Training time", ""]
        sp = speedups(times, speedup_baseline) if speedup_baseline is not None else None
        expl = "Cumulative training time (sum of `time_s.train` up to the round that evaluated each budget), mean over seeds"
        if sp is not None:
            expl += f"; in brackets the speedup = time of {speedup_baseline} / time of the {group_by}"
        md += [expl + ".", ""]
        rows = []
        for g in groups:
            row = [g]
            for b in bs:
                c = times[g].get(b)
                if c is None:
                    row.append("—")
                    continue
                s = _fmt_secs(c.mean)
                if sp is not None and b in sp[g]:
                    s += f" (×{sp[g][b]:.2f})"
                row.append(s)
            rows.append(row)
        md += [_md_table([group_by, *map(str, bs)], rows), ""]
        if speedup_baseline is not None:
            ms = matched_speedups(table, times, speedup_baseline)
            tgt = ms[speedup_baseline].target
            md += [f"Speedup at matched accuracy (SPEC §6): training time until the mean accuracy first reaches "
                   f"{speedup_baseline}'s final mean accuracy ({100 * tgt:.2f}%), and {speedup_baseline}'s time "
                   f"to reach it / that time.", ""]
            mrows = [[g, str(m.budget) if m.budget is not None else "not reached",
                      _fmt_secs(m.time_s) if m.time_s is not None else "—",
                      f"×{m.speedup:.2f}" if m.speedup is not None else "—"] for g, m in ((g, ms[g]) for g in groups)]
            md += [_md_table([group_by, "labels", "training time", "speedup"], mrows), ""]
            data["matched_speedup"] = {g: asdict(m) for g, m in ms.items()}
        totals = phase_totals(runs, group_by)
        phases = sorted({k for t in totals.values() for k in t})
        if phases:
            md += ["Total time per phase (mean over runs):", ""]
            md += [_md_table([group_by, *phases], [[g] + [_fmt_secs(totals[g].get(k, math.nan)) for k in phases] for g in groups]), ""]
        data["training_time"] = {g: {b: asdict(c) | {"mean": c.mean} for b, c in v.items()} for g, v in times.items()}
        if sp is not None:
            data["speedup"] = sp
        data["phase_totals"] = totals

    md += _alignment_section(runs, group_by, groups, baseline, out, data)

    data["runs"] = {g: [str(r.path) for r in rs] for g, rs in by_group.items()}
    data["skipped"] = [str(s.path) for s in results.skipped]
    (out / "report.json").write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=True) + "\n")
    path = out / "summary.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse_filter(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--filter expects KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulations.reports",
        description="Tables, significance tests and plots from a results root (never a live run).",
    )
    p.add_argument("root", help="results root: run directories (any depth) with config.json, rounds.jsonl, summary.json")
    p.add_argument("--out", required=True, help="output directory (summary.md, accuracy.png, imbalance.png, report.json)")
    p.add_argument("--baseline", default="Rand",
                   help="group every other group is compared against (default: Rand); 'none' disables comparisons")
    p.add_argument("--group-by", default="method",
                   help="run field (method, suite, seed, config_hash) or run-config key, e.g. training-mode")
    p.add_argument("--title", default=None)
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the t-tests (default 0.05)")
    p.add_argument("--filter", type=_parse_filter, action="append", default=[], metavar="KEY=VALUE",
                   help="keep only runs whose KEY (as for --group-by) equals VALUE; repeatable")
    p.add_argument("--speedup-baseline", default=None,
                   help="group whose cumulative training time is the reference of the speedup table, e.g. retrain")
    p.add_argument("--timing", action=argparse.BooleanOptionalAction, default=None,
                   help="force the training-time section on/off (default: on when time_s.train is recorded)")
    p.add_argument("--exclude-initial", action="store_true",
                   help="leave round 0 (initial random labels) out of the significance counts, as in the paper's Table 1")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    baseline = None if args.baseline.lower() in ("none", "") else args.baseline
    try:
        path = write_report(
            args.root,
            args.out,
            baseline=baseline,
            group_by=args.group_by,
            title=args.title,
            alpha=args.alpha,
            filters=dict(args.filter),
            speedup_baseline=args.speedup_baseline,
            timing=args.timing,
            exclude_initial=args.exclude_initial,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
