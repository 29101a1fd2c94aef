"""The sync-vs-async experiment's bookkeeping (simulations/async_labeling.py): interpolation at
equal labels, FL rounds trained per row, and a saved run of another configuration refused."""

from __future__ import annotations

import json
import math

import pytest

from fedal.config import Config
from simulations import async_labeling as A


def test_accuracy_is_interpolated_between_rows_and_nan_outside():
    xs, ys = [1000, 3000, 2000], [0.3, 0.7, 0.5]  # unsorted rows are sorted first
    assert A.acc_at_x(xs, ys, 2500) == pytest.approx(0.6)
    assert A.acc_at_x(xs, ys, 1000) == pytest.approx(0.3)
    assert math.isnan(A.acc_at_x(xs, ys, 999)) and math.isnan(A.acc_at_x(xs, ys, 3001))


def test_fl_rounds_trained_follow_the_schedule():
    cfg = Config.from_run_config({"training-mode": "warm-start", "fl-rounds": 15})
    rows = [{"round": r} for r in range(4)]
    fl = A.fl_rounds_trained(rows, cfg)
    assert fl[0] == 15  # the first training is the retrain schedule
    steps = {b - a for a, b in zip(fl, fl[1:])}
    assert len(steps) == 1 and 0 < steps.pop() < 15  # warm start: fewer, equal later rounds
    retrain = A.fl_rounds_trained(rows, Config.from_run_config({"training-mode": "retrain", "fl-rounds": 15}))
    assert retrain == [15, 30, 45, 60]


def test_a_saved_run_of_another_configuration_is_refused(tmp_path):
    rc = A.run_config("async", 0, {"al-rounds": 11})
    (tmp_path / "async-s0.json").write_text(json.dumps({"mode": "async", "run_config": {**rc, "seed": 7}}))
    with pytest.raises(SystemExit, match="another configuration"):
        A.run_one("async", 0, 100, {"al-rounds": 11}, tmp_path, log=print)
    (tmp_path / "async-s0.json").write_text(json.dumps({"mode": "async", "run_config": rc, "rows": []}))
    assert A.run_one("async", 0, 100, {"al-rounds": 11}, tmp_path, log=print)["rows"] == []  # reused, not rerun


def test_the_async_arm_differs_from_sync_only_in_timing():
    sync, asy, mix = (A.run_config(m, 0) for m in ("sync", "async", "async-mix"))
    assert sync["point-strategy"] == asy["point-strategy"] == "entropy"
    assert Config.from_run_config(asy).worker_measures == ("entropy",)
    assert len(Config.from_run_config(mix).worker_measures) == 3
    differ = {k for k in set(sync) | set(asy) if sync.get(k) != asy.get(k)}
    assert differ <= {"labeling", "async-workers", *A.TIMING}


def test_ci95_of_paired_differences():
    lo, hi = A.ci95([1.0, 3.0, 2.0, math.nan])
    assert lo < 2.0 < hi and hi - 2.0 == pytest.approx(2.0 - lo)
    assert hi - lo == pytest.approx(2 * 4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) s/√n
    assert all(math.isnan(v) for v in A.ci95([1.0]))
