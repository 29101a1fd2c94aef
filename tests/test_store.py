"""The durable pool store (fedal/store/): paid labels survive crashes and are paid once."""

import fcntl
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedal.pools import Pools
from fedal.store import BudgetSpent, PoolStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
ID = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp-abc")


def open_store(path, **over):
    return PoolStore(path, **{**ID, **over})


def first_unlabeled(n):
    return lambda pools: pools.unlabeled[:n]


def oracle(indices):
    return np.asarray(indices) % 7  # a deterministic "true label"


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, arg):
        self.calls.append(np.asarray(arg).copy() if not isinstance(arg, Pools) else arg)
        return self.fn(arg)


def must_not_be_called(*_):
    raise AssertionError("an already committed round must not choose or label again")


# ---------------------------------------------------------------------------------- acquisition
def test_acquire_is_idempotent_within_a_round(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:
        choose, label = Counting(first_unlabeled(4)), Counting(oracle)
        a = s.acquire(0, choose, label, strategy="random")
        assert a.paid_now and a.indices.tolist() == [0, 1, 2, 3] and a.labels.tolist() == [0, 1, 2, 3]
        assert len(choose.calls) == 1 and len(label.calls) == 1
        again = s.acquire(0, must_not_be_called, must_not_be_called)
        assert not again.paid_now
        assert again.indices.tolist() == a.indices.tolist() and again.labels.tolist() == a.labels.tolist()
        assert (s.n_labeled, s.n_unlabeled) == (4, 46)
        b = s.acquire(1, first_unlabeled(3), oracle, strategy="entropy")  # a new round pays again
        assert b.paid_now and b.indices.tolist() == [4, 5, 6]
        p = s.pools()
        assert isinstance(p, Pools) and p.labeled == [0, 1, 2, 3, 4, 5, 6]
        assert p.acquired_round == [0] * 4 + [1] * 3
        s.acquire(2, first_unlabeled(1), oracle)  # no strategy named: none recorded
        strategies = sqlite3.connect(s.path).execute("SELECT strategy FROM labels ORDER BY pos").fetchall()
        assert [r[0] for r in strategies] == ["random"] * 4 + ["entropy"] * 3 + [""]


def test_a_paid_round_is_answered_while_another_process_holds_the_acquisition_lock(tmp_path):
    path = tmp_path / "pools.sqlite"
    with open_store(path, lock_timeout=0.2) as s:
        s.acquire(0, first_unlabeled(2), oracle)
        with open(f"{path}.lock", "w") as lock:  # another process is acquiring (the server resent round 0)
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert s.acquire(0, must_not_be_called, must_not_be_called).indices.tolist() == [0, 1]
            with pytest.raises(StoreError, match=r"another process \(unknown\) has been acquiring for 0.2 s; "
                                                 r"AL round 1 was not acquired$"):
                s.acquire(1, first_unlabeled(2), must_not_be_called)
        with pytest.raises(StoreError, match=r"^al_round = -1 must be >= 0$"):
            s.acquire(-1, must_not_be_called, must_not_be_called)


def test_an_empty_acquisition_is_recorded_too(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:
        assert s.acquire(2, first_unlabeled(0), oracle).paid_now
        again = s.acquire(2, must_not_be_called, must_not_be_called)
        assert (again.al_round, again.paid_now) == (2, False) and s.n_labeled == 0
        # what a retried round's caller does with them: index its data (integer arrays, even empty)
        assert np.zeros((50, 3))[again.indices].shape == (0, 3) and again.labels.dtype == np.int64

        def oracle_down(ids):
            raise RuntimeError("the oracle is down")

        with pytest.raises(RuntimeError):  # an empty round whose oracle failed stays pending, empty
            s.acquire(3, first_unlabeled(0), oracle_down)
        assert s.pending(3).size == 0
        retried = s.acquire(3, must_not_be_called, oracle)
        assert retried.paid_now and np.zeros((50, 3))[retried.indices].shape == (0, 3)


def test_invalid_choices_and_answers_are_refused_before_paying(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:
        s.acquire(0, first_unlabeled(2), oracle)
        with pytest.raises(StoreError, match=r"already labeled \(a label would be paid twice\): \[1\]"):
            s.acquire(1, lambda p: [1, 5], oracle)
        with pytest.raises(StoreError, match=r"outside 0\.\.49: \[50\]"):
            s.acquire(1, lambda p: [50], oracle)
        with pytest.raises(StoreError, match="same index twice"):
            s.acquire(1, lambda p: [7, 7], oracle)
        assert s.pending(1) is None  # a refused choice leaves no trace
        with pytest.raises(StoreError, match=r"^AL round 1: the oracle returned \(1,\) labels for 2 points$"):
            s.acquire(1, lambda p: [8, 9], lambda i: [0], strategy="entropy")
        # the choice was valid: it stays pending, and the retry asks about the same points
        assert s.pending(1).tolist() == [8, 9]
        a = s.acquire(1, must_not_be_called, oracle)  # a restarted client, which knows no strategy
        assert a.indices.tolist() == [8, 9] and s.pending(1) is None
        # the labels are recorded as chosen by the strategy that chose them
        assert s._read("SELECT DISTINCT strategy FROM labels WHERE al_round = 1") == [("entropy",)]


def test_all_labels_of_a_batch_commit_together(tmp_path):
    path = tmp_path / "pools.sqlite"
    s = open_store(path)
    s.acquire(0, first_unlabeled(2), oracle)
    # a failure while the batch is being written (here a trigger on the 3rd point of round 1)
    # must leave none of the batch behind: the labels are one transaction
    raw = sqlite3.connect(path)
    raw.execute("CREATE TRIGGER boom BEFORE INSERT ON labels WHEN NEW.idx = 12 "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    raw.commit()
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        s.acquire(1, lambda p: [10, 11, 12, 13], oracle)
    assert s.n_labeled == 2 and s.acquisition(1) is None
    assert s.pending(1).tolist() == [10, 11, 12, 13]
    raw.execute("DROP TRIGGER boom")
    raw.commit()
    raw.close()
    label = Counting(oracle)
    a = s.acquire(1, must_not_be_called, label)
    assert a.indices.tolist() == [10, 11, 12, 13] and len(label.calls) == 1 and s.n_labeled == 6
    s.close()


def test_everything_persists_across_reopening(tmp_path):
    path = tmp_path / "pools.sqlite"
    with open_store(path) as s:
        s.acquire(0, first_unlabeled(3), oracle)
        s.acquire(1, lambda p: [20, 30], oracle)
        s.set_logits([0, 30], [[0.5, -1.25, 3.0], [1e-9, 2.0, -7.5]])
        s.set_budget(5)  # all of it paid
        before = s.pools_dict()
    with open_store(path) as s:
        assert s.pools_dict() == before and s.progress().spent
        p = s.pools()
        assert p.labeled == [0, 1, 2, 20, 30] and p.labels == [0, 1, 2, 6, 2]
        assert p.acquired_round == [0, 0, 0, 1, 1]
        assert p.logits == {0: [0.5, -1.25, 3.0], 30: [1e-9, 2.0, -7.5]}
        idx, lab = s.labeled_arrays()
        assert idx.dtype == np.int64 and idx.tolist() == [0, 1, 2, 20, 30] and lab.tolist() == [0, 1, 2, 6, 2]
        assert not s.acquire(1, must_not_be_called, must_not_be_called).paid_now
        assert Pools.from_dict(s.pools_dict()) == p  # the same form as Pools.to_dict
        with pytest.raises(StoreError, match=r"only for labeled points; not labeled: \[4\]"):
            s.set_logits([4], [[1.0, 2.0, 3.0]])


# ---------------------------------------------------------------------------------- crashes
CHILD = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from fedal.store import PoolStore
    args = json.loads(sys.argv[1])
    log = open(args["log"], "a")

    def label(indices, r):
        # the oracle's bill: one line per question asked, on disk before the answer is used
        log.write(json.dumps({"run": args["run"], "round": r, "idx": [int(i) for i in indices]}) + "\\n")
        log.flush(); os.fsync(log.fileno())
        if args.get("marker"):
            open(args["marker"], "w").close()
        time.sleep(args.get("sleep", 0.0))
        return np.asarray(indices) % 7

    s = PoolStore(args["db"], "exp-1", "site-a", args["n"], "fp-abc")
    open(args["ready"], "w").close()
    if args.get("go"):
        while not os.path.exists(args["go"]):
            time.sleep(0.005)
    out = []
    for r in args["rounds"]:
        a = s.acquire(r, lambda p: p.unlabeled[: args["w"]], lambda i, r=r: label(i, r))
        out.append({"round": r, "idx": a.indices.tolist(), "labels": a.labels.tolist(), "paid_now": a.paid_now})
    print(json.dumps(out))
""")


def spawn(**args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=60.0):
    t0 = time.monotonic()
    while not Path(path).exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.005)


def bill(log):
    return [json.loads(line) for line in Path(log).read_text().splitlines()] if Path(log).exists() else []


def test_kill_9_while_the_oracle_works_loses_nothing_and_the_retry_pays_once(tmp_path):
    db, log = tmp_path / "pools.sqlite", tmp_path / "bill.jsonl"
    with open_store(db) as s:
        s.acquire(0, first_unlabeled(5), oracle)  # an earlier, committed round
    p = spawn(db=str(db), log=str(log), run=1, n=50, w=6, rounds=[0, 1], sleep=60,
              ready=str(tmp_path / "ready"), marker=str(tmp_path / "asking"))
    wait_for(tmp_path / "asking", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [(b["round"], b["idx"]) for b in bill(log)] == [(1, [5, 6, 7, 8, 9, 10])]  # round 0 not re-asked
    with open_store(db) as s:
        assert s.n_labeled == 5 and s.acquisition(1) is None  # nothing of the interrupted batch
        assert s.pending(1).tolist() == [5, 6, 7, 8, 9, 10]
        label = Counting(oracle)
        a = s.acquire(1, must_not_be_called, label)  # the same points, asked once more
        assert len(label.calls) == 1 and label.calls[0].tolist() == [5, 6, 7, 8, 9, 10]
        assert a.paid_now and s.n_labeled == 11
        assert not s.acquire(1, must_not_be_called, must_not_be_called).paid_now


def test_kill_9_at_random_moments_keeps_whole_batches_and_never_re_asks_a_paid_round(tmp_path):
    db, log = tmp_path / "pools.sqlite", tmp_path / "bill.jsonl"
    n, w, rounds = 2000, 25, list(range(60))
    rng = np.random.default_rng(0)
    committed_before = {}
    for run in range(8):
        with open_store(db, n_points=n) as s:
            committed_before[run] = {r for r in rounds if s.acquisition(r) is not None}
        ready = tmp_path / f"ready{run}"
        p = spawn(db=str(db), log=str(log), run=run, n=n, w=w, rounds=rounds, ready=str(ready), sleep=0.002)
        wait_for(ready, p)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with open_store(db, n_points=n) as s:
            per_round = {}
            for r in s.pools().acquired_round:
                per_round[r] = per_round.get(r, 0) + 1
            assert set(per_round.values()) <= {w}, f"a batch was committed in part: {per_round}"
    with open_store(db, n_points=n) as s:
        committed_before[99] = {r for r in rounds if s.acquisition(r) is not None}
    p = spawn(db=str(db), log=str(log), run=99, n=n, w=w, rounds=rounds, ready=str(tmp_path / "ready-final"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    results = json.loads(out)
    assert {r["round"] for r in results if not r["paid_now"]} == committed_before[99]
    # every round ends with exactly w labels, each point labeled once, with the oracle's answer
    with open_store(db, n_points=n) as s:
        p_ = s.pools()
        assert len(p_.labeled) == len(set(p_.labeled)) == w * len(rounds)
        assert p_.labels == [i % 7 for i in p_.labeled]
    assert [r["round"] for r in results] == rounds
    # no round that was committed when a run started was asked about again in that run
    for b in bill(log):
        assert b["round"] not in committed_before.get(b["run"], set()), b
    asked = {}
    for b in bill(log):
        asked.setdefault(b["round"], []).append(b["idx"])
    # a round asked twice (killed between question and commit) was asked about the same points
    assert all(all(q == qs[0] for q in qs) for qs in asked.values())


def test_two_processes_acquiring_the_same_round_pay_once(tmp_path):
    db, log, go = tmp_path / "pools.sqlite", tmp_path / "bill.jsonl", tmp_path / "go"
    open_store(db).close()
    procs = [spawn(db=str(db), log=str(log), run=k, n=50, w=8, rounds=[3], sleep=0.5,
                   ready=str(tmp_path / f"ready{k}"), go=str(go)) for k in range(2)]
    for k, p in enumerate(procs):
        wait_for(tmp_path / f"ready{k}", p)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out)[0])
    assert len(bill(log)) == 1  # the oracle was asked once
    assert sorted(o["paid_now"] for o in outs) == [False, True]
    assert outs[0]["idx"] == outs[1]["idx"] == list(range(8))
    assert outs[0]["labels"] == outs[1]["labels"]
    with open_store(db) as s:
        assert s.n_labeled == 8


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("over,needle", [
    ({"experiment_id": "exp-2"}, "experiment is 'exp-1' there but 'exp-2' here"),
    ({"client_id": "site-b"}, "client is 'site-a' there but 'site-b' here"),
    ({"data_fingerprint": "fp-xyz"}, "data fingerprint is 'fp-abc' there but 'fp-xyz' here"),
    ({"n_points": 51}, "number of points is 50 there but 51 here"),
    ({"experiment_id": "exp-2", "client_id": "site-b"}, "experiment is 'exp-1' there but 'exp-2' here; client is "
     "'site-a' there but 'site-b' here. If this site's data changed, restore the data the labels were paid for; "),
])
def test_a_database_of_another_experiment_client_or_data_is_refused(tmp_path, over, needle):
    path = tmp_path / "pools.sqlite"
    with open_store(path) as s:
        s.acquire(0, first_unlabeled(3), oracle)
    with pytest.raises(StoreError) as e:
        open_store(path, **over)
    msg = str(e.value)
    assert str(path) in msg and needle in msg and "belongs to another experiment" in msg
    assert msg.endswith("it holds 3 paid labels: do not delete it; restore it (with its -wal file) from a backup, "
                        "or give this client a new state directory to start a new experiment")
    with open_store(path) as s:  # refusing changed nothing
        assert s.n_labeled == 3


def _tamper(path, *sql):
    raw = sqlite3.connect(path)
    for q in sql:
        raw.execute(q)
    raw.commit()
    raw.close()


def _store_with_labels(path):
    with open_store(path) as s:
        s.acquire(0, lambda p: [3, 4], oracle)


_HOLDS_2 = "; it holds 2 paid labels: do not delete it"  # the end of a refusal: what the file holds


@pytest.mark.parametrize("sql,needle", [
    (["UPDATE labels SET idx = 99 WHERE idx = 4"], r"labeled index 99 lies outside 0\.\.49" + _HOLDS_2),
    (["CREATE TABLE l2 AS SELECT * FROM labels", "DROP TABLE labels", "ALTER TABLE l2 RENAME TO labels",
      "INSERT INTO labels SELECT 9, 3, 5, 0, 'x', 0.0"], "index 3 is labeled 2 times; it holds 3 paid labels"),
    (["UPDATE meta SET value = '4' WHERE key = 'schema_version'"], "schema version '4'; this fedal reads version "
     "3: open it with the fedal version that wrote it; it may hold paid labels: do not delete it$"),
    (["DELETE FROM acquisitions"], "labels of AL round 0 have no committed acquisition" + _HOLDS_2),
    (["INSERT INTO reserve VALUES (0, 99, 1, 'entropy', NULL, NULL)"],
     "reserve entry 0 names point 99, outside 0..49" + _HOLDS_2),
    (["INSERT INTO logits VALUES (7, 2, zeroblob(16))"], "logits of point 7 have no label or a wrong size" + _HOLDS_2),
    (["INSERT INTO logits VALUES (3, 2, zeroblob(8))"], "logits of point 3 have no label or a wrong size" + _HOLDS_2),
    (["INSERT INTO meta VALUES ('budget', 'ten')"], "its budget 'ten' is not a count of at least the 2 paid labels"),
    (["INSERT INTO meta VALUES ('budget', '1')"], "budget '1' is not a count of at least the 2 paid labels" + _HOLDS_2),
])
def test_a_corrupt_store_is_refused_with_the_file_and_the_problem(tmp_path, sql, needle):
    path = tmp_path / "pools.sqlite"
    _store_with_labels(path)
    _tamper(path, *sql)
    with pytest.raises(StoreError, match=needle) as e:
        open_store(path)
    assert str(path) in str(e.value) and "do not delete it" in str(e.value)


_PENDING_ROUND_1 = "INSERT INTO acquisitions VALUES (1, 'pending', 'entropy', 1, 0.0, NULL)"


@pytest.mark.parametrize("idx", [50, -1])  # the first index past each end of 0..49 (n_points = 50)
@pytest.mark.parametrize("sql,needle", [
    (["UPDATE labels SET idx = {i} WHERE idx = 4"], r"labeled index {i} lies outside 0\.\.49"),
    (["INSERT INTO queries(idx, model_version, strategy, state, created_at) "
      "VALUES ({i}, 0, 'random', 'withdrawn', 0.0)"], r"query 1 asks about point {i}, outside 0\.\.49"),
    (["INSERT INTO reserve VALUES (0, {i}, 1, 'entropy', NULL, NULL)"],
     r"reserve entry 0 names point {i}, outside 0\.\.49"),
    ([_PENDING_ROUND_1, "INSERT INTO chosen VALUES (1, 0, {i})"],
     r"a chosen point \({i}, AL round 1\) does not belong to a pending acquisition or lies out of range"),
])
def test_a_stored_index_just_outside_the_pool_is_corrupt(tmp_path, sql, needle, idx):
    # the corruption checks' boundaries: index n_points is one past the last point
    path = tmp_path / "pools.sqlite"
    _store_with_labels(path)
    _tamper(path, *(q.format(i=idx) for q in sql))
    with pytest.raises(StoreError, match=needle.format(i=idx) + _HOLDS_2):
        open_store(path)


def test_the_last_point_is_a_valid_index_everywhere(tmp_path):
    # the other side of the boundary: index n_points - 1 is stored, queried and reserved
    path = tmp_path / "pools.sqlite"
    with open_store(path) as s:
        s.acquire(0, lambda p: [49], oracle)
        s.set_budget(10)
        assert len(s.add_queries([48], 1, "entropy")) == 1
        assert s.set_reserve([47], 1, ["entropy"], low=1, refill=1) == 1
    with open_store(path) as s:
        assert s.labeled_arrays()[0].tolist() == [49]
        assert [q.index for q in s.queries()] == [48] and [e.index for e in s.reserve()] == [47]
        for add in (lambda: s.add_queries([50], 1, "entropy"),
                    lambda: s.set_reserve([50], 1, ["entropy"], low=1, refill=1),
                    lambda: s.acquire(1, lambda p: [50], oracle)):
            with pytest.raises(StoreError, match=r"outside 0\.\.49: \[50\]"):
                add()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "pools.sqlite"
    path.write_text('{"size": 50, "labeled": [1]}')  # e.g. an old JSON pool file at this path
    with pytest.raises(StoreError, match="is not an SQLite database") as e:
        open_store(path)
    assert str(path) in str(e.value) and "check the state-dir path" in str(e.value)
    assert path.read_text() == '{"size": 50, "labeled": [1]}'  # left untouched
    path.write_bytes(b"x")  # even one byte is no SQLite header
    with pytest.raises(StoreError, match=r"is not an SQLite database \(its first bytes are b'x'\)"):
        open_store(path)
    path.write_bytes(b"")  # an empty file (created, never written) is where a new store may start
    with open_store(path) as s:
        assert s.n_labeled == 0


def test_a_sqlite_file_of_something_else_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    _tamper(path, "CREATE TABLE runs (id INTEGER)")
    with pytest.raises(StoreError, match=r"an SQLite database but not a fedal pool store \(no meta table\); check "
                                         r"the state-dir path$"):
        open_store(path)


def test_damaged_pages_are_refused(tmp_path):
    path = tmp_path / "pools.sqlite"
    with open_store(path) as s:
        s.acquire(0, lambda p: list(range(40)), oracle)
        s.set_logits(list(range(40)), np.ones((40, 64)))
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # move everything into the main file
    raw.close()
    data = bytearray(path.read_bytes())
    page = 4096
    # the labels table's unique index lives on page 5 (offset 4 pages); scribble over its cells
    assert len(data) > 5 * page
    for k in range(4 * page + 2000, 5 * page):
        data[k] = (k * 37) % 256
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as e:
        open_store(path)
    msg = str(e.value)
    assert str(path) in msg and "it may hold paid labels: do not delete it" in msg
    assert "fails SQLite's integrity check" in msg or "is damaged or not a readable SQLite database" in msg


def test_files_are_made_in_wal_mode_with_full_sync(tmp_path):
    path = tmp_path / "sub" / "pools.sqlite"  # the state directory is created
    with open_store(path) as s:
        assert s._read("PRAGMA journal_mode")[0][0] == "wal"
        assert s._read("PRAGMA synchronous")[0][0] == 2  # FULL
        assert s._read("PRAGMA busy_timeout")[0][0] >= 1000


# ---------------------------------------------------------------------------------- what make mutate found
def test_a_refused_store_closes_its_connection(tmp_path, monkeypatch):
    import fedal.store.database

    path = tmp_path / "pools.sqlite"
    _store_with_labels(path)
    closed = []
    real = sqlite3.connect

    class Tracked:
        def __init__(self, *a, **k):
            self._c = real(*a, **k)

        def __getattr__(self, name):
            return getattr(self._c, name)

        def close(self):
            closed.append(True)
            self._c.close()

    monkeypatch.setattr(fedal.store.database.sqlite3, "connect", Tracked)
    with pytest.raises(StoreError, match="belongs to another experiment"):
        open_store(path, client_id="site-b")
    assert closed == [True]


def test_indices_that_are_not_integers_are_refused_naming_their_type(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:
        with pytest.raises(StoreError, match=r"^AL round 0: the point strategy returned float64 indices; "
                                             r"integers expected$"):
            s.acquire(0, lambda p: np.array([1.0, 2.0]), oracle)
        assert s.n_labeled == 0


def test_a_store_file_sqlite_cannot_open_is_refused_naming_it(tmp_path):
    path = tmp_path / "pools.sqlite"
    path.symlink_to(tmp_path / "unmounted" / "pools.sqlite")  # e.g. a state dir on a disk that is gone
    with pytest.raises(StoreError, match=rf"^pool store {re.escape(str(path))} cannot be opened "
                                         r"\(unable to open database file\)"):
        open_store(path)


def test_an_acquisition_spends_the_budget_exactly_never_past_it_and_names_ten_bad_points(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:
        s.set_budget(14)
        a = s.acquire(0, first_unlabeled(12), lambda i: np.asarray(i, dtype=np.int32) % 7)
        assert a.labels.dtype == np.int64 and a.labels.tolist() == [i % 7 for i in range(12)]
        first_ten = r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]$"
        with pytest.raises(StoreError, match=r"^AL round 1: chosen indices are already labeled \(a label would be "
                                             r"paid twice\): " + first_ten):
            s.acquire(1, lambda p: list(range(12)), must_not_be_called)
        with pytest.raises(StoreError, match=r"^AL round 1: chosen indices outside 0\.\.49: "
                                             r"\[50, 51, 52, 53, 54, 55, 56, 57, 58, 59\]$"):
            s.acquire(1, lambda p: list(range(50, 62)), must_not_be_called)
        with pytest.raises(BudgetSpent, match=r"^AL round 1: 3 more labels would exceed the budget of 14 "
                                              r"\(12 paid\)$"):
            s.acquire(1, lambda p: [20, 21, 22], must_not_be_called)
        with pytest.raises(StoreError, match=r"^AL round 1: the oracle returned float64 labels; integer class "
                                             r"ids expected$"):
            s.acquire(1, lambda p: [20, 21], lambda i: [0.0, 1.0])
        assert s.acquire(1, must_not_be_called, oracle).paid_now and s.n_labeled == 14  # to the last label


def test_a_batch_that_labelers_overtook_while_the_oracle_worked_stays_pending(tmp_path):
    with open_store(tmp_path / "pools.sqlite") as s:

        def oracle_while_people_pay(queries):  # a person pays these queries while the oracle works
            def label(ids):
                for q in queries:
                    s.submit_label(q, 0, "ann")
                return oracle(ids)
            return label

        s.set_budget(30)
        queries = s.add_queries(list(range(20, 31)), 0, "random")
        with pytest.raises(StoreError, match=r"^AL round 0: points \[20, 21, 22, 23, 24, 25, 26, 27, 28, 29\] were "
                                             r"labeled through the query pool after they were chosen; the round "
                                             r"stays pending \(a label would be paid twice\)$"):
            s.acquire(0, lambda p: list(range(20, 32)), oracle_while_people_pay(queries))
        assert s.pending(0).tolist() == list(range(20, 32)) and s.n_labeled == 11
        s.set_budget(21)  # 11 paid; round 1 chooses 8 (19), and 2 more are paid meanwhile: 21, exactly
        s.acquire(1, lambda p: list(range(8)), oracle_while_people_pay(s.add_queries([40, 41], 0, "random")))
        assert s.n_labeled == 21
        s.set_budget(24)  # round 2 chooses 3 (24), but 1 more is paid meanwhile
        with pytest.raises(BudgetSpent, match=r"^AL round 2: 3 more labels would exceed the budget of 24 \(22 paid\); "
                                              r"the round stays pending$"):
            s.acquire(2, lambda p: [10, 11, 12], oracle_while_people_pay(s.add_queries([42], 0, "random")))
        assert s.pending(2).tolist() == [10, 11, 12] and s.n_labeled == 22


def test_a_store_is_refused_without_its_identity_a_write_ahead_log_or_its_lock(tmp_path, monkeypatch):
    import fedal.store.database

    with pytest.raises(StoreError, match=rf"^pool store {re.escape(str(tmp_path / 'a.sqlite'))}: experiment_id must "
                                         r"not be empty$"):
        open_store(tmp_path / "a.sqlite", experiment_id="")
    with pytest.raises(StoreError, match=r": n_points = -1 must be >= 0$"):
        open_store(tmp_path / "a.sqlite", n_points=-1)
    with open_store(tmp_path / "a.sqlite", n_points=0) as s:  # a site without data yet
        idx, lab = s.labeled_arrays()
        assert s.n_unlabeled == 0 and np.zeros(0)[idx].size == 0 and lab.dtype == np.int64
    # SQLite keeps no write-ahead log there (an in-memory file here, a network disk at a site)
    with pytest.raises(StoreError, match=r"^pool store :memory:: SQLite refused WAL mode \(memory\); put the state "
                                         r"directory on a local disk$"):
        open_store(":memory:")
    monkeypatch.setattr(fedal.store.database, "BUSY_TIMEOUT_MS", 1000)
    path = tmp_path / "b.sqlite"
    open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writes, and goes on writing
    try:
        with pytest.raises(StoreError, match=r"stayed locked by another process for 1 s; retry, or stop the "
                                             r"process that holds it$"):
            open_store(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_store_failing_the_integrity_check_is_refused_naming_the_first_three_problems(tmp_path):
    path = tmp_path / "pools.sqlite"
    with open_store(path) as s:
        s.add_queries([1, 2, 3, 4, 5], 0, "random")
    # an index whose entries no longer match its rows (as a torn write may leave it); the rows still read
    _tamper(path, "PRAGMA writable_schema = ON",
            "UPDATE sqlite_master SET sql = replace(sql, 'ON queries(idx)', 'ON queries(model_version)') "
            "WHERE name = 'queries_one_open'")
    first_three = "; ".join(f"row {i} missing from index queries_one_open" for i in (1, 2, 3))
    with pytest.raises(StoreError, match=rf"^pool store {re.escape(str(path))} fails SQLite's integrity check "
                                         rf"\({first_three}\); it may hold paid labels: do not delete it"):
        open_store(path)
