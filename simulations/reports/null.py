"""The baseline against itself: how many budgets the Table-1 count calls "worse" when nothing differs.

Table 1 tests each of the 11 budgets on its own at α = 0.05, but a run's accuracies at its budgets
are correlated (the same seed, partition and labeled set carry over from round to round), so the
count of significant budgets is not Binomial(11, α/2) under the null: one unlucky seed moves many
budgets at once. We measure its null distribution from the baseline's own seeds: split them into
two groups in every way (k seeds against the rest), count with exactly the test of the report
(`compare_cells`, Student t), and report how often one half is "worse" than the other at ≥ 1 and
≥ 2 budgets. A method whose only shortfall is a count inside that range has not shown a loss that
random clients do not show against themselves (docs/results.md, "Random clients against themselves").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from simulations.reports.stats import Cell, Table, compare_cells

MAX_SPLITS = 5000  # beyond C(n, k) > this, a seeded random sample of splits (n > 14 at k = n/2)


@dataclass(frozen=True)
class NullCounts:
    seeds: tuple[int, ...]  # the baseline's seeds present at every budget
    k: int  # size of the first group of each split
    budgets: tuple[int, ...]
    worse: tuple[int, ...]  # per split: budgets where the k-seed group is significantly worse
    exhaustive: bool  # every split, or a sample of MAX_SPLITS

    @property
    def splits(self) -> int:
        return len(self.worse)

    def share_at_least(self, m: int) -> float:
        return float(np.mean(np.array(self.worse) >= m)) if self.worse else math.nan


def common_seeds(table: Table, baseline: str) -> tuple[int, ...]:
    """The baseline's seeds present at every budget (none when it has no cells)."""
    cells = table.get(baseline) or {}
    return tuple(sorted(set.intersection(*(set(c.seeds) for c in cells.values())))) if cells else ()


def baseline_against_itself(table: Table, baseline: str, k: int | None = None, alpha: float = 0.05,
                            seed: int = 0) -> NullCounts:
    """Every split of the baseline's seeds into k against n − k (default k = n // 2), counted with
    the report's own test. Only seeds with a value at every budget take part, so that each split
    compares the same runs at every budget, as a method's row does."""
    cells = table.get(baseline)
    if not cells:
        raise ValueError(f"baseline {baseline!r} has no accuracy cells; groups: {sorted(table)}")
    budgets = tuple(sorted(cells))
    value = {b: dict(zip(cells[b].seeds, cells[b].values)) for b in budgets}
    seeds = common_seeds(table, baseline)
    n = len(seeds)
    k = n // 2 if k is None else k
    if not 2 <= k <= n - 2:
        raise ValueError(f"k = {k} is invalid for {n} seeds of {baseline!r}: each group needs >= 2 seeds")
    total = math.comb(n, k)
    if total <= MAX_SPLITS:
        groups = list(itertools.combinations(range(n), k))
    else:
        rng = np.random.default_rng(seed)
        groups = [tuple(sorted(rng.choice(n, size=k, replace=False))) for _ in range(MAX_SPLITS)]
    worse = []
    for g in groups:
        rest = [i for i in range(n) if i not in g]
        count = 0
        for b in budgets:
            first = Cell(tuple(seeds[i] for i in g), tuple(value[b][seeds[i]] for i in g))
            second = Cell(tuple(seeds[i] for i in rest), tuple(value[b][seeds[i]] for i in rest))
            count += compare_cells(first, second, alpha).verdict == "worse"
        worse.append(count)
    return NullCounts(seeds, k, budgets, tuple(worse), total <= MAX_SPLITS)


def null_markdown(nc: NullCounts, baseline: str, alpha: float) -> list[str]:
    at = {m: nc.share_at_least(m) for m in (1, 2, 3)}
    how = f"all {nc.splits}" if nc.exhaustive else f"a seeded sample of {nc.splits}"
    return [
        f"### {baseline} against itself", "",
        f"{baseline}'s {len(nc.seeds)} seeds split into {nc.k} against {len(nc.seeds) - nc.k} in {how} ways, "
        f"the same Student t at α = {alpha:g} over the same {len(nc.budgets)} budgets: one half is "
        f"significantly worse than the other at ≥ 1 budget in {100 * at[1]:.0f}% of the splits, at ≥ 2 in "
        f"{100 * at[2]:.0f}%, at ≥ 3 in {100 * at[3]:.0f}%; at most {max(nc.worse)}. Budgets are correlated "
        "within a run, so one seed moves several at once; a count of worse budgets inside this range is "
        f"what {baseline} shows against itself (`simulations/reports/null.py`).", ""]


def null_json(nc: NullCounts) -> dict:
    return {"seeds": list(nc.seeds), "k": nc.k, "splits": nc.splits, "exhaustive": nc.exhaustive,
            "worse_per_split": list(nc.worse), "share_at_least": {m: nc.share_at_least(m) for m in (1, 2, 3)}}
