"""End to end through Flower's real simulation engine (Ray actors), and through `flwr run .`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import without_times

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"al-rounds": 2, "init-clients": 3, "init-points": 30, "clients-per-round": 3,
         "points-per-client": 40, "fl-rounds": 2, "local-epochs": 1, "pseudo-epochs": 2}


def test_simulation_engine_end_to_end(tmp_path, monkeypatch):
    from simulations.engine import read_rows, simulate

    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))  # Ray actors inherit it
    rc = {**SMALL, "run-dir": str(tmp_path / "runs")}
    run_dir = simulate(rc, num_clients=10)
    rows = read_rows(run_dir)
    assert [r["labels"] for r in rows] == [90, 210, 330]
    assert [r["acquired"] for r in rows] == [120, 120, 0]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["labels"] == 330
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["seed"] == 0 and saved["config"]["client-strategy"] == "diffusion"
    # the clients' durable pools (SQLite stores under FEDAL_STATE_DIR): every paid label once,
    # and all of them accounted for
    import sqlite3

    dbs = list((tmp_path / "state").glob("pools/*/*.sqlite"))
    assert len(dbs) == 10
    counts = [sqlite3.connect(f).execute("SELECT count(*), count(DISTINCT idx) FROM labels").fetchone() for f in dbs]
    assert sum(n for n, _ in counts) == 330
    assert all(n == distinct for n, distinct in counts)

    # the same seed again, on fresh Ray actors with new random node ids: bit-identical rows
    # (FedAvg sums in partition-id order; node ids and reply order differ between the runs)
    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state2"))
    again = read_rows(simulate({**rc, "run-dir": str(tmp_path / "runs2")}, num_clients=10))
    assert without_times(again) == without_times(rows)


@pytest.mark.skipif(shutil.which("flwr", path=str(Path(sys.executable).parent)) is None,
                    reason="the flwr CLI is not installed next to this Python")
@pytest.mark.parametrize("numerics", ["native", "portable"])
def test_flwr_run_cli(tmp_path, numerics):
    from simulations.flwr_run import flwr_run

    runs = tmp_path / "runs"
    rc = (f"client-strategy='entropy' point-strategy='entropy' al-rounds=1 init-clients=2 "
          f"init-points=20 clients-per-round=2 points-per-client=20 fl-rounds=1 run-dir='{runs}' "
          f"numerics='{numerics}'")
    p = flwr_run(rc, supernodes=6, home=tmp_path / "flwr-home", timeout=480, capture=True)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "accuracy per label count" in out, out[-3000:]
    [run_dir] = list(runs.iterdir())
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["labels"] for r in rows] == [40, 80]
    if numerics == "portable":  # flwr_run gave the SuperLink's processes the environment it needs
        from simulations.run_index import golden_here

        env = json.loads((run_dir / "config.json").read_text())["environment"]
        assert env["numerics"] == "portable" and env["golden"] == golden_here("portable")
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "flwr-home") not in ps  # the local SuperLink was stopped


def test_fedal_run_refuses_a_bad_run_config_before_starting_flower(tmp_path, monkeypatch, capsys):
    # Caught before a SuperLink starts: flwr_run is never called, and the exit status is 2.
    import simulations.flwr_run as F

    monkeypatch.setattr(F, "flwr_run", lambda *a, **k: pytest.fail("a SuperLink was started"))
    assert F.main(["--run-config", "client-strategy='bogus'"], prog="fedal run") == 2
    err = capsys.readouterr().err
    assert "fedal run: configuration error: client-strategy = 'bogus' is invalid; valid: random" in err
    assert F.main(["--run-config", "al-roundz=3"]) == 2
    assert "unknown run-config key(s) ['al-roundz']" in capsys.readouterr().err
    assert F.main(["--run-config", "client-strategy=bogus"]) == 2  # unquoted string: flwr cannot parse it
    assert "is not key=value pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        F.main(["--supernodes", "0"])


@pytest.mark.skipif(shutil.which("flwr", path=str(Path(sys.executable).parent)) is None,
                    reason="the flwr CLI is not installed next to this Python")
def test_a_failed_flwr_run_exits_nonzero(tmp_path):
    # `flwr run --stream` itself exits 0 when the ServerApp raises (flwr 1.41); fedal reads the
    # run's status and says why. A valid config whose data set is missing fails in the ServerApp.
    from simulations.flwr_run import flwr_run

    rc = f"dataset='cifar10' data-root='{tmp_path / 'nowhere'}' run-dir='{tmp_path / 'runs'}'"
    p = flwr_run(rc, supernodes=2, home=tmp_path / "flwr-home", timeout=300, capture=True)
    assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
    assert "fedal run: the run ended finished:failed" in p.stderr and "cifar-10-batches-py" in p.stderr


def test_every_run_config_the_docs_write_is_valid():
    # `make demo RUN_CONFIG="..."` and `--run-config "..."` in README.md and docs/: each passes the
    # check `fedal run` makes before it starts a SuperLink (values with shell variables are left to
    # the deployment tests, which run them).
    import re

    from simulations.flwr_run import check_run_config

    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\s*\\?\n\s*", " ", doc.read_text())  # commands wrapped over lines
        found += [(doc.name, v) for v in re.findall(r'(?:RUN_CONFIG=|--run-config )"([^"]*)"', text) if "$" not in v]
    assert len(found) >= 5, found
    for where, value in found:
        check_run_config(value)  # raises ConfigError naming the bad key or value
