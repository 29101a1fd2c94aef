"""Statistics over `Run` objects: accuracy cells per budget, improvements and t-tests against a
baseline, class imbalance, training times and speedups, and the consistency checks a report
prints as warnings. Pure functions; the tests use them on synthetic runs."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from simulations.reports.load import Run, group_runs, require_group


# Sample standard deviation (ddof=1) everywhere: the same variance estimate the t-test uses, and
# the unbiased choice for the handful of seeds (5-10) these experiments have.
DDOF = 1


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


def _common_seeds(a: Cell, b: Cell) -> list[int]:
    """The seeds both cells hold, when neither repeats a seed (else no pairing is defined)."""
    if len(set(a.seeds)) != a.n or len(set(b.seeds)) != b.n:
        return []
    return sorted(set(a.seeds) & set(b.seeds))


def _pairs_up(a: Cell, b: Cell) -> bool:
    """Seeds pair up fully when both cells hold exactly the same seeds, each once."""
    return a.n == b.n == len(_common_seeds(a, b))


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
    paired_*: the same with the paired t-test on the seeds both cells hold, when there are at
    least two (else None); paired_n counts them. With 5 seeds of a method beside 10 of the
    baseline, the test pairs those 5: a seed fixes the partition, the initial labels and the
    initialisation for every method, so the pair is the same experiment either way.
    """

    n: int
    n_baseline: int
    diff: float
    t: float
    p: float
    verdict: str
    paired_p: float | None = None
    paired_verdict: str | None = None
    paired_n: int = 0


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
    common = _common_seeds(cell, ref)
    if len(common) >= 2:
        mine, base = dict(zip(cell.seeds, cell.values)), dict(zip(ref.seeds, ref.values))
        a, b = np.array([mine[s] for s in common]), np.array([base[s] for s in common])
        _, pp = _ttest("ttest_rel", a, b)
        # Direction from the paired mean difference: on a subset of seeds it can differ in sign
        # from the difference of the full means.
        pv = _verdict(pp, float(np.mean(a - b)), alpha)
    return Comparison(n, nb, diff, t, p, verdict, pp, pv, len(common) if pp is not None else 0)


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
    paired_tested: int  # budgets where at least two seeds paired up and the paired test ran
    paired_seeds: tuple[int, ...] = ()  # how many seeds paired at those budgets (distinct counts, ascending)
    paired_partial: bool = False  # some tested budget paired fewer seeds than one side holds

    @property
    def tested(self) -> int:
        return self.better + self.worse + self.ties


def count_significance(comparisons: Mapping[int, Comparison]) -> SignificanceCounts:
    vs = [c.verdict for c in comparisons.values()]
    tested = [c for c in comparisons.values() if c.paired_verdict is not None]
    pvs = [c.paired_verdict for c in tested]
    return SignificanceCounts(
        better=vs.count("better"),
        worse=vs.count("worse"),
        ties=vs.count("tie"),
        na=vs.count("n/a"),
        paired_better=pvs.count("better"),
        paired_worse=pvs.count("worse"),
        paired_tested=len(pvs),
        paired_seeds=tuple(sorted({c.paired_n for c in tested})),
        paired_partial=any(c.paired_n < max(c.n, c.n_baseline) for c in tested),
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
    from fedal.config import experiment_key

    out = {}
    for g, rs in group_runs(runs, group_by).items():
        # keys outside every run's experiment hash (timeouts, the async keys of a sync run, ...)
        # cannot make two runs different experiments: not worth a note
        decisive = set().union(*(experiment_key(r.config) for r in rs))
        keys = sorted({k for r in rs for k in r.config} & decisive)
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
