"""The query pool of the pool store (issue #14): queries paid once, withdrawn ones never, exact
budgets, undo, leases, concurrent annotators in several processes, and the v1 -> v2 -> v3 and
v2 -> v3 migrations (the reserve itself: tests/test_async_reserve.py)."""

import multiprocessing as mp
import re
import sqlite3
import time

import numpy as np
import pytest

from fedal.store import BudgetSpent, PoolStore, QueryClosed, StoreError, site_store_path

ID = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp-abc")


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def open_store(path, **over):
    return PoolStore(path, **{**ID, **over})


def oracle(indices):
    return np.asarray(indices) % 7


# ---------------------------------------------------------------------------------- basics
def test_queries_are_claimed_labeled_and_paid_once(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        ids = s.add_queries([5, 6, 7], model_version=2, strategy="entropy", guesses=[1, 2, 3],
                            confidences=[0.4, 0.5, 0.6])
        assert len(ids) == 3 and [q.state for q in s.queries()] == ["open"] * 3
        p = s.progress()  # a page's counts before anyone labels (no annotator asked about: None)
        assert (p.labeled, p.open, p.claimed, p.labeled_queries, p.withdrawn, p.skipped, p.by_annotator) == (
            0, 3, 0, 0, 0, 0, None)
        q = s.next_query("ann-1")
        assert (q.id, q.index, q.model_version, q.strategy, q.guess, q.confidence) == (ids[0], 5, 2, "entropy", 1, 0.4)
        assert s.next_query("ann-1").id == q.id  # the claim comes back to its holder (a reloaded page)
        other = s.next_query("ann-2")
        assert other.id == ids[1]  # never the point another annotator holds
        r = s.submit_label(q.id, 3, "ann-1")
        assert r.paid_now and (r.query_id, r.index, r.label) == (q.id, 5, 3)
        assert s.labeled_arrays()[0].tolist() == [5] and s.pools().acquired_round == [2]
        again = s.submit_label(q.id, 3, "ann-2")  # a double click, a retried request
        assert (again.query_id, again.index, again.label, again.paid_now) == (q.id, 5, 3, False) and s.n_labeled == 1
        with pytest.raises(QueryClosed, match="already labeled 3 by ann-1; undo that label first"):
            s.submit_label(q.id, 4, "ann-2")
        assert s.n_labeled == 1 and s.labeled_arrays()[1].tolist() == [3]
        assert s.query(q.id).state == "labeled" and s.query(q.id).label == 3
        assert s.next_query("ann-1").id == ids[2]
        with pytest.raises(StoreError, match="does not exist"):
            s.submit_label(999, 1, "ann-1")
        for bad in (-1, 1.5, True):  # nothing that is not a class id is paid as one
            with pytest.raises(StoreError, match=rf"^label {bad!r} must be a class id >= 0$"):
                s.submit_label(ids[2], bad, "ann-1")
        assert s.n_labeled == 1


def test_newer_model_versions_are_asked_first_and_leases_expire(tmp_path):
    clock = FakeClock()
    with open_store(tmp_path / "p.sqlite", clock=clock) as s:
        old = s.add_queries([1, 2], model_version=1, strategy="margin")
        new = s.add_queries([3], model_version=4, strategy="entropy")
        assert s.next_query("a", lease_s=10).id == new[0]
        assert s.next_query("b", lease_s=10).id == old[0]
        assert s.progress().claimed == 2
        clock.t += 11  # a's lease ran out (its page was closed): the query goes to someone else
        assert s.next_query("c", lease_s=10).id == new[0]
        assert s.next_query("b", lease_s=10).id == old[0]  # b's lease ran out too: free, b takes it again
        assert s.progress().claimed == 2


def test_add_queries_leaves_out_labeled_open_and_pending_points_and_validates(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.acquire(0, lambda p: [0, 1], oracle)
        s.add_queries([2], 0, "random")
        with pytest.raises(ZeroDivisionError):
            s.acquire(1, lambda p: [5], lambda i: 1 / 0)  # the oracle fails: 5 stays pending
        s.skip(s.add_queries([3], 0, "random")[0], "ann")
        assert 3 not in s.candidates() and 3 in s.candidates(exclude_skipped=False)
        assert s.candidates().tolist() == [4] + list(range(6, 50))
        added = s.add_queries([0, 2, 3, 4, 5], 1, "entropy")
        assert [s.query(i).index for i in added] == [3, 4]  # a skipped point may be asked again
        assert s.candidates().tolist() == list(range(6, 50))
        n_queries, ten = len(s.queries()), ", ".join(map(str, range(50, 60)))
        for change, msg in (
                (dict(indices=[9, 9]), "the same point appears twice"),
                (dict(indices=list(range(50, 62))), rf"indices outside 0\.\.49: \[{ten}\]"),
                (dict(indices=[-1]), r"indices outside 0\.\.49: \[-1\]"),
                (dict(indices=[9.0]), "indices must be integers, got float64"),
                *((dict(model_version=v), rf"model_version = {v!r} must be an integer >= 0") for v in (-1, 1.5, True)),
                (dict(guesses=[1, 2]), r"1 points need as many guesses and confidences \(got 2 and 1\)"),
                (dict(confidences=[0.5, 0.5]), r"1 points need as many guesses and confidences \(got 1 and 2\)"),
                (dict(guesses=[-1]), "a guess is a class id >= 0"),
                *((dict(confidences=[v]), r"a confidence is a probability in \[0, 1\]")
                  for v in (float("nan"), 1.01, -0.01))):
            args = dict(indices=[9], model_version=1, strategy="x", guesses=[1], confidences=[0.5]) | change
            with pytest.raises(StoreError, match=rf"^add_queries: {msg}$"):
                s.add_queries(**args)
        assert len(s.queries()) == n_queries  # nothing was added
        # the edges are valid: version 0, class 0, probabilities 0 and 1
        assert [s.query(q).confidence for q in s.add_queries([9, 10], 0, "x", [0, 0], [0.0, 1.0])] == [0.0, 1.0]


# ---------------------------------------------------------------------------------- budgets
def test_budget_is_exact_and_open_queries_are_withdrawn_never_paid(tmp_path):
    with open_store(tmp_path / "p.sqlite", clock=FakeClock(1000.0)) as s:
        s.acquire(0, lambda p: [0, 1], oracle)
        s.set_budget(5)
        ids = s.add_queries(list(range(10, 20)), 1, "entropy")
        paid = []
        while True:
            q = s.next_query("ann")
            if q is None:
                break
            paid.append(s.submit_label(q.id, q.index % 7, "ann").index)
        assert paid == [10, 11, 12] and s.n_labeled == 5
        p = s.progress()
        assert (p.budget, p.labeled, p.remaining, p.open, p.withdrawn, p.labeled_queries) == (5, 5, 0, 0, 7, 3)
        assert p.spent and {(q.closed_by, q.closed_at) for q in s.queries("withdrawn")} == {("budget", 1000.0)}
        for qid in ids[3:]:  # a page that still shows one of them cannot pay it
            with pytest.raises(QueryClosed, match="withdrawn"):
                s.submit_label(qid, 1, "ann")
        assert s.add_queries([30, 31], 2, "entropy") == []  # nothing is asked once spent
        with pytest.raises(StoreError, match=r"^budget = 4 is below the 5 labels already paid; a budget cannot "
                                             r"un-pay labels$"):
            s.set_budget(4)
        with pytest.raises(BudgetSpent, match="exceed the budget of 5"):
            s.acquire(1, lambda p: [40], oracle)
        s.set_budget(6)  # the server grants one more label
        (qid,) = s.add_queries([30], 2, "entropy")
        assert s.submit_label(qid, 2, "ann").paid_now and s.n_labeled == 6


def test_a_query_opened_before_the_budget_was_lowered_to_the_paid_count_is_refused(tmp_path):
    with open_store(tmp_path / "p.sqlite", clock=FakeClock(1000.0)) as s:
        (qid,) = s.add_queries([7], 0, "random")
        s.set_budget(0)
        assert (s.query(qid).state, s.query(qid).closed_by, s.query(qid).closed_at) == ("withdrawn", "budget", 1000.0)
        with pytest.raises(QueryClosed):
            s.submit_label(qid, 0, "ann")
        assert s.n_labeled == 0
        for bad in (-1, 1.5, True):
            with pytest.raises(StoreError, match=rf"^budget = {bad!r} must be a count >= 0$"):
                s.set_budget(bad)
        s.set_budget(None)  # no limit again: what is asked may be paid
        assert s.budget is None and s.progress().remaining is None
        (qid,) = s.add_queries([7], 1, "random")
        assert s.submit_label(qid, 0, "ann").paid_now


def test_a_budget_spent_behind_the_stores_back_pays_nothing_and_withdraws(tmp_path):
    path = tmp_path / "p.sqlite"

    def spend_it():
        raw = sqlite3.connect(path)  # e.g. an operator's script sets the budget to what is paid
        raw.execute("UPDATE meta SET value = '1' WHERE key = 'budget'")
        raw.commit()
        raw.close()

    clock = FakeClock(1000.0)
    with open_store(path, clock=clock) as s:
        s.set_budget(5)
        a, b = s.add_queries([1, 2], 0, "random")
        s.submit_label(a, 1, "ann")
        spend_it()
        with pytest.raises(BudgetSpent, match="spent; query .* was withdrawn, not paid"):
            s.submit_label(b, 2, "ann")
        assert s.n_labeled == 1 and (s.query(b).state, s.query(b).closed_at) == ("withdrawn", 1000.0)
        s.set_budget(2)
        (c,) = s.add_queries([3], 0, "random")
        spend_it()
        clock.t = 1100.0
        assert s.next_query("ann") is None  # a page asking for the next point withdraws it
        assert (s.query(c).state, s.query(c).closed_by, s.query(c).closed_at) == ("withdrawn", "budget", 1100.0)


def test_withdrawn_and_skipped_queries_are_not_paid(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        a, b, c = s.add_queries([1, 2, 3], 0, "random")
        s.add_queries([4], 3, "entropy")
        assert s.withdraw_open(older_than=1, reason="refill") == 3  # the version-0 queries
        assert [q.state for q in s.queries()] == ["withdrawn"] * 3 + ["open"]
        with pytest.raises(StoreError, match=r"^query state 'paid' is not one of \('open', 'labeled', 'withdrawn', "
                                             r"'skipped'\)$"):
            s.queries("paid")
        with pytest.raises(QueryClosed, match=r"was withdrawn \(refill\); it is not paid"):
            s.submit_label(a, 1, "ann")
        s.add_queries([1], 3, "entropy")  # a withdrawn point may be asked again
        d = s.queries("open")[0].id
        s.skip(d, "ann")
        s.skip(d, "ann")  # idempotent
        with pytest.raises(QueryClosed, match="was skipped"):
            s.submit_label(d, 1, "ann")
        assert s.n_labeled == 0 and s.progress().skipped == 1


def test_an_acquisition_retires_open_queries_on_the_points_it_pays(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        q1, q2 = s.add_queries([3, 4], 0, "random")
        s.acquire(0, lambda p: [3, 9], oracle)
        assert s.query(q1).state == "withdrawn" and s.query(q1).closed_by == "acquisition"
        with pytest.raises(QueryClosed):
            s.submit_label(q1, 3, "ann")
        s.submit_label(q2, 4, "ann")  # al_round 0 too (the model version), but not part of round 0
        assert s.acquisition(0).indices.tolist() == [3, 9]
        assert s.n_labeled == 3


# ---------------------------------------------------------------------------------- undo
def test_undo_unpays_the_annotators_last_label_and_gives_the_query_back(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.set_budget(3)
        ids = s.add_queries([1, 2, 3, 4], 0, "random")
        for k in range(2):
            q = s.next_query("alice")
            s.submit_label(q.id, 5, "alice")
        q = s.next_query("bob")
        s.submit_label(q.id, 6, "bob")  # the budget is spent: query 4 is withdrawn
        assert s.progress().spent and s.query(ids[3]).state == "withdrawn"
        s.set_logits([2], np.ones((1, 3)))
        back = s.undo_last("alice")
        assert back.id == ids[1] and back.state == "open" and back.claimed_by == "alice" and back.label is None
        assert s.labeled_arrays()[0].tolist() == [1, 3] and 2 not in s.logits()
        p = s.progress("alice")
        assert (p.labeled, p.remaining, p.by_annotator) == (2, 1, 1)
        assert s.query(ids[3]).state == "withdrawn"  # withdrawn stays withdrawn
        assert s.next_query("bob") is None  # alice holds the reopened query
        assert s.next_query("alice").id == ids[1]
        r = s.submit_label(ids[1], 2, "alice")  # the corrected answer
        assert r.paid_now and s.n_labeled == 3 and dict(zip(*map(list, s.labeled_arrays())))[2] == 2
        assert s.undo_last("carol") is None
        assert s.undo_last("alice").id == ids[1] and s.undo_last("alice").id == ids[0]
        assert s.n_labeled == 1 and s.labeled_arrays()[0].tolist() == [3]
        assert s.undo_last("alice") is None


def test_undo_releases_the_query_the_annotator_held_meanwhile(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        a, b = s.add_queries([1, 2], 0, "random")
        s.submit_label(s.next_query("alice").id, 1, "alice")
        assert s.next_query("alice").id == b  # alice now looks at b
        assert s.undo_last("alice").id == a
        assert s.progress().claimed == 1 and s.next_query("bob").id == b  # b is free again
        assert s.next_query("alice").id == a


def test_labels_from_acquisitions_cannot_be_undone(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.acquire(0, lambda p: [1], oracle)
        assert s.undo_last("ann") is None and s.n_labeled == 1


def test_the_query_pool_persists_and_a_labeled_query_without_label_is_refused(tmp_path):
    path = tmp_path / "p.sqlite"
    with open_store(path) as s:
        s.set_budget(10)
        (a, b) = s.add_queries([11, 12], 3, "margin", guesses=[0, 1], confidences=[0.9, 0.2])
        s.submit_label(a, 4, "ann")
    with open_store(path) as s:
        assert s.budget == 10 and s.query(a).label == 4 and s.query(b).confidence == 0.2
        assert s.pools().labeled == [11]
    raw = sqlite3.connect(path)
    raw.execute("DELETE FROM labels")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match=f"query {a} is marked labeled but point 11 has no label; it holds 0 paid "
                                         "labels: do not delete it"):
        open_store(path)


# ---------------------------------------------------------------------------------- concurrency
def _annotate_worker(args):
    """One annotator process: claims and labels in a loop, and also answers queries it saw
    earlier again (as a page with a stale view, or a retried request, would)."""
    path, name, start_at, seed = args
    rng = np.random.default_rng(seed)
    s = open_store(path)
    outcomes = []  # (query id, "paid" | "again" | "closed" | "spent")
    seen = []
    time.sleep(max(0.0, start_at - time.time()))
    try:
        while True:
            q = s.next_query(name)
            if q is None and not s.queries("open"):
                break
            targets = ([q.id] if q is not None else []) + [int(v) for v in rng.choice(seen, 2)] if seen else \
                ([q.id] if q is not None else [])
            if q is not None:
                seen.append(q.id)
            for qid in targets:
                try:
                    r = s.submit_label(qid, s.query(qid).index % 7, name)
                    outcomes.append((qid, "paid" if r.paid_now else "again"))
                except BudgetSpent:
                    outcomes.append((qid, "spent"))
                except QueryClosed:
                    outcomes.append((qid, "closed"))
            # and a query somebody else may hold right now: the same point, concurrently
            others = s.queries("open")
            if others:
                qid = others[int(rng.integers(len(others)))].id
                try:
                    r = s.submit_label(qid, s.query(qid).index % 7, name)
                    outcomes.append((qid, "paid" if r.paid_now else "again"))
                except StoreError:
                    outcomes.append((qid, "closed"))
    finally:
        s.close()
    return outcomes


def test_concurrent_annotators_in_several_processes_never_pay_a_query_twice(tmp_path):
    path = str(tmp_path / "p.sqlite")
    with open_store(path) as s:
        s.set_budget(30)
        s.add_queries(list(range(40)), 1, "entropy")
    start_at = time.time() + 2.0  # every process starts labeling at the same instant
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (torch) or sqlite handles
    with ctx.Pool(4) as pool:
        results = pool.map(_annotate_worker, [(path, f"ann-{k}", start_at, k) for k in range(4)])
    paid = [qid for res in results for qid, what in res if what == "paid"]
    assert len(paid) == len(set(paid)) == 30  # each query paid once, exactly the budget
    assert sum(1 for res in results for _, what in res if what == "again") > 0  # the race was exercised
    with open_store(path) as s:
        p = s.progress()
        assert (p.labeled, p.labeled_queries, p.open, p.withdrawn, p.remaining) == (30, 30, 0, 10, 0)
        idx, lab = s.labeled_arrays()
        assert len(set(idx.tolist())) == 30 and (lab == idx % 7).all()
        assert sorted(q.id for q in s.queries("labeled")) == sorted(paid)


# ---------------------------------------------------------------------------------- migration
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE labels (pos INTEGER PRIMARY KEY AUTOINCREMENT, idx INTEGER NOT NULL UNIQUE,
    label INTEGER NOT NULL, al_round INTEGER NOT NULL, strategy TEXT NOT NULL, acquired_at REAL NOT NULL);
CREATE TABLE logits (idx INTEGER PRIMARY KEY, width INTEGER NOT NULL, values_f64 BLOB NOT NULL);
CREATE TABLE acquisitions (al_round INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed')), strategy TEXT NOT NULL,
    n_points INTEGER NOT NULL, chosen_at REAL NOT NULL, committed_at REAL);
CREATE TABLE chosen (al_round INTEGER NOT NULL, pos INTEGER NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (al_round, pos));
"""


def make_v1_store(path, experiment_id="exp-1"):
    """A file as fedal's version-1 store wrote it (issue #13): two committed rounds with logits,
    and a pending third."""
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.executescript(V1_SCHEMA)
    meta = {"schema_version": "1", "experiment_id": experiment_id, "client_id": "site-a", "n_points": "50",
            "data_fingerprint": "fp-abc", "created_at": "1.0"}
    raw.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    for r, idx in [(0, [4, 9, 2]), (1, [30, 31])]:
        raw.execute("INSERT INTO acquisitions VALUES (?, 'committed', 'random', ?, 1.0, 2.0)", (r, len(idx)))
        raw.executemany("INSERT INTO labels(idx, label, al_round, strategy, acquired_at) VALUES (?, ?, ?, 'random', 2.0)",
                        [(i, i % 7, r) for i in idx])
    raw.executemany("INSERT INTO logits VALUES (?, 2, ?)", [(i, np.array([i, -i], "<f8").tobytes()) for i in (4, 9, 2)])
    raw.execute("INSERT INTO acquisitions VALUES (2, 'pending', 'entropy', 2, 3.0, NULL)")
    raw.executemany("INSERT INTO chosen VALUES (2, ?, ?)", [(0, 11), (1, 12)])
    raw.commit()
    raw.close()


def test_a_version_1_store_with_paid_labels_is_migrated_keeping_every_label(tmp_path):
    path = tmp_path / "p.sqlite"
    make_v1_store(path)
    with open_store(path) as s:
        assert s._read("SELECT value FROM meta WHERE key = 'schema_version'")[0][0] == "3"  # via 2
        assert s.reserve() == [] and s._read("SELECT count(*) FROM meta WHERE key = 'migrated_from_v1_at'")[0][0]
        p = s.pools()
        assert p.labeled == [4, 9, 2, 30, 31] and p.labels == [4, 2, 2, 2, 3]
        assert p.acquired_round == [0, 0, 0, 1, 1] and p.logits == {2: [2.0, -2.0], 4: [4.0, -4.0], 9: [9.0, -9.0]}
        assert s.acquisition(1).indices.tolist() == [30, 31] and s.pending(2).tolist() == [11, 12]
        a = s.acquire(2, lambda p: pytest.fail("a pending round is not chosen again"), oracle)
        assert a.paid_now and a.indices.tolist() == [11, 12]
        (qid,) = s.add_queries([4, 20], 3, "entropy")  # 4 is paid: left out
        assert s.submit_label(qid, 6, "ann").paid_now and s.n_labeled == 8
    with open_store(path) as s:  # a migrated file opens as version 3 from now on
        assert s.n_labeled == 8 and s.progress().labeled_queries == 1


def test_a_version_1_store_of_another_experiment_is_refused_and_left_at_version_1(tmp_path):
    path = tmp_path / "p.sqlite"
    make_v1_store(path, experiment_id="exp-0")
    with pytest.raises(StoreError, match="experiment is 'exp-0' there but 'exp-1' here") as e:
        open_store(path)
    assert "it holds 5 paid labels: do not delete it" in str(e.value)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'queries'").fetchone()[0] == 0
    assert raw.execute("SELECT count(*) FROM labels").fetchone()[0] == 5
    raw.close()


def make_v2_store(path, experiment_id="exp-1"):
    """A file as fedal's version-2 store wrote it (issue #14): the version-1 file above plus the
    query pool (``fedal.store._SCHEMA_V2``, unchanged since), with a budget, a paid query, an open
    one and a note."""
    from fedal.store import _SCHEMA_V2, _statements

    make_v1_store(path, experiment_id)
    raw = sqlite3.connect(path)
    for st in _statements(_SCHEMA_V2):
        raw.execute(st)
    raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    raw.executemany("INSERT INTO meta VALUES (?, ?)", [("budget", "9"), ("note:refills", "3"),
                                                       ("migrated_from_v1_at", "1.5")])
    raw.execute("INSERT INTO queries(idx, model_version, strategy, state, created_at, closed_by, closed_at) "
                "VALUES (20, 1, 'entropy', 'labeled', 3.0, 'ann', 4.0)")
    raw.execute("INSERT INTO labels(idx, label, al_round, strategy, acquired_at) VALUES (20, 6, 1, 'entropy', 4.0)")
    raw.execute("INSERT INTO queries(idx, model_version, strategy, state, created_at, guess, confidence) "
                "VALUES (21, 1, 'margin', 'open', 3.0, 2, 0.5)")
    raw.commit()
    raw.close()


def test_a_version_2_store_is_migrated_to_3_keeping_its_queries_and_gets_a_reserve(tmp_path):
    path = tmp_path / "p.sqlite"
    make_v2_store(path)
    with open_store(path) as s:
        assert s._read("SELECT value FROM meta WHERE key = 'schema_version'")[0][0] == "3"
        assert s._read("SELECT count(*) FROM meta WHERE key = 'migrated_from_v2_at'")[0][0] == 1
        assert s.n_labeled == 6 and s.budget == 9 and s.note("refills") == "3" and s.reserve() == []
        assert [(q.index, q.state, q.label) for q in s.queries()] == [(20, "labeled", 6), (21, "open", None)]
        assert s.pending(2).tolist() == [11, 12]
        # the new table works: a reserve is written and promoted (21 is open: left out)
        s.set_reserve([21, 22, 23], 2, ["entropy"] * 3, low=2, refill=1)
        assert [s.query(i).index for i in s.promote_reserve()] == [22]  # 1 open + 1 promoted = low
    with open_store(path) as s:  # opens as version 3 from now on
        assert [e.index for e in s.reserve()] == [23] and s.progress().open == 2


def test_a_version_2_store_of_another_experiment_is_refused_and_left_at_version_2(tmp_path):
    path = tmp_path / "p.sqlite"
    make_v2_store(path, experiment_id="exp-0")
    with pytest.raises(StoreError, match="experiment is 'exp-0' there but 'exp-1' here"):
        open_store(path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'reserve'").fetchone()[0] == 0
    raw.close()


def test_a_simulation_store_may_skip_fsync_but_a_site_store_never_does(tmp_path):
    with open_store(tmp_path / "a.sqlite") as s:
        assert s._read("PRAGMA synchronous")[0][0] == 2  # FULL
    with open_store(tmp_path / "b.sqlite", durable=False) as s:
        assert s._read("PRAGMA synchronous")[0][0] == 0 and s._read("PRAGMA journal_mode")[0][0] == "wal"


def test_the_store_path_is_one_file_per_experiment_and_client_and_refuses_unsafe_names(tmp_path):
    assert site_store_path(tmp_path, "exp-1", "clinic-3") == tmp_path / "pools" / "exp-1" / "clinic-3.sqlite"
    for exp, cid, bad in (("../etc/passwd", "a", "experiment-id"), ("exp", "a b", "client-id"),
                          ("", "a", "experiment-id"), ("exp", ".hidden", "client-id")):
        value = exp if bad == "experiment-id" else cid
        with pytest.raises(StoreError, match=rf"^{bad} '{re.escape(value)}' is not valid: use 1-64 letters, digits, "
                                             r"'\.', '_' or '-', starting with a letter or digit \(it names a folder "
                                             r"or file of the state-dir\)$"):
            site_store_path(tmp_path, exp, cid)


def test_a_grant_raises_the_budget_once_per_key_and_never_past_one_label_per_point(tmp_path):
    with open_store(tmp_path / "a.sqlite") as s:
        n = s.n_points
        assert s.budget is None
        assert s.grant("run:0", 5) == 5 and s.budget == 5
        assert s.grant("run:0", 5) == 5 and s.budget == 5  # a resent message grants nothing more
        assert s.grant("run:1", 3) == 3 and s.budget == 8
        assert s.grant("run:2", 10 * n) == n - 8 and s.budget == n
        assert s.grant("run:3", 1) == 0 and s.budget == n
        with pytest.raises(StoreError, match="grant = -1"):
            s.grant("run:4", -1)
    with open_store(tmp_path / "a.sqlite") as s:  # another process sees the grants (a fresh ClientApp)
        assert s.grant("run:1", 3) == 3 and s.budget == n


def test_notes_outlive_the_process_and_stay_apart_from_the_stores_own_keys(tmp_path):
    with open_store(tmp_path / "a.sqlite") as s:
        assert s.note("refills") is None
        assert s.note("refills", 2) == "2"  # what is stored: a string
        s.note("budget", "junk")  # a note named like a store key does not touch the budget
        assert s.budget is None
    with open_store(tmp_path / "a.sqlite") as s:
        assert s.note("refills") == "2" and s.note("budget") == "junk" and s.budget is None


# ---------------------------------------------------------------------------------- what make mutate found
# (reports/mutation/README.md): who closed a query and when, the errors of skip, the stored logits
def test_a_skip_records_who_and_when_and_is_refused_for_unknown_or_paid_queries(tmp_path):
    clock = FakeClock(1000.0)
    with open_store(tmp_path / "p.sqlite", clock=clock) as s:
        s.set_budget(5)
        a, b = s.add_queries([4, 6], 1, "entropy")
        s.next_query("ann-1")
        clock.t = 1010.0
        q = s.skip(a, "ann-1")
        assert (q.state, q.closed_by, q.closed_at, q.claimed_by, q.lease_until) == ("skipped", "ann-1", 1010.0, None, None)
        assert s.skip(a, "ann-2").closed_by == "ann-1"  # skipping again changes nothing
        with pytest.raises(StoreError, match=rf"^query 99 does not exist in {re.escape(str(s.path))}$"):
            s.skip(99, "ann-1")
        s.submit_label(b, 2, "ann-1")
        with pytest.raises(QueryClosed, match=r"^query 2 \(point 6\) is labeled; only an open query can be skipped$"):
            s.skip(b, "ann-1")
        with pytest.raises(StoreError, match=r"annotator name '' must have 1-200 characters"):
            s.skip(a, "")


def test_withdrawn_queries_record_why_and_when_and_say_so_when_answered(tmp_path):
    clock = FakeClock(1000.0)
    with open_store(tmp_path / "p.sqlite", clock=clock) as s:
        a, _ = s.add_queries([1, 2], 0, "random")
        s.next_query("ann")
        clock.t = 1020.0
        assert s.withdraw_open() == 2  # no reason given: 'withdrawn'
        q = s.query(a)
        assert (q.state, q.closed_by, q.closed_at, q.claimed_by, q.lease_until) == (
            "withdrawn", "withdrawn", 1020.0, None, None)
        with pytest.raises(QueryClosed, match=r"^query 1 \(point 1\) was withdrawn \(withdrawn\); it is not paid$"):
            s.submit_label(a, 1, "ann")
        (c,) = s.add_queries([3], 0, "random")
        s.withdraw_open(reason="")  # no reason given: none shown
        with pytest.raises(QueryClosed, match=rf"^query {c} \(point 3\) was withdrawn; it is not paid$"):
            s.submit_label(c, 1, "ann")


def test_last_paid_names_the_query_undo_would_unpay(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.acquire(0, lambda p: [7], oracle)  # an acquisition's label is nobody's to undo
        a, b = s.add_queries([10, 20], 0, "random")
        assert s.last_paid("alice") is None
        for label in (1, 2):
            s.submit_label(s.next_query("alice").id, label, "alice")
        last = s.last_paid("alice")
        assert (last.id, last.index, last.label) == (b, 20, 2) and s.last_paid("bob") is None
        assert s.undo_last("alice").id == b and s.last_paid("alice").id == a
        with pytest.raises(StoreError, match=r"^annotator name '' must have 1-200 characters$"):
            s.last_paid("")
        assert s.last_paid("a" * 200) is None  # 200 characters: a name
        with pytest.raises(StoreError, match=r"^annotator name 'a{201}' must have 1-200 characters$"):
            s.last_paid("a" * 201)


def test_a_grant_takes_whole_counts_only_records_a_grant_of_0_and_stamps_what_it_withdraws(tmp_path):
    clock = FakeClock(1000.0)
    with open_store(tmp_path / "a.sqlite", clock=clock) as s:
        for bad in (1.5, True):
            with pytest.raises(StoreError, match=rf"^grant = {bad!r} must be a count >= 0$"):
                s.grant("run:0", bad)
        s.acquire(0, lambda p: [1, 2], oracle)
        q, _ = s.add_queries([3, 4], 0, "random")
        clock.t = 1050.0
        assert s.budget is None and s.grant("run:0", 0) == 0  # the budget: what is paid, so spent
        assert s.budget == 2 and s.grant("run:0", 5) == 0  # the key is used
        assert (s.query(q).state, s.query(q).closed_by, s.query(q).closed_at) == ("withdrawn", "budget", 1050.0)


def test_stored_logits_come_back_by_point(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.acquire(0, lambda p: [3, 8], oracle)
        s.set_logits([8, 3], [[0.5, -1.25], [2.0, 3.0]])
        assert s.logits() == {3: [2.0, 3.0], 8: [0.5, -1.25]}
        assert list(s.logits()) == [3, 8]


def test_logits_are_stored_as_float64_whatever_the_model_gives_and_bad_shapes_are_refused(tmp_path):
    with open_store(tmp_path / "p.sqlite") as s:
        s.acquire(0, lambda p: list(range(12)), oracle)
        s.set_logits([3, 8], np.array([[0.5, -1.25], [2.0, 3.0]], dtype=np.float32))  # a torch model's
        s.set_logits([5], [[1, 2]])
        kept = {3: [0.5, -1.25], 5: [1.0, 2.0], 8: [2.0, 3.0]}
        assert s.logits() == kept and s.pools().logits == kept
        for idx, logits, shape in (([3], [[1.0, 2.0], [3.0, 4.0]], "(2, 2)"), ([3, 8], [1.0, 2.0], "(2,)")):
            with pytest.raises(StoreError, match=rf"^set_logits: {len(idx)} indices need a 2-D array with "
                                                 rf"{len(idx)} rows, got shape {re.escape(shape)}$"):
                s.set_logits(idx, logits)
        with pytest.raises(StoreError, match=r"^logits are stored only for labeled points; not labeled: "
                                             r"\[12, 13, 14, 15, 16, 17, 18, 19, 20, 21\]$"):  # the first ten
            s.set_logits(list(range(12, 24)), np.ones((12, 2)))
        assert s.logits() == kept


def test_a_migration_is_stamped_with_the_stores_clock(tmp_path):
    path = tmp_path / "p.sqlite"
    make_v1_store(path)
    with open_store(path, clock=FakeClock(4321.5)) as s:
        stamps = dict(s._read("SELECT key, value FROM meta WHERE key LIKE 'migrated_from_%'"))
        assert stamps == {"migrated_from_v1_at": "4321.5", "migrated_from_v2_at": "4321.5"}
    with open_store(tmp_path / "new.sqlite", clock=FakeClock(99.5)) as s:  # a new store: when it was made
        assert s._read("SELECT value FROM meta WHERE key = 'created_at'") == [("99.5",)]
