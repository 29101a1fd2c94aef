"""Asynchronous labeling by people (annotators = "people"; docs/labeling.md, "Labeling for a
deployed asynchronous federation"): an in-process federation whose sites' query pools are
labeled through each site's labeling page (fedal/annotate/app.py, over its HTTP routes) while the
server trains, on the wall clock. The people are a bot thread that answers with the true labels."""

from __future__ import annotations

import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fedal.continual
from fedal.config import Config, ConfigError
from fedal.store import PoolStore, site_store_path
from tests.golden import INPROCESS_BASE
from tests.inprocess import run_inprocess

CLIENTS = 4
PEOPLE = {**INPROCESS_BASE, "labeling": "async", "annotators": "people", "client-strategy": "random",
          "point-strategy": "entropy", "al-rounds": 1, "init-clients": 2, "init-points": 6,
          "clients-per-round": 2, "points-per-client": 6, "fl-rounds": 2, "local-epochs": 1,
          "query-pool-low": 3, "query-pool-refill": 6, "labeling-deadline-s": 60.0}
TOKEN = "people-test-token-0123456789"
LIMIT_S = 120  # a run that takes longer failed (its deadline did not end it)


class People(threading.Thread):
    """One labeling page per site (``create_app`` on the store file ``site_store_path`` names,
    the file fedal-annotate opens) and someone who labels there: GET / shows (and claims) the
    next query, POST /label pays it. ``budget``: stop after this many labels in all."""

    def __init__(self, run_config: dict, state_dir, budget: int | None = None):
        super().__init__(daemon=True)
        self.rc, self.state_dir, self.budget = run_config, state_dir, budget
        self.stop = threading.Event()
        self.paid: dict[str, list[int]] = {}
        self.errors: list[BaseException] = []
        self.stores: list[PoolStore] = []

    def page(self, cid: str):
        from fedal.annotate.app import LabelingSite, create_app
        from fedal.client_data import load_client_data

        d = load_client_data(self.rc, int(cid), CLIENTS)
        exp = Config.from_run_config(self.rc).experiment
        path = site_store_path(self.state_dir, exp, cid)
        if not path.exists():
            return None, None
        store = PoolStore(path, exp, cid, len(d.x), d.fingerprint)
        self.stores.append(store)
        site = LabelingSite(store, d.x, [str(c) for c in range(d.num_classes)], TOKEN, annotator="bot")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient

            client = TestClient(create_app(site), base_url="http://127.0.0.1",
                                headers={"Authorization": f"Bearer {TOKEN}"})
        return client, d.y

    def run(self):
        try:
            pages: dict[str, tuple] = {}
            while not self.stop.is_set():
                busy = False
                for cid in map(str, range(CLIENTS)):
                    if cid not in pages:
                        client, y = self.page(cid)
                        if client is None:
                            continue
                        pages[cid] = (client, y)
                    if self.budget is not None and sum(map(len, self.paid.values())) >= self.budget:
                        continue
                    client, y = pages[cid]
                    html = client.get("/").text
                    m = re.search(r'data-query-id="(\d+)" data-index="(\d+)"', html)
                    if m is None:
                        continue
                    qid, idx = int(m.group(1)), int(m.group(2))
                    r = client.post("/label", data={"query_id": qid, "label": int(y[idx])}, follow_redirects=False)
                    assert r.status_code == 303, r.text
                    if "note=" not in r.headers.get("location", ""):  # paid now (else withdrawn/closed)
                        self.paid.setdefault(cid, []).append(idx)
                    busy = True
                if not busy:
                    time.sleep(0.02)
        except BaseException as e:  # surfaced by the test
            self.errors.append(e)

    def close(self):
        self.stop.set()
        self.join(30)
        for s in self.stores:
            s.close()


