"""Fixed-seed runs reproduce, bit for bit, the rows recorded in tests/data/golden_*.json (runs
are deterministic on one machine: FedAvg sums in partition-id order, every draw seeded). A
refactoring that changes one float of one row changed behaviour; regenerate the goldens
(``python -m tests.golden``) only for a deliberate change, in its own commit."""

import pytest

from tests import golden


@pytest.mark.parametrize("name", list(golden.INPROCESS_CASES))
def test_inprocess_run_matches_golden(name):
    assert golden.inprocess_rows(name) == golden.load(f"inprocess_{name}")


def test_simulation_engine_run_matches_golden(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))
    assert golden.simulation_rows(tmp_path / "runs") == golden.load("simulation")
