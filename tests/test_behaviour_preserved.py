"""Fixed-seed runs reproduce, bit for bit, the rows recorded in tests/data/golden_*.json (runs
are deterministic on one machine: FedAvg sums in partition-id order, every draw seeded). A
refactoring that changes one float of one row changed behaviour; regenerate the goldens
(``python -m tests.golden``) only for a deliberate change, in its own commit."""

import pytest

from tests import golden


@pytest.mark.parametrize("name", list(golden.INPROCESS_CASES))
def test_inprocess_run_matches_golden(name):
    assert golden.mismatches(golden.inprocess_rows(name), golden.load(f"inprocess_{name}")) == []


def test_simulation_engine_run_matches_golden(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))
    assert golden.mismatches(golden.simulation_rows(tmp_path / "runs"), golden.load("simulation")) == []


def test_inprocess_engine_gives_the_simulation_engines_rows(tmp_path):
    # the comparison runner's --engine inprocess rests on this: the same config through the
    # in-process grid gives exactly the rows Flower's simulation engine recorded
    from simulations.engine import read_rows, simulate_inprocess

    run_dir = simulate_inprocess({**golden.SIMULATION_CONFIG, "run-dir": str(tmp_path)},
                                 golden.SIMULATION_CLIENTS)
    assert golden.mismatches(golden.normalised(read_rows(run_dir)), golden.load("simulation")) == []


def test_golden_comparison_forgives_last_bit_float_noise_only(monkeypatch):
    monkeypatch.delenv("FEDAL_GOLDEN_EXACT", raising=False)  # the tolerant mode first, whatever the caller set
    rows = golden.load("inprocess_random-entropy-cal-er-shard")
    import copy

    noisy = copy.deepcopy(rows)
    noisy[0]["loss"] *= 1 + 1e-6  # another CPU's float32 reduction order
    assert golden.mismatches(noisy, rows) == []
    monkeypatch.setenv("FEDAL_GOLDEN_EXACT", "1")
    assert golden.mismatches(noisy, rows) == [f"rows[0].loss: {noisy[0]['loss']!r}, golden {rows[0]['loss']!r}"]
    monkeypatch.delenv("FEDAL_GOLDEN_EXACT")
    for change in ("pick", "accuracy", "key"):
        bad = copy.deepcopy(rows)
        if change == "pick":
            bad[0]["chosen_clients"][0] += 1
        elif change == "accuracy":
            bad[1]["accuracy"] += 1 / 359  # one test point of digits
        else:
            bad[2]["extra"] = 1
        assert len(golden.mismatches(bad, rows)) == 1, change


@pytest.mark.parametrize("name", list(golden.ASYNC_CASES))
def test_async_run_matches_golden(name):
    # asynchronous labeling with simulated annotators: rows and summary (paid, granted, withdrawn,
    # idle fractions, latencies) under the selection and the standing budget rules
    assert golden.mismatches(golden.async_result(name), golden.load(name)) == []