def run_with_people(rc: dict, tmp_path, monkeypatch, budget: int | None = None):
    """rows, the run's summary, the stores' contents by client id, and the number of labels
    each client's local training saw (the largest labeled set one ``train_continual`` call got)."""
    state = tmp_path / "state"
    monkeypatch.setenv("FEDAL_STATE_DIR", str(state))
    trained: dict[str, int] = {}
    real = fedal.continual.train_continual

    def spy(model, new_x, new_y, old_x, old_y, *a, **kw):
        spy.seen.append(len(new_y) + len(old_y))
        return real(model, new_x, new_y, old_x, old_y, *a, **kw)

    spy.seen = []
    monkeypatch.setattr(fedal.continual, "train_continual", spy)
    people = People(rc, state, budget)
    people.start()
    t0 = time.monotonic()
    out: dict = {}
    replies: list = []

    def server():  # in a thread, so that a run that never ends fails the test instead of hanging it
        try:
            out["run"] = run_inprocess(rc, CLIENTS, on_reply=lambda m, r: replies.append((m, r)))
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=server, daemon=True)
    t.start()
    t.join(LIMIT_S)
    people.close()
    wall = time.monotonic() - t0
    assert not t.is_alive(), f"the run did not end within {LIMIT_S} s"
    if "error" in out:
        raise out["error"]
    rows, grid = out["run"]
    assert not people.errors, people.errors
    exp = Config.from_run_config(rc).experiment
    stores = {}
    for cid in map(str, range(CLIENTS)):
        path = site_store_path(state, exp, cid)
        if not path.exists():
            continue
        from fedal.client_data import load_client_data

        d = load_client_data(rc, int(cid), CLIENTS)
        with PoolStore(path, exp, cid, len(d.x), d.fingerprint) as s:
            idx, lab = s.labeled_arrays()
            stores[cid] = {"idx": idx, "labels": lab, "y": d.y, "budget": s.budget or 0,
                           "queries": s.queries(), "progress": s.progress()}
    trained["max"] = max(spy.seen, default=0)
    # privacy (README): a labeling reply carries counts only, never a point, a label or an array
    labeling = [r for m, r in replies if m.metadata.message_type == "query.labeling"]
    assert labeling
    for r in labeling:
        assert not r.content.array_records and set(r.content.config_records) == {"client"}
        for k, v in r.content["metrics"].items():
            if isinstance(v, list):
                assert (k, len(v)) in {("acquired-per-class", 10), ("paid-by-strategy", 4)}, k
    return rows, grid.loop.summary, stores, people, trained, wall


def test_people_label_on_the_page_while_the_server_trains(tmp_path, monkeypatch):
    rows, summary, stores, people, trained, wall = run_with_people(PEOPLE, tmp_path, monkeypatch)
    cfg = Config.from_run_config(PEOPLE)
    assert rows[-1]["tail"] and wall < 120
    total = 0
    for cid, s in stores.items():
        idx = s["idx"].tolist()
        assert len(set(idx)) == len(idx), f"client {cid}: a point paid twice"
        labeled = [q for q in s["queries"] if q.state == "labeled"]
        # every label in the store was paid through exactly one query, with the person's answer
        assert sorted(q.index for q in labeled) == sorted(idx)
        assert sorted(idx) == sorted(people.paid.get(cid, []))
        assert np.array_equal(s["labels"], s["y"][s["idx"]])
        assert len(idx) == s["budget"], f"client {cid}: paid {len(idx)} of a budget of {s['budget']}"
        assert s["progress"].open == 0
        assert all(q.label is None for q in s["queries"] if q.state == "withdrawn")
        total += len(idx)
    # the federation paid exactly the granted budget, and the server counts what the stores hold
    assert summary["paid"] == summary["granted"] == total == cfg.label_budget
    assert rows[-1]["labels"] == total
    # training saw the people's labels: a client's local update ran on all of its paid labels
    assert trained["max"] == max(len(s["idx"]) for s in stores.values())
    assert rows[0]["labels"] < rows[-1]["labels"]
    assert rows[0]["labels"] == cfg.init_clients * cfg.init_points  # the first training waited for the seed set
    # annotator time is not measured for people
    assert np.isnan(summary["idle_fraction"]) and np.isnan(summary["labels_per_hour"])
    assert sum(summary["paid_by_strategy"].values()) == total
    # rows are on the wall clock: seconds since the run started, never beyond the run
    t = [r["sim_time_s"] for r in rows]
    assert t == sorted(t) and t[-1] <= wall


