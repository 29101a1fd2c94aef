"""The reserve of a people site (annotators = "people"; docs/labeling.md, "How it behaves"): each
message with a model leaves in the site's store the queries the next refills would add, ranked by
that model (fedal/async_labeling.py, ``PeopleSite.write_reserve``), and the labeling page opens
them when the pool runs low between messages (``PoolStore.promote_reserve``), so a person who
empties the pool does not wait for the next FL round. Messages go through the persistent node
worker (``fedal.deploy.node_worker.handle``), as in tests/test_async_people.py; the person labels
through the page's routes (``create_app``) or the store."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedal.store import PoolStore, StoreError

RC = {"dataset": "digits", "labeling": "async", "annotators": "people", "labeling-deadline-s": 60.0,
      "query-pool-low": 2, "query-pool-refill": 4}  # async-workers: entropy, least-confidence, margin
TOKEN = "reserve-test-token-0123456789"
N = 60


@pytest.fixture
def site(tmp_path):
    """A site with 60 unlabeled points and a way to send it query.labeling messages."""
    from fedal import client as fc
    from fedal.client_data import load_node_data
    from fedal.deploy import node_worker
    from fedal.store import backends

    rng = np.random.default_rng(0)
    (tmp_path / "site").mkdir()
    np.savez(tmp_path / "site" / "d.npz", x=rng.random((N, 64), dtype=np.float32), y=rng.integers(0, 10, N))
    nc = {"data-path": str(tmp_path / "site" / "d.npz"), "client-id": "clinic-1", "state-dir": str(tmp_path / "st")}

    class Site:
        def send(self, al_round, grant, arrays=None, version=0, finish=False, run="tok", recount=False):
            conf = {"run": run, "now": 0.0, "al-round": al_round, "model-version": version, "grant": grant,
                    "finish": finish, **({"recount": True} if recount else {})}
            r = node_worker.handle({"kind": "labeling", "run_config": RC, "node_config": nc, "config": conf,
                                    "arrays": arrays})
            assert r["ok"], r
            backends._OPEN_STORES.clear()  # as a fresh process would
            return r["reply"].metrics()

        def arrays(self, seed=None):
            """A model's arrays; ``seed``: its weights moved at random (a later global model)."""
            model = fc.ClientWorker(self.data, self.store).model()
            out = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            if seed is not None:
                g = np.random.default_rng(seed)
                out = {k: (v + g.normal(0, 0.5, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
                       for k, v in out.items()}
            return out

    s = Site()
    s.data = load_node_data(RC, nc)
    s.store = backends.node_pool_store(s.data, Path(nc["state-dir"]))
    s.db: PoolStore = s.store.db
    s.y = s.data.y
    yield s
    backends._OPEN_STORES.clear()
    s.db.close()


def page_client(site, store: PoolStore | None = None, session: str | None = None):
    """A labeling page on ``store`` (default: the ClientApp's connection) and a browser on it
    (``session``: its session cookie, one per person)."""
    from fedal.annotate.app import SESSION_COOKIE, LabelingSite, create_app

    page = LabelingSite(store or site.db, site.data.x, [str(c) for c in range(10)], TOKEN, annotator="person")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        return TestClient(create_app(page), base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"},
                          cookies={SESSION_COOKIE: session} if session else None)


def label_on_the_page(client, y, most: int = 10_000) -> list[int]:
    """A person labels on the page until it shows no query: the points paid, in order."""
    paid = []
    while len(paid) < most:
        html = client.get("/").text
        m = re.search(r'data-query-id="(\d+)" data-index="(\d+)"', html)
        if m is None:
            assert 'id="empty"' in html
            break
        qid, idx = int(m.group(1)), int(m.group(2))
        r = client.post("/label", data={"query_id": qid, "label": int(y[idx])}, follow_redirects=False)
        assert r.status_code == 303 and "note=" not in r.headers["location"], r.headers["location"]
        paid.append(idx)
    return paid


def entries(reserve):
    return [(e.index, e.strategy, e.model_version, e.guess, e.confidence) for e in reserve]


def test_a_person_who_empties_the_pool_gets_the_reserve_without_another_message(site):
    m = site.send(0, 30)  # round 0: a grant, random queries, no model yet: no reserve
    assert (m["granted"], m["open"]) == (30, 4) and site.db.reserve() == []
    for _ in range(3):  # one query stays open, fewer than query-pool-low
        q = site.db.next_query("someone")
        site.db.submit_label(q.id, int(site.y[q.index]), "someone")
    m = site.send(1, 0, site.arrays(), version=3)  # AL round 1, with a model: a refill and a reserve
    assert m["open"] == 5 and m["paid"] == 3
    reserve = site.db.reserve()
    assert len(reserve) == 4 * RC["query-pool-refill"]  # RESERVE_REFILLS refills' worth
    open_now = {q.index for q in site.db.queries("open")}
    assert not open_now & {e.index for e in reserve}  # after the open queries
    assert {e.model_version for e in reserve} == {1}  # the AL round the refill would tag
    assert {e.strategy for e in reserve} == {"entropy", "least-confidence", "margin"}
    assert all(e.guess is not None and 0 <= e.confidence <= 1 for e in reserve)
    last_id = max(q.id for q in site.db.queries())
    refills = int(site.db.note("refills"))

    # the person labels on the page, with no message from the ClientApp: the 5 open queries,
    # then the reserve's 16, opened query-pool-refill at a time, in the reserve's order
    paid = label_on_the_page(page_client(site), site.y)
    assert len(paid) == 5 + 16 and len(set(paid)) == len(paid)
    promoted = [q for q in site.db.queries() if q.id > last_id]
    assert entries(promoted) == entries(reserve)  # measure, AL round, guess and confidence kept
    assert all(q.state == "labeled" for q in promoted) and site.db.reserve() == []
    assert int(site.db.note("refills")) == refills + 4  # each promotion is a refill
    p = site.db.progress()
    assert (p.labeled, p.open, p.budget) == (3 + 21, 0, 30)
    # the labels carry the AL round of the message: training (AL rounds up to the current) uses them
    pools = site.db.pools()
    rounds = dict(zip(pools.labeled, pools.acquired_round))
    assert all(rounds[q.index] == 1 for q in promoted)
    m = site.send(1, 0, site.arrays(), version=4)  # the next message counts them
    assert (m["paid"], m["n-labeled"]) == (24, 24)


def test_people_on_several_pages_at_once_never_pay_a_point_twice_nor_past_the_budget(site):
    """Four people, two on each of two pages (two processes' connections to the store), label at
    once from the same pool and reserve until the budget is spent: each point is paid once, the
    budget exactly, and no query is opened that the budget cannot pay (none is withdrawn)."""
    site.send(0, 15)
    for _ in range(3):
        q = site.db.next_query("someone")
        site.db.submit_label(q.id, int(site.y[q.index]), "someone")
    site.send(1, 0, site.arrays(), version=3)
    assert len(site.db.reserve()) == 16 and site.db.progress().open == 5  # 5 + 16 > the 12 still to pay
    i = site.db.identity
    other = PoolStore(site.db.path, i["experiment_id"], i["client_id"], int(i["n_points"]), i["data_fingerprint"])
    clients = [page_client(site, st, f"person-{k}") for k, st in enumerate([site.db, site.db, other, other])]
    start, paid, errors = threading.Barrier(len(clients)), [[] for _ in clients], []

    def person(k):
        try:
            start.wait()
            paid[k] = label_on_the_page(clients[k], site.y)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=person, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.close()
    assert not errors, errors
    everyone = [i for p in paid for i in p]
    assert len(everyone) == len(set(everyone)) == 12 and sum(1 for p in paid if p) > 1
    p = site.db.progress()
    assert (p.labeled, p.remaining, p.open, p.withdrawn) == (15, 0, 0, 0)
    asked = [q.index for q in site.db.queries()]
    assert len(asked) == len(set(asked))


def test_the_reserve_is_what_the_next_refills_would_add_in_turn(site):
    """Worker rotation: refill r lets worker r mod 3 go first. The reserve, written after refill 1
    (round 0's, random; at round 1 the pool was not low), is what refills 2, 3, 4 and 5 add with
    the same model: the same points, measures, guesses and confidences, in the same order."""
    site.send(0, 50)
    arrays = site.arrays(seed=1)
    site.send(1, 0, arrays, version=3)
    reserve = site.db.reserve()
    assert site.db.note("refills") == "1" and len(reserve) == 16
    # each refill of four: two for the worker that goes first, one each for the others, in turn
    assert [e.strategy for e in reserve] == ["margin", "margin", "entropy", "least-confidence",  # refill 2
                                             "entropy", "entropy", "least-confidence", "margin",  # 3
                                             "least-confidence", "least-confidence", "margin", "entropy",  # 4
                                             "margin", "margin", "entropy", "least-confidence"]  # 5
    people = people_site(site, arrays)  # what the next messages would do
    last_id = max(q.id for q in site.db.queries())
    for _ in range(4):
        assert people.refill() == 4
    added = [q for q in site.db.queries() if q.id > last_id]
    assert entries(added) == entries(reserve)


def test_promotions_never_pass_the_budget_nor_ask_a_point_twice_under_concurrency(tmp_path):
    """Threads, each with its own connection (as page requests of several processes) and two
    sharing one, promote, claim and pay at once: every point is asked at most once, exactly the
    budget is paid, and no promotion opens more than the budget can still pay (nothing is left
    to withdraw when it is spent)."""
    path = tmp_path / "p.sqlite"
    ident = dict(experiment_id="exp-1", client_id="site-a", n_points=200, data_fingerprint="fp")
    with PoolStore(path, **ident) as s:
        s.set_budget(37)
        s.set_reserve(list(range(150)), 2, ["entropy", "margin", "least-confidence"] * 50,
                      low=5, refill=8, count_note="refills")
    stores = [PoolStore(path, **ident) for _ in range(5)]
    shared = stores[0]
    who = [stores[k] for k in range(5)] + [shared]  # six threads, two on one connection
    start = threading.Barrier(len(who))
    errors, promoted, over = [], [], []

    def person(k, s):
        try:
            start.wait()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                got = s.promote_reserve()
                promoted.extend(got)
                p = s.progress()
                if p.open > p.remaining:
                    over.append((p.open, p.remaining))
                q = s.next_query(f"ann-{k}")
                if q is None:
                    if s.progress().spent:
                        return
                    continue
                try:
                    s.submit_label(q.id, q.index % 7, f"ann-{k}")
                except Exception as e:  # noqa: BLE001 - a query withdrawn meanwhile is fine, not a payment
                    if type(e).__name__ not in ("QueryClosed", "BudgetSpent"):
                        raise
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=person, args=(k, s)) for k, s in enumerate(who)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    try:
        s = stores[1]
        qs = s.queries()
        idx = [q.index for q in qs]
        assert len(idx) == len(set(idx)), "a point was asked twice"
        assert sorted(q.id for q in qs) == sorted(promoted)  # every query came from a promotion
        p = s.progress()
        assert (p.labeled, p.remaining, p.open, p.withdrawn) == (37, 0, 0, 0)
        assert not over, over[:3]
        # the reserve was taken in order: the queries are its first entries
        assert sorted(idx) == list(range(len(idx)))
        assert int(s.note("refills")) >= 37 // 8
        # the budget is spent: nothing more is promoted
        assert s.promote_reserve() == [] and s.progress().open == 0
    finally:
        for st in stores:
            st.close()


def test_a_spent_budget_promotes_nothing_and_withdraws_what_is_open(tmp_path):
    path = tmp_path / "p.sqlite"
    ident = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp")
    with PoolStore(path, **ident, clock=lambda: 1234.5) as s:
        assert s.promote_reserve() == []  # no reserve (a simulated site's store, a v2 file migrated)
        s.set_budget(3)
        s.add_queries([1, 2], 0, "random")
        s.set_reserve([5, 6, 7, 8], 1, ["entropy"] * 4, low=5, refill=4)
        assert [s.query(i).index for i in s.promote_reserve()] == [5]  # 2 open + 1: what 3 labels can pay
        for q in s.queries("open")[:2]:
            s.submit_label(q.id, 0, "ann")
        assert s.promote_reserve() == [] and s.progress().open == 1  # 2 paid, 1 open: nothing more to pay
        raw = sqlite3.connect(path)  # the budget is spent behind the store's back (an operator's script)
        raw.execute("UPDATE meta SET value = '2' WHERE key = 'budget'")
        raw.commit()
        raw.close()
        assert s.promote_reserve() == []
        p = s.progress()
        assert (p.open, p.withdrawn, p.labeled) == (0, 1, 2)
        assert {(q.closed_by, q.closed_at) for q in s.queries("withdrawn")} == {("budget", 1234.5)}
        assert [e.index for e in s.reserve()] == [6, 7, 8]  # kept, for a budget that grows again
        s.set_budget(None)  # no budget: the store cannot tell what may be paid, nothing is promoted
        assert s.promote_reserve() == []


def test_the_reserve_is_promoted_only_when_fewer_than_low_are_open_and_only_with_its_settings(tmp_path):
    path = tmp_path / "p.sqlite"
    ident = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp")
    with PoolStore(path, **ident) as s:
        s.set_budget(10)
        _, b = s.add_queries([1, 2], 0, "random")
        s.set_reserve([2, 5, 6, 7], 1, ["entropy"] * 4, low=2, refill=2, count_note="refills")
        assert s.promote_reserve() == []  # 2 open, low = 2: not low yet
        s.skip(b, "ann")  # point 2: the annotator cannot tell; it is not asked again
        assert [s.query(i).index for i in s.promote_reserve()] == [5, 6]
        assert s.note("refills") == "1"  # the site's first refill
        for _ in range(2):  # 1 open: low again
            s.submit_label(s.next_query("ann").id, 0, "ann")
        raw = sqlite3.connect(path)  # a setting lost (an operator's script): the page must go on
        raw.execute("DELETE FROM meta WHERE key = 'reserve:refill'")
        raw.commit()
        raw.close()
        assert s.promote_reserve() == [] and [e.index for e in s.reserve()] == [7] and s.note("refills") == "1"


def test_a_new_message_replaces_the_reserve_and_the_last_one_clears_it(site):
    site.send(0, 40)
    site.send(1, 0, site.arrays(seed=1), version=3)
    first = site.db.reserve()
    assert first and {e.model_version for e in first} == {1}
    assert site.db.promote_reserve() == []  # the pool is not low: nothing opened
    q = site.db.next_query("someone")  # the page pays a query meanwhile
    site.db.submit_label(q.id, int(site.y[q.index]), "someone")
    site.send(2, 0, site.arrays(seed=2), version=5)  # AL round 2, a newer model
    second = site.db.reserve()
    assert len(second) == 16 and {e.model_version for e in second} == {2}  # nothing of the old one
    assert not {q.index for q in site.db.queries("open")} & {e.index for e in second}
    assert [(e.index, e.guess) for e in second] != [(e.index, e.guess) for e in first]  # the newer ranking
    # the run's last message: the reserve goes first, so the page opens nothing after the withdrawal
    m = site.send(2, 0, finish=True)
    assert m["open"] == 0 and m["withdrawn-at-end"] == 3 and site.db.reserve() == []
    assert not site.db.progress().spent
    assert label_on_the_page(page_client(site), site.y) == [] and site.db.progress().open == 0


def test_a_message_that_finds_the_budget_spent_leaves_no_reserve(site):
    site.send(0, 5)
    for _ in range(3):
        q = site.db.next_query("someone")
        site.db.submit_label(q.id, int(site.y[q.index]), "someone")
    site.send(1, 0, site.arrays(), version=3)
    assert len(site.db.reserve()) == 16
    paid = label_on_the_page(page_client(site), site.y)
    assert len(paid) == 2 and site.db.progress().spent and site.db.progress().open == 0
    site.send(1, 0, site.arrays(seed=1), version=4)
    assert site.db.reserve() == []


def test_set_reserve_refuses_bad_input_naming_it_and_stamps_when_it_was_ranked(tmp_path):
    ident = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp")
    with PoolStore(tmp_path / "p.sqlite", **ident, clock=lambda: 1234.5) as s:
        for points, tags, low, refill, msg in (
                ([1, 2], ["entropy"], 2, 4, r"2 points need as many strategies \(got 1\)"),
                ([1, 99], ["entropy"] * 2, 2, 4, r"indices outside 0\.\.49: \[99\]"),
                ([1], ["entropy"], -1, 4, r"low = -1 must be a count >= 0"),
                ([1], ["entropy"], True, 4, r"low = True must be a count >= 0"),
                ([1], ["entropy"], 2, 1.5, r"refill = 1\.5 must be a count >= 0")):
            with pytest.raises(StoreError, match=rf"^set_reserve: {msg}$"):
                s.set_reserve(points, 0, tags, low=low, refill=refill)
        assert s.reserve() == []
        s.set_budget(10)
        # query-pool-low = 0 (fedal/config.py allows it): the page never refills between messages
        assert s.set_reserve([1, 2], 0, ["entropy"] * 2, low=0, refill=0) == 2 and s.promote_reserve() == []
        # when the reserve was ranked, for whoever reads the site's file (the meta table)
        assert s._read("SELECT value FROM meta WHERE key = 'reserve:set_at'") == [("1234.5",)]


def pay(site, n: int) -> list[int]:
    """Someone pays ``n`` open queries (true labels) through the store, as the page would."""
    paid = []
    for _ in range(n):
        q = site.db.next_query("someone")
        site.db.submit_label(q.id, int(site.y[q.index]), "someone")
        paid.append(int(site.y[q.index]))
    return paid


def test_a_people_sites_reply_counts_its_new_labels_per_run_and_all_of_them_on_recount(site):
    """acquired-per-class: the labels paid since this run's last reply (a note per run token in
    the store), all of them again for a resumed server (recount) and for another run's first
    reply; granted-run: what this run granted the site, not what the store holds from others."""
    assert site.send(0, 10)["partition-id"] == site.data.partition_id
    paid = np.bincount(pay(site, 3), minlength=10).tolist()
    m = site.send(1, 0)
    assert m["acquired-per-class"] == paid and (m["granted-run"], m["granted"]) == (10, 10)
    assert site.send(1, 0)["acquired-per-class"] == [0] * 10  # reported once
    assert site.send(1, 0, recount=True)["acquired-per-class"] == paid  # a resumed server counts afresh
    m = site.send(0, 5, run="another-run")  # another run on the same site (the same store)
    assert m["acquired-per-class"] == paid and (m["granted-run"], m["granted"], m["granted-now"]) == (5, 15, 5)
    assert site.send(1, 0)["acquired-per-class"] == [0] * 10  # the first run's count was kept apart


def test_new_per_class_counts_since_the_last_call_by_default(site):
    from fedal import client as fc
    from fedal.async_labeling import PeopleSite

    site.send(0, 10)
    paid = np.bincount(pay(site, 2), minlength=10)
    worker = fc.ClientWorker(site.data, site.store)
    people = PeopleSite(worker, "a-token")
    first = people.new_per_class(worker.pools())
    assert first.tolist() == paid.tolist() and first.dtype.kind == "i"  # counts
    assert people.new_per_class(worker.pools()).tolist() == [0] * 10


def test_the_last_message_withdraws_for_the_run_end_and_marks_the_run_finished_for_the_page(site):
    from fedal.annotate.annotators import RunState, run_state

    site.send(0, 10)
    assert run_state(site.db) == RunState(finished=False, dataset="digits")  # the page: labeling, on digits
    pay(site, 1)
    m = site.send(0, 0, finish=True)
    assert (m["granted-now"], m["withdrawn-at-end"], m["refills"]) == (0, 3, int(site.db.note("refills"))) == (0, 3, 1)
    assert [q.closed_by for q in site.db.queries("withdrawn")] == ["run-end"] * 3  # the page says why
    assert run_state(site.db) == RunState(finished=True, dataset="digits")


def test_a_site_that_never_refilled_reports_no_refills(site):
    m = site.send(0, 0, finish=True)  # asked nothing in the run (granted nothing)
    assert (m["granted-now"], m["refills"], m["withdrawn-at-end"]) == (0, 0, 0)


def people_site(site, arrays=None):
    """The site's PeopleSite as a message would build it, with the model ``arrays`` (if given)."""
    import torch

    from fedal import client as fc
    from fedal.async_labeling import PeopleSite

    people = PeopleSite(fc.ClientWorker(site.data, site.store), "tok")
    if arrays is not None:
        people.version, people.state_dict = 1, {k: torch.from_numpy(v) for k, v in arrays.items()}
    return people


def test_a_reserve_ranked_before_any_refill_is_what_refills_1_to_4_add(site):
    people = people_site(site)
    assert people.grant("tok:0", 30) == 30
    assert people.write_reserve() == 0 and site.db.reserve() == []  # no model: nothing to rank with
    people = people_site(site, site.arrays(seed=1))
    assert people.write_reserve() == 16 and site.db.note("refills") is None
    reserve = site.db.reserve()
    for _ in range(4):
        assert people.refill() == 4
    assert entries(site.db.queries()) == entries(reserve)


def test_the_reserve_takes_every_candidate_left_when_fewer_than_four_refills_remain(site):
    people = people_site(site, site.arrays(seed=1))
    people.grant("tok:0", N)
    site.db.add_queries(np.arange(N - 9), 0, "random")  # 9 candidates left: refills of 4, 4 and 1
    assert people.write_reserve() == 9
    assert sorted(e.index for e in site.db.reserve()) == list(range(N - 9, N))


def test_a_reply_counts_one_snapshot_of_the_labels_while_the_page_pays_meanwhile(site, monkeypatch):
    """The page pays labels while a message is handled; the reply's n-labeled and the labels per
    class it reports are read from the same snapshot of the pools, so they agree (a label paid
    meanwhile goes into the next reply, whole)."""
    from fedal import client as fc

    site.send(0, 10)
    real = fc.ClientWorker.pools

    def pools_then_a_label_paid(self):
        snapshot = real(self)
        pay(site, 1)  # someone pays on the page just after the snapshot
        return snapshot

    monkeypatch.setattr(fc.ClientWorker, "pools", pools_then_a_label_paid)
    m = site.send(1, 0)
    assert m["n-labeled"] == sum(m["acquired-per-class"])
    monkeypatch.undo()
    m2 = site.send(1, 0)
    assert m2["n-labeled"] == sum(m["acquired-per-class"]) + sum(m2["acquired-per-class"]) >= 1


def test_a_message_without_a_grant_records_nothing_and_one_label_is_a_grant(site):
    m = site.send(0, 0)  # no grant: the store has no budget yet (nothing recorded under "tok:0")
    assert (m["granted-now"], m["granted"]) == (0, 0) and site.db.budget is None
    assert site.send(0, 1)["granted-now"] == 1  # round 0's grant, under the key left free
    m = site.send(1, 0, version=3)
    assert (m["granted-now"], m["granted"]) == (0, 1)
    m = site.send(1, 6, version=4)  # round 1's grant after a message of round 1 without one
    assert (m["granted-now"], m["granted"]) == (6, 7)


def test_a_message_refills_only_when_fewer_than_query_pool_low_are_open(site):
    assert site.send(0, 30)["open"] == 4
    pay(site, 2)
    assert site.send(0, 30)["open"] == 2  # query-pool-low (2) open: not low yet
    pay(site, 1)
    assert site.send(0, 30)["open"] == 1 + 4


def test_a_site_is_done_when_nothing_is_granted_or_nothing_more_can_be_paid(site):
    """done (the server ends its labeling tail on it): nothing granted, or nothing open and
    nothing more to pay (the budget spent, or no point left to ask); n-grantable: the points no
    grant covers yet."""
    def done_and_grantable(*args, **kw):
        m = site.send(*args, **kw)
        return m["done"], m["n-grantable"]

    assert done_and_grantable(0, 0) == (1, N)  # granted nothing
    assert done_and_grantable(0, 4) == (0, N - 4)  # four open
    pay(site, 3)
    assert done_and_grantable(1, 0, version=3) == (0, N - 4)  # one still open
    pay(site, 1)
    assert done_and_grantable(1, 0, version=4) == (1, N - 4)  # spent
    assert done_and_grantable(2, 2, version=5) == (0, N - 6)  # budget left, none open (no model: no refill)
    left = site.db.candidates()
    for qid in site.db.add_queries(left, 2, "random"):
        site.db.skip(qid, "someone")  # the people cannot tell: no point is left to ask
    assert len(site.db.candidates()) == 0
    assert done_and_grantable(2, 0, version=6) == (1, N - 6)


def test_a_label_paid_for_a_strategy_this_fedal_does_not_know_is_left_out_of_paid_by_strategy(site):
    site.send(0, 4)
    [qid] = site.db.add_queries([int(site.db.candidates()[0])], 0, "a-measure-of-another-fedal")
    site.db.submit_label(qid, 1, "someone")  # the store is durable: it may hold such labels
    m = site.send(0, 0, finish=True)
    assert m["paid"] == 1 and m["paid-by-strategy"] == [0, 0, 0, 0]
