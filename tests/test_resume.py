"""Checkpoint and resume (docs/method.md, "Failures and resume"): a run interrupted after an AL
round and resumed with resume = true records the rows an uninterrupted run records, and pays no
label twice.

Where the crash falls: the server checkpoints right after an AL round's acquisition. Most
tests crash it after that checkpoint (on the first message of the next round, or with
stop-after-round): the clients then hold exactly the labels the checkpoint counts. One crashes
it between an acquisition and its checkpoint: the clients then hold labels the checkpoint does
not count, and the resumed run repeats the round before them without letting them in."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedal.checkpoint import CheckpointError
from fedal.results import CHECKPOINT_FILE, CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, ResultsMismatch
from tests.golden import INPROCESS_BASE
from tests.helpers import without_times
from tests.inprocess import InProcessGrid, run_inprocess
from tests.test_failures import pools

M = 8
# random client choice (the server's random state matters) with the local-diffusion point
# strategy (the global weights matter); diffusion client choice (the previous round's entropies
# matter) is resumed through the simulation engine at the end
RC = {**INPROCESS_BASE, "al-rounds": 4, "run-name": "r", "client-strategy": "random"}


class Crash(RuntimeError):
    pass


class CrashingGrid(InProcessGrid):
    """The server 'crashes' (the grid raises) on the first message of AL round 3."""

    armed = True

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        m = messages[0]
        if self.armed and m.metadata.message_type == "train" and m.content["config"]["al-round"] == 3:
            raise Crash("injected crash at the start of AL round 3")
        return super().send_and_receive(messages, timeout=timeout)


def rows_on_file(run_dir):
    return [json.loads(line) for line in (run_dir / ROUNDS_FILE).read_text().splitlines()]


def crash_and_resume(grid_class, rc: dict, clients: str, rows_checkpointed: int):
    """Run ``rc`` on a ``grid_class`` grid until it crashes, check that ``rows_checkpointed`` rows
    are on file, then resume: on the same clients ("survive") or on new ones that reload their
    pools from FEDAL_STATE_DIR ("state-dir"). Returns the resumed run's (rows, grid)."""
    from fedal.client_app import build_client_app

    crashing = grid_class(build_client_app(rc), M)
    with pytest.raises(Crash):
        run_inprocess(rc, M, record=True, grid=crashing)
    run_dir = Path(rc["run-dir"]) / "r"
    assert len(rows_on_file(run_dir)) == rows_checkpointed and not (run_dir / SUMMARY_FILE).exists()
    crashing.armed = False
    grid = crashing if clients == "survive" else None  # None: new clients, pools from the state dir
    return run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)


def labels_paid(clients: str, grid, state_dir: Path) -> int:
    """Labels the clients hold: in their in-memory pools, or in their SQLite pool stores
    (fedal.store) under FEDAL_STATE_DIR."""
    if clients == "survive":
        return sum(p.n_labeled for p in pools(grid).values())
    files = list(state_dir.glob("pools/*/*.sqlite"))
    assert len(files) == M
    return sum(sqlite3.connect(f).execute("SELECT count(*) FROM labels").fetchone()[0] for f in files)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("whole")
    rows, grid = run_inprocess({**RC, "run-dir": str(d)}, M, record=True)
    return without_times(rows), sum(p.n_labeled for p in pools(grid).values())


@pytest.mark.parametrize("clients", ["survive", "state-dir"])
def test_an_interrupted_and_resumed_run_records_the_uninterrupted_rows(uninterrupted, tmp_path, monkeypatch,
                                                                       clients):
    # survive: the SuperNodes outlive the server (one grid, pools in memory); state-dir: the
    # clients restart too and reload their pools from FEDAL_STATE_DIR
    if clients == "state-dir":
        monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))
    rows, grid = crash_and_resume(CrashingGrid, {**RC, "run-dir": str(tmp_path)}, clients, 3)
    run_dir = tmp_path / "r"
    expected, paid = uninterrupted
    assert without_times(rows) == expected
    assert without_times(rows_on_file(run_dir)) == expected  # appended after the checkpoint's rows
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["labels"] == expected[-1]["labels"]
    assert labels_paid(clients, grid, tmp_path / "state") == paid  # no label paid twice
    assert len(json.loads((run_dir / CONFIG_FILE).read_text())["resumed"]) == 1