def test_at_the_deadline_open_queries_are_withdrawn_unpaid(tmp_path, monkeypatch):
    rc = {**PEOPLE, "labeling-deadline-s": 2.0}
    rows, summary, stores, people, _, _ = run_with_people(rc, tmp_path, monkeypatch, budget=5)
    assert summary["paid"] == 5 < summary["granted"] == Config.from_run_config(rc).label_budget
    assert summary["withdrawn"] > 0
    for cid, s in stores.items():
        assert s["progress"].open == 0
        assert len(s["idx"]) == len(people.paid.get(cid, []))
        assert all(q.label is None for q in s["queries"] if q.state == "withdrawn")
    assert sum(len(s["idx"]) for s in stores.values()) == 5
    assert rows[-1]["tail"] and rows[-1]["paid"] == 5
    # the deadline ended the run (people's tail has no other bound), not before it passed
    assert rows[-1]["sim_time_s"] >= 2.0


def test_people_mode_needs_a_state_dir(monkeypatch):
    monkeypatch.delenv("FEDAL_STATE_DIR", raising=False)
    with pytest.raises(Exception, match="annotators = 'people' needs the client's durable pool store.*state-dir"):
        run_inprocess(PEOPLE, CLIENTS)


def test_a_node_without_a_state_dir_is_told_both_ways_to_give_one_and_how_to_start_the_page():
    from types import SimpleNamespace

    from fedal.async_labeling import PeopleModeError, PeopleSite

    worker = SimpleNamespace(durable_store=None, data=SimpleNamespace(client_id="clinic-1"))
    with pytest.raises(PeopleModeError) as e:
        PeopleSite(worker, "tok")
    assert str(e.value) == (
        "client 'clinic-1': annotators = 'people' needs the client's durable pool store, which its labeling "
        "page opens, but this node has no state directory: set the node config state-dir=\"<local folder>\" "
        "(or the environment variable FEDAL_STATE_DIR of the SuperNode) and start fedal-annotate with the "
        "same --state-dir")


@pytest.mark.parametrize("rc,needle", [
    ({"annotators": "robots", "labeling": "async"}, r"annotators = 'robots' is invalid; valid: simulated, people"),
    ({"annotators": "people"}, r"annotators = 'people' needs labeling = 'async' \(labeling = 'sync'\)"),
    ({"labeling": "async", "labeling-deadline-s": -1}, r"labeling-deadline-s = -1"),
    ({"labeling": "async", "annotators": "people"}, r"annotators = 'people' needs labeling-deadline-s > 0"),
])
def test_bad_annotator_settings_are_refused_clearly(rc, needle):
    with pytest.raises(ConfigError, match=needle):
        Config.from_run_config(rc)


def test_the_new_keys_keep_every_recorded_hash():
    base = {"labeling": "async"}
    h = Config.from_run_config(base).config_hash()
    assert Config.from_run_config({**base, "annotators": "simulated", "labeling-deadline-s": 0.0}).config_hash() == h
    assert Config.from_run_config({**base, "annotators": "people", "labeling-deadline-s": 9.0}).config_hash() != h
    assert Config.from_run_config({"annotators": "simulated"}).config_hash() == Config.from_run_config({}).config_hash()
    assert Config.from_run_config({**base, "async-budget": "selection"}).config_hash() == h
    assert Config.from_run_config({**base, "async-budget": "standing"}).config_hash() != h


