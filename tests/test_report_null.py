"""The baseline against itself (simulations/reports/null.py): every split of its seeds, counted
with the report's own Student t, on synthetic seeds whose answer is known."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from simulations import reports as R
from simulations.reports.null import baseline_against_itself
from simulations.reports.stats import Cell
from tests.test_reports import write_run

BUDGETS = [1000, 2000, 3000, 4000]


def _table(values: np.ndarray, seeds=None) -> dict:
    """values: seeds x budgets."""
    seeds = tuple(range(len(values))) if seeds is None else tuple(seeds)
    return {"Rand": {b: Cell(seeds, tuple(values[:, j])) for j, b in enumerate(BUDGETS)}}


def test_every_split_counted_with_students_t_in_the_direction_of_the_first_group():
    rng = np.random.default_rng(3)
    v = rng.normal(0.5, 0.02, size=(6, len(BUDGETS)))
    v[:3] -= 0.3  # seeds 0-2 far below seeds 3-5 at every budget
    nc = baseline_against_itself(_table(v), "Rand")
    assert nc.k == 3 and nc.splits == math.comb(6, 3) and nc.exhaustive
    splits = list(itertools.combinations(range(6), 3))
    for g, worse in zip(splits, nc.worse):
        rest = [i for i in range(6) if i not in g]
        t, p = stats.ttest_ind(v[list(g)], v[rest], axis=0)  # pooled variance, the paper's test
        assert worse == int(((p < 0.05) & (t < 0)).sum())
    assert nc.worse[splits.index((0, 1, 2))] == len(BUDGETS)  # the low half is worse everywhere
    assert nc.worse[splits.index((3, 4, 5))] == 0  # and the high half nowhere: a direction, not |t|
    assert nc.share_at_least(1) == pytest.approx(np.mean(np.array(nc.worse) >= 1))


def test_only_seeds_present_at_every_budget_take_part_and_bad_k_is_refused():
    v = np.random.default_rng(0).normal(0.5, 0.05, size=(7, len(BUDGETS)))
    table = _table(v)
    b = BUDGETS[-1]
    table["Rand"][b] = Cell(tuple(range(6)), tuple(v[:6, -1]))  # seed 6 stopped before the last budget
    nc = baseline_against_itself(table, "Rand")
    assert nc.seeds == tuple(range(6)) and nc.splits == math.comb(6, 3)
    with pytest.raises(ValueError, match="k = 1 is invalid for 6 seeds of 'Rand'"):
        baseline_against_itself(table, "Rand", k=1)
    with pytest.raises(ValueError, match=r"baseline 'Ours' has no accuracy cells; groups: \['Rand'\]"):
        baseline_against_itself(table, "Ours")


@pytest.mark.parametrize("n, shown", [(6, True), (5, False)])
def test_the_report_has_the_section_when_the_baseline_has_six_seeds(tmp_path, n, shown):
    rng = np.random.default_rng(1)
    for s in range(n):
        accs = list(np.array([0.4, 0.5, 0.6, 0.65]) + rng.normal(0, 0.02, 4))
        write_run(tmp_path / "res", f"Rand/s{s}", "Rand", s, accs)
        write_run(tmp_path / "res", f"Rule/s{s}", "Rule", s, [a - 0.01 for a in accs])
    md = R.write_report(tmp_path / "res", tmp_path / "rep", baseline="Rand").read_text()
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert ("### Rand against itself" in md) is shown
    assert ("baseline_against_itself" in report) is shown
    if shown:
        assert report["baseline_against_itself"]["splits"] == math.comb(6, 3)
        assert f"split into 3 against 3 in all {math.comb(6, 3)} ways" in md