class LateCrashGrid(InProcessGrid):
    """The server 'crashes' after the clients paid AL round 3's labels but before it saw their
    replies: between an acquisition and its checkpoint."""

    armed = True

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        m = messages[0]
        if self.armed and m.metadata.message_type == "query.acquire" and m.content["config"]["al-round"] == 3:
            raise Crash("injected crash after the acquisition of AL round 3")
        return replies


@pytest.mark.parametrize("clients", ["survive", "state-dir"])
@pytest.mark.parametrize("strategy", ["random", "diffusion"])
def test_a_crash_between_an_acquisition_and_its_checkpoint_resumes_to_the_uninterrupted_rows(
        tmp_path, monkeypatch, clients, strategy):
    # the clients hold labels of AL round 3 that the last checkpoint (AL round 1's) does not
    # count; the resumed AL round 2 must train and probe without them (as the uninterrupted run
    # did), and its acquisition must get back the labels already paid, not new ones
    if clients == "state-dir":
        monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))
    rc = {**RC, "client-strategy": strategy, "training-mode": "retrain" if strategy == "random" else "warm-start"}
    whole, wgrid = run_inprocess({**rc, "run-dir": str(tmp_path / "whole")}, M, record=True)
    paid = labels_paid(clients, wgrid, tmp_path / "state")
    if clients == "state-dir":
        monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state2"))
    # AL rounds 0 and 1 checkpointed, 2 not
    rows, grid = crash_and_resume(LateCrashGrid, {**rc, "run-dir": str(tmp_path)}, clients, 2)
    assert without_times(rows) == without_times(whole)
    assert labels_paid(clients, grid, tmp_path / "state2") == paid  # nothing paid twice or beyond


def test_resume_without_the_clients_pools_names_FEDAL_STATE_DIR(tmp_path):
    rc = {**RC, "run-dir": str(tmp_path), "al-rounds": 2, "stop-after-round": 0}
    rows, _ = run_inprocess(rc, M, record=True)
    assert len(rows) == 1
    with pytest.raises(CheckpointError, match=r"report no labels where the checkpoint counts some: .*"
                                              r"FEDAL_STATE_DIR"):
        run_inprocess({**rc, "resume": True, "stop-after-round": -1}, M, record=True)  # fresh clients


def test_a_corrupt_missing_or_foreign_checkpoint_is_refused(tmp_path):
    from fedal import checkpoint

    rc = {**RC, "run-dir": str(tmp_path), "al-rounds": 2, "stop-after-round": 0,
          "client-strategy": "random", "point-strategy": "random"}
    _, grid = run_inprocess(rc, M, record=True)
    path = tmp_path / "r" / CHECKPOINT_FILE
    good = path.read_bytes()
    from fedal.config import Config

    cfg = Config.from_run_config(rc)
    ck = checkpoint.load(path, cfg.config_hash(), cfg.seed)
    assert ck.al_round == 0 and ck.rows[0]["round"] == 0
    with pytest.raises(CheckpointError, match="belongs to another experiment"):
        checkpoint.load(path, cfg.config_hash(), cfg.seed + 1)
    # a flipped byte in the weights: the checksum catches what the zip container may not
    raw = bytearray(good)
    i = raw.index(b"w:0.npy") + 200
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"the checkpoint .*checkpoint.npz is corrupt"):
        run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)
    # a valid container whose content was edited: only the checksum sees it
    with np.load(io.BytesIO(good)) as z:
        parts = {k: z[k] for k in z.files}
    meta = json.loads(parts["meta"].tobytes())
    meta["labeled_per_class"][0] += 1
    parts["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(path, **parts)
    with pytest.raises(CheckpointError, match=r"is corrupt \(its checksum does not match its content\)"):
        checkpoint.load(path, cfg.config_hash(), cfg.seed)
    path.write_bytes(good[: len(good) // 2])  # a truncated file
    with pytest.raises(CheckpointError, match=r"is corrupt or unreadable .*delete it and set resume = false"):
        checkpoint.load(path, cfg.config_hash(), cfg.seed)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"resume = true but there is no checkpoint"):
        run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)


def test_resume_refuses_rows_on_file_that_are_not_the_checkpoints(tmp_path):
    rc = {**RC, "run-dir": str(tmp_path), "al-rounds": 2, "stop-after-round": 1,
          "client-strategy": "random", "point-strategy": "random"}
    _, grid = run_inprocess(rc, M, record=True)
    rounds = tmp_path / "r" / ROUNDS_FILE
    rows = rows_on_file(tmp_path / "r")
    rows[0]["accuracy"] = 0.5
    rounds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ResultsMismatch, match="row 0 differs"):
        run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)