def test_the_persistent_node_worker_serves_labeling_from_the_durable_store(tmp_path):
    """fedal.deploy.node_worker.handle (the persistent worker of persistent-worker = true) takes
    query.labeling through ClientWorker.handle, with the model's arrays; nothing it needs is kept
    in its memory: the grant of a resent message is not granted again, and a second process
    (a fresh ClientApp) continues from the store."""
    from fedal import client as fc
    from fedal.client_data import load_node_data
    from fedal.deploy import node_worker
    from fedal.store import backends

    rng = np.random.default_rng(0)
    (tmp_path / "site").mkdir()
    np.savez(tmp_path / "site" / "d.npz", x=rng.random((40, 64), dtype=np.float32), y=rng.integers(0, 10, 40))
    rc = {"dataset": "digits", "labeling": "async", "annotators": "people", "labeling-deadline-s": 60.0,
          "query-pool-low": 2, "query-pool-refill": 4}
    nc = {"data-path": str(tmp_path / "site" / "d.npz"), "client-id": "clinic-1", "state-dir": str(tmp_path / "st")}

    def send(al_round, grant, arrays=None, version=0, finish=False, tag=""):
        conf = {"run": "tok", "now": 0.0, "al-round": al_round, "model-version": version, "grant": grant,
                "finish": finish, **({"grant-tag": tag} if tag else {})}
        r = node_worker.handle({"kind": "labeling", "run_config": rc, "node_config": nc, "config": conf,
                                "arrays": arrays})
        assert r["ok"] and r["client-id"] == "clinic-1"
        return r["reply"].metrics()

    m = send(0, 5)
    assert (m["granted-now"], m["granted"], m["open"], m["paid"]) == (5, 5, 4, 0)
    assert send(0, 5)["granted"] == 5  # the same message again: no second grant
    data = load_node_data(rc, nc)
    store = backends.node_pool_store(data, Path(nc["state-dir"]))
    model = fc.ClientWorker(data, store).model()
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for _ in range(3):  # people label on the page; one query stays open, fewer than query-pool-low
        q = store.db.next_query("someone")
        store.db.submit_label(q.id, int(data.y[q.index]), "someone")
    backends._OPEN_STORES.clear()  # as a fresh process would
    m = send(1, 0, arrays, version=3)
    assert (m["granted"], m["paid"], m["n-labeled"], sum(m["acquired-per-class"])) == (5, 3, 3, 3)
    tags = {(x.strategy, x.model_version) for x in store.db.queries()}
    # the refill used the sent model (uncertainty workers) and tags its queries with the AL round
    assert ("random", 0) in tags and any(s != "random" and v == 1 for s, v in tags)
    assert sum(send(1, 0, arrays, version=4)["acquired-per-class"]) == 0  # reported once
    # async-budget = standing: top-ups within an AL round, one per tag, each granted once
    assert send(1, 2, arrays, version=5, tag="standing-5")["granted"] == 7
    assert send(1, 2, arrays, version=5, tag="standing-5")["granted"] == 7  # resent: not again
    assert send(1, 2, arrays, version=6, tag="standing-6")["granted-now"] == 2
    m = send(1, 0, finish=True)
    assert m["granted"] == 9 and m["open"] == 0 and m["withdrawn-at-end"] > 0 and sum(m["paid-by-strategy"]) == 3


def test_the_deadline_holds_for_simulated_annotators_on_the_simulated_clock():
    """labeling-deadline-s is read on the run's clock whoever labels: slow simulated annotators
    are cut off at it, deterministically, with what is open withdrawn unpaid."""
    from tests.test_async_labeling import ASYNC, CLIENTS as SIM_CLIENTS

    rc = {**ASYNC, "annotator-latency": "constant:seconds=40", "labeling-deadline-s": 100.0}
    rows, grid = run_inprocess(rc, SIM_CLIENTS)
    s = grid.loop.summary
    assert s["paid"] < s["granted"] == Config.from_run_config(rc).label_budget and s["withdrawn"] > 0
    last_grants = max(r["sim_time_s"] for r in rows if not r["tail"])
    assert 100.0 <= rows[-1]["sim_time_s"] - last_grants < 100.0 + 2 * rc["sim-fl-round-s"] * rc["fl-rounds"]
    rows2, _ = run_inprocess(rc, SIM_CLIENTS)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert strip(rows2) == strip(rows)
