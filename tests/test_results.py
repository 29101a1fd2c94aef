"""The run directory (fedal/results.py): a new run starts afresh, a resumed one keeps what the
checkpoint vouches for, and every rewrite is whole (tests/test_resume.py runs the loop on it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedal.results import (CHECKPOINT_FILE, CONFIG_FILE, Q_FILE, ROUNDS_FILE, SUMMARY_FILE, ResultsMismatch,
                           RunRecorder)


def rows(n: int) -> list[dict]:
    return [{"round": i, "labels": 10 * (i + 1), "accuracy": 0.5 + i / 100} for i in range(n)]


def on_file(run_dir) -> list[str]:
    return (run_dir / ROUNDS_FILE).read_text().splitlines()


def recorded(tmp_path, n: int, **config):
    """A run directory (in a folder not made yet) with ``n`` rows, a q.npz, a checkpoint and a summary."""
    run_dir = tmp_path / "runs" / "r"
    rec = RunRecorder(run_dir, {"started": "t0", "seed": 0, **config})
    for row in rows(n):
        rec.add_round(row)
    rec.add_arrays({"q0": np.eye(2)})
    (run_dir / CHECKPOINT_FILE).write_bytes(b"ck")
    rec.finish({"final_accuracy": 0.6})
    return run_dir, rec


def test_rows_are_appended_one_json_line_each_and_readable_at_once(tmp_path):
    run_dir, rec = recorded(tmp_path, 3)
    assert [json.loads(line) for line in on_file(run_dir)] == rows(3) == rec.rows
    assert on_file(run_dir)[0] == json.dumps(rows(1)[0], sort_keys=True)  # keys sorted, one per line
    # config.json for people and diffs: indented, keys sorted
    assert (run_dir / CONFIG_FILE).read_text() == '{\n  "seed": 0,\n  "started": "t0"\n}'
    assert json.loads((run_dir / SUMMARY_FILE).read_text()) == {"completed": True, "final_accuracy": 0.6}
    assert (run_dir / SUMMARY_FILE).read_text().startswith('{\n  "completed": true')  # indented for people
    with np.load(run_dir / Q_FILE) as z:
        assert z.files == ["q0"] and np.array_equal(z["q0"], np.eye(2))


def test_arrays_accumulate_in_one_file_rewritten_whole(tmp_path):
    run_dir, rec = recorded(tmp_path, 1)
    rec.add_arrays({"q1": np.ones(3)})
    rec.add_arrays({"q0": np.zeros(1)})  # the same name again: replaced
    with np.load(run_dir / Q_FILE) as z:
        assert sorted(z.files) == ["q0", "q1"] and z["q0"].tolist() == [0.0] and z["q1"].tolist() == [1.0] * 3
    assert not [p for p in run_dir.iterdir() if p.suffix == ".tmp"]


def test_a_new_run_into_a_used_directory_starts_afresh(tmp_path):
    run_dir, _ = recorded(tmp_path, 2)
    (run_dir / "log.txt").write_text("kept")  # not the recorder's: left alone
    rec = RunRecorder(run_dir, {"seed": 1, "started": "t1"})
    for name in (ROUNDS_FILE, SUMMARY_FILE, Q_FILE, CHECKPOINT_FILE):
        assert not (run_dir / name).exists(), name
    assert rec.rows == [] and rec.arrays == {} and (run_dir / "log.txt").read_text() == "kept"
    assert json.loads((run_dir / CONFIG_FILE).read_text()) == {"seed": 1, "started": "t1"}


def test_a_resumed_run_keeps_its_start_rows_and_arrays_and_notes_each_resume(tmp_path):
    run_dir, _ = recorded(tmp_path, 2)
    rec = RunRecorder(run_dir, {"seed": 0, "started": "t1"}, resume=True)
    assert not (run_dir / SUMMARY_FILE).exists()  # not finished any more
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == b"ck" and len(on_file(run_dir)) == 2
    assert list(rec.arrays) == ["q0"] and np.array_equal(rec.arrays["q0"], np.eye(2))
    assert json.loads((run_dir / CONFIG_FILE).read_text()) == {"seed": 0, "started": "t0", "resumed": ["t1"]}
    RunRecorder(run_dir, {"seed": 0, "started": "t2"}, resume=True)
    assert json.loads((run_dir / CONFIG_FILE).read_text())["resumed"] == ["t1", "t2"]
    # a resume into an empty directory: its own start, nothing to load
    rec = RunRecorder(tmp_path / "fresh", {"started": "t3"}, resume=True)
    assert rec.arrays == {} and json.loads((tmp_path / "fresh" / CONFIG_FILE).read_text()) == \
        {"started": "t3", "resumed": ["t3"]}


@pytest.mark.parametrize("extra", ["", "whole row", "cut row"])
def test_resume_from_keeps_the_checkpoints_rows_and_drops_one_more(tmp_path, extra):
    run_dir, _ = recorded(tmp_path, 3)
    if extra:
        with open(run_dir / ROUNDS_FILE, "a") as f:
            row = json.dumps({"round": 3, "labels": 40, "accuracy": 0.9}, sort_keys=True)
            f.write(row + "\n" if extra == "whole row" else row[:12])
    rec = RunRecorder(run_dir, {"seed": 0}, resume=True)
    rec.resume_from(rows(3))
    assert on_file(run_dir) == [json.dumps(r, sort_keys=True) for r in rows(3)] and rec.rows == rows(3)
    rec.add_round(rows(4)[3])
    assert [json.loads(line) for line in on_file(run_dir)] == rows(4)


def test_resume_from_accepts_a_file_that_lacks_the_last_rows(tmp_path):
    run_dir, _ = recorded(tmp_path, 1)
    rec = RunRecorder(run_dir, {"seed": 0}, resume=True)
    rec.resume_from(rows(3))  # the checkpoint is ahead of the file (rows flushed late)
    assert [json.loads(line) for line in on_file(run_dir)] == rows(3)
    (run_dir / ROUNDS_FILE).unlink()
    RunRecorder(run_dir, {"seed": 0}, resume=True).resume_from(rows(2))  # no file at all
    assert [json.loads(line) for line in on_file(run_dir)] == rows(2)


OTHER_RUN = (r": the directory holds another run's results; move them away, or set resume = false to start "
             r"afresh$")


@pytest.mark.parametrize("damage,needle", [
    (lambda lines: [lines[0], '{"round": 1, "lab', lines[2]],
     r"line 2 is not JSON; move the results away, or set resume = false to start afresh$"),
    (lambda lines: [lines[0], json.dumps({**json.loads(lines[1]), "accuracy": 0.1}), lines[2]],
     r"does not match the checkpoint \(row 1 differs, or the file holds 3 rows where the checkpoint has 3\)"
     + OTHER_RUN),
    (lambda lines: lines + [lines[2], lines[2]],
     r"\(row 3 differs, or the file holds 5 rows where the checkpoint has 3\)" + OTHER_RUN),
])
def test_resume_from_refuses_rows_of_another_run(tmp_path, damage, needle):
    run_dir, _ = recorded(tmp_path, 3)
    before = "\n".join(damage(on_file(run_dir))) + "\n"
    (run_dir / ROUNDS_FILE).write_text(before)
    rec = RunRecorder(run_dir, {"seed": 0}, resume=True)
    with pytest.raises(ResultsMismatch, match=needle) as e:
        rec.resume_from(rows(3))
    assert str(run_dir / ROUNDS_FILE) in str(e.value) and "resume = false" in str(e.value)
    assert (run_dir / ROUNDS_FILE).read_text() == before and rec.rows == []  # nothing rewritten