def test_a_row_written_after_the_last_checkpoint_is_dropped_and_recomputed(tmp_path):
    rc = {**RC, "run-dir": str(tmp_path), "al-rounds": 2, "client-strategy": "random",
          "point-strategy": "random"}
    whole, _ = run_inprocess({**rc, "run-name": "whole"}, M, record=True)
    _, grid = run_inprocess({**rc, "stop-after-round": 0}, M, record=True)
    # as if the server died between writing row 1 and its checkpoint
    with open(tmp_path / "r" / ROUNDS_FILE, "a") as f:
        f.write(json.dumps({**whole[1], "accuracy": -1.0})[:40])  # cut short mid-write
    rows, _ = run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)
    assert without_times(rows_on_file(tmp_path / "r")) == without_times(whole)
    # resuming a completed run changes nothing and completes it again
    (tmp_path / "r" / SUMMARY_FILE).unlink()
    again, _ = run_inprocess({**rc, "resume": True}, M, record=True, grid=grid)
    assert without_times(again) == without_times(whole) == without_times(rows_on_file(tmp_path / "r"))
    assert json.loads((tmp_path / "r" / SUMMARY_FILE).read_text())["completed"]


# A resume rewrites rounds.jsonl (dropping a row the checkpoint lacks). The rewrite fails here
# half-way, at a file-size limit as a full disk would, in a child process (the limit would hit
# pytest's own files too): the rows on file must be the old ones, whole, never half a file.
REWRITE_FAILS = """
import json, resource, signal, sys
from pathlib import Path
from fedal.results import ROUNDS_FILE, RunRecorder

run_dir = Path(sys.argv[1])
rows = [{"round": i, "labels": 10 * i, "accuracy": 0.5, "note": "x" * 200} for i in range(3)]
rec = RunRecorder(run_dir, {"seed": 0})
for row in rows:
    rec.add_round(row)
with open(run_dir / ROUNDS_FILE, "a") as f:
    f.write('{"round": 3, "lab')  # the crash cut the next row short
rec = RunRecorder(run_dir, {"seed": 0}, resume=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    rec.resume_from(rows)
except OSError as e:
    print("rewrite failed:", e.strerror)
"""


def test_a_failure_while_resume_rewrites_the_rows_leaves_the_old_file_whole(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "r"
    out = subprocess.run([sys.executable, "-c", REWRITE_FAILS, str(run_dir)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0 and "rewrite failed: File too large" in out.stdout, out.stdout + out.stderr
    lines = (run_dir / ROUNDS_FILE).read_text().splitlines()
    assert len(lines) == 4 and [json.loads(line)["round"] for line in lines[:3]] == [0, 1, 2]
    assert lines[3] == '{"round": 3, "lab'  # untouched: the next resume still sees what the crash left
    assert [p.name for p in run_dir.iterdir() if p.suffix == ".tmp"] == []  # and no temporary file


def test_resume_through_flowers_simulation_engine_gives_the_golden_rows(tmp_path, monkeypatch):
    # the golden simulation run (2 AL rounds, 8 clients), stopped after AL round 0 and resumed in
    # a second simulation: new Ray actors, new node ids, pools reloaded from FEDAL_STATE_DIR
    from simulations.engine import read_rows, simulate
    from tests import golden

    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "state"))
    rc = {**golden.SIMULATION_CONFIG, "run-dir": str(tmp_path / "runs")}
    with pytest.raises(RuntimeError, match="without completing the run"):
        simulate({**rc, "stop-after-round": 0}, num_clients=golden.SIMULATION_CLIENTS)
    run_dir = simulate({**rc, "resume": True}, num_clients=golden.SIMULATION_CLIENTS)
    assert golden.mismatches(golden.normalised(read_rows(run_dir)), golden.load("simulation")) == []
