"""The client side of a deployment (issue #13): a site's own data from the node config, checked
against the run's dataset; durable pools in the SQLite store under the state dir, with a
retried or resumed AL round returned unpaid; a process killed with SIGKILL in the middle of
acquisitions loses no committed label and pays none twice; the decoded-data cache."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedal import client as fc
from fedal import client_data
from fedal.store import backends
from fedal.client import LabelsUnavailableError
from fedal.client_data import NodeConfigError, load_node_data
from fedal.client_app import worker
from fedal.data.site import SiteDataError
from fedal.store import StoreError

ROOT = Path(__file__).resolve().parents[1]
RC = {"dataset": "digits"}


@pytest.fixture(autouse=True)
def _fresh_caches():
    backends._OPEN_STORES.clear()
    client_data._site_data.cache_clear()
    yield
    for s in backends._OPEN_STORES.values():
        s.db.close()
    backends._OPEN_STORES.clear()
    client_data._site_data.cache_clear()


def site_npz(path: Path, n: int = 60, labels: bool = True, seed: int = 0, shape=(64,), classes: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.random((n, *shape), dtype=np.float32)}
    if labels:
        arrays["y"] = rng.integers(0, classes, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def node(tmp_path: Path, **extra) -> dict:
    return {"data-path": str(tmp_path / "site" / "data.npz"), "client-id": "clinic-3",
            "state-dir": str(tmp_path / "state"), **extra}


def context(nc: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=nc, state=RecordDict(), run_config={})


# ---------------------------------------------------------------------------------- node config
@pytest.mark.parametrize("missing", ["client-id", "state-dir"])
def test_data_path_needs_client_id_and_state_dir(tmp_path, missing):
    site_npz(tmp_path / "site" / "data.npz")
    nc = node(tmp_path)
    del nc[missing]
    with pytest.raises(NodeConfigError, match=rf"node config has data-path = .* but no {missing}: start the SuperNode "
                                              r"with --node-config"):
        load_node_data(RC, nc)


def test_a_missing_data_path_is_named(tmp_path):
    with pytest.raises(SiteDataError, match=r"data-path .*nowhere.npz does not exist"):
        load_node_data(RC, node(tmp_path, **{"data-path": str(tmp_path / "nowhere.npz")}))


def test_inputs_of_the_wrong_shape_or_classes_are_refused_with_the_file_and_the_expected_values(tmp_path):
    site_npz(tmp_path / "site" / "data.npz", shape=(8, 8))
    with pytest.raises(SiteDataError, match=r"data.npz: the site's points are float32 of shape \(8, 8\), but the "
                                            r"run's dataset = 'digits' expects float32 points of shape \(64,\), feature vectors"):
        load_node_data(RC, node(tmp_path))
    site_npz(tmp_path / "site" / "data.npz", classes=12, seed=1)
    with pytest.raises(SiteDataError, match=r"data.npz: the labels use class id 11 .*dataset = 'digits' has 10 "
                                            r"classes \(ids 0..9\)"):
        load_node_data(RC, node(tmp_path))


def test_a_site_without_labels_trains_but_cannot_acquire(tmp_path):
    site_npz(tmp_path / "site" / "data.npz", labels=False)
    w = worker(context(node(tmp_path)), RC)
    assert w.info().n_unlabeled == 60 and w.data.client_id == "clinic-3"
    with pytest.raises(LabelsUnavailableError, match=r"client 'clinic-3' was asked for 5 labels, but its data "
                                                     r".*data.npz has no labels"):
        w.acquire(None, 5, 0, "random")
    assert w.info().n_labeled == 0


# ---------------------------------------------------------------------------------- durable pools
def test_pools_live_in_the_state_dirs_store_and_a_repeated_round_is_not_paid_again(tmp_path, monkeypatch):
    site_npz(tmp_path / "site" / "data.npz")
    asked = []
    real = fc.ClientWorker.oracle
    monkeypatch.setattr(fc.ClientWorker, "oracle", lambda self, idx: asked.append(list(idx)) or real(self, idx))
    w = worker(context(node(tmp_path)), RC)
    first = w.acquire(None, 5, 0, "random")
    db = tmp_path / "state" / "pools" / w.cfg.experiment / "clinic-3.sqlite"
    assert db.exists() and first.acquired == 5 and len(asked) == 1
    # a restarted client (new process: new store object, empty context) asked for the same round
    backends._OPEN_STORES.clear()
    w2 = worker(context(node(tmp_path)), RC)
    again = w2.acquire(None, 5, 0, "random")
    assert len(asked) == 1  # the oracle was not asked again
    assert again.acquired == 5 and again.n_labeled == 5 and again.acquired_per_class == first.acquired_per_class
    w2.acquire(None, 5, 1, "random")
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*), count(DISTINCT idx) FROM labels").fetchone() == (10, 10)
    assert w2.info().n_labeled == 10


def test_logits_of_the_continual_modes_are_kept_in_the_store(tmp_path):
    site_npz(tmp_path / "site" / "data.npz")
    w = worker(context(node(tmp_path)), RC)
    w.acquire(None, 4, 0, "random")
    pools = w.pools()
    pools.set_logits(pools.labeled[:2], np.arange(20, dtype=np.float32).reshape(2, 10))
    w.store.save(pools)
    assert w.pools().logits == pools.logits
    pools.add([int(np.flatnonzero(~pools.labeled_mask)[0])], [1], 1)  # labels enter only by acquisition
    with pytest.raises(StoreError, match="labels are committed only by an acquisition"):
        w.store.save(pools)


def test_a_foreign_or_corrupt_store_stops_the_client_with_the_file_named(tmp_path):
    site_npz(tmp_path / "site" / "data.npz")
    w = worker(context(node(tmp_path)), RC)
    w.acquire(None, 5, 0, "random")
    db = w.store.db.path
    # the site's data changed under its paid labels: index i no longer means the same point
    site_npz(tmp_path / "site" / "data.npz", seed=5)
    backends._OPEN_STORES.clear()
    client_data._site_data.cache_clear()
    with pytest.raises(StoreError, match=rf"pool store {db} belongs to another experiment, client or data set: "
                                         r"data fingerprint is .* there but .* here.*holds 5 paid labels: do not delete it"):
        worker(context(node(tmp_path)), RC)
    for s in backends._OPEN_STORES.values():
        s.db.close()
    backends._OPEN_STORES.clear()
    db.write_bytes(b"this is not a database at all")
    with pytest.raises(StoreError, match=rf"pool store {db} is not an SQLite database"):
        worker(context(node(tmp_path)), RC)


def test_simulated_clients_keep_their_pools_in_the_store_under_FEDAL_STATE_DIR(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDAL_STATE_DIR", str(tmp_path / "sim"))
    w = worker(context({"partition-id": 1, "num-partitions": 3}), RC)
    w.acquire(None, 3, 0, "random")
    (db,) = (tmp_path / "sim" / "pools").glob("*/1.sqlite")
    assert w.data.client_id == "1" and db.exists()
    assert list((tmp_path / "sim" / "cache").glob("partition-*/x.npy"))


# ---------------------------------------------------------------------------------- kill -9
CHILD = r"""
import json, os, sys, time
import numpy as np
from fedal.client import ClientWorker
from fedal.client_data import load_node_data
from fedal.store import node_pool_store, node_state_dir
nc, rc, ledger, rounds = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = load_node_data(rc, nc)
class Slow(ClientWorker):
    def oracle(self, idx):
        y = super().oracle(idx)
        with open(ledger, "a") as f:  # what the annotator was asked (and would bill)
            f.write(json.dumps([int(i) for i in idx]) + "\n"); f.flush(); os.fsync(f.fileno())
        time.sleep(0.15)
        return y
w = Slow(data, node_pool_store(data, node_state_dir(nc)))
for r in range(rounds):
    w.acquire(None, 4, r, "random")
    print(r, flush=True)
"""


def test_sigkill_during_acquisitions_loses_no_committed_label_and_pays_none_twice(tmp_path):
    site_npz(tmp_path / "site" / "data.npz", n=80)
    nc, ledger, rounds = node(tmp_path), tmp_path / "ledger.jsonl", 12
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDAL_TORCH_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, json.dumps(nc), json.dumps(RC), str(ledger), str(rounds)]
    rng = random.Random(0)
    committed_before: set = set()
    db = None
    for kill in range(4):
        seen = len(ledger.read_text().splitlines()) if ledger.exists() else 0
        child = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while (len(ledger.read_text().splitlines()) if ledger.exists() else 0) < seen + 2:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # inside the oracle, in the commit, or between rounds
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        db = db or next((tmp_path / "state" / "pools").glob("*/clinic-3.sqlite"))
        with sqlite3.connect(db) as c:
            now = set(c.execute("SELECT idx, label, al_round FROM labels").fetchall())
        assert committed_before <= now  # nothing committed was lost
        committed_before = now
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as c:
        final = set(c.execute("SELECT idx, label, al_round FROM labels").fetchall())
        labels = c.execute("SELECT idx, al_round FROM labels").fetchall()
        acq = c.execute("SELECT al_round, state, n_points FROM acquisitions ORDER BY al_round").fetchall()

    idx = [i for i, _ in labels]
    assert len(idx) == len(set(idx)) == 4 * rounds  # every round paid once, no index twice
    assert acq == [(r, "committed", 4) for r in range(rounds)]
    assert committed_before <= final
    # the annotator was asked about every paid point, and a round interrupted between asking and
    # committing asked about the same points again, never about new ones
    asked = [json.loads(line) for line in ledger.read_text().splitlines()]
    by_round = {}
    for i, r in labels:
        by_round.setdefault(r, set()).add(i)
    for batch in asked:
        assert any(set(batch) == s for s in by_round.values()), batch
    assert sorted(set().union(*map(set, asked))) == sorted(idx)


# ---------------------------------------------------------------------------------- cache
def test_decoded_site_data_is_cached_in_the_state_dir_until_a_file_changes(tmp_path, monkeypatch):
    from fedal.data import cache, site

    p = site_npz(tmp_path / "site" / "data.npz")
    a = cache.cached_site_data(p, "clinic-3", tmp_path / "c")
    monkeypatch.setattr(site, "load_site_data", lambda *a, **k: pytest.fail("decoded again"))
    b = cache.cached_site_data(p, "clinic-3", tmp_path / "c")
    assert b.fingerprint == a.fingerprint and np.array_equal(b.x, a.x) and np.array_equal(b.y, a.y)
    monkeypatch.undo()
    time.sleep(0.01)
    site_npz(p, seed=3)
    c = cache.cached_site_data(p, "clinic-3", tmp_path / "c")
    assert c.fingerprint != a.fingerprint
    with pytest.raises(SiteDataError, match="client-id 'bad id' is not valid"):
        cache.cached_site_data(p, "bad id", tmp_path / "c")


# ---------------------------------------------------------------------------------- persistent worker
def test_a_persistent_worker_gives_the_golden_rows_and_keeps_torch_out_of_the_clientapp(tmp_path):
    # the ClientApp hands every message to one long-lived worker per state dir (here: one for
    # all 8 clients), which keeps fedal's imports, the data and the open stores between messages
    from fedal.deploy import node_worker
    from tests import golden
    from tests.inprocess import InProcessGrid, run_inprocess

    name = "diffusion-diffusion-cal-der"  # probes with pseudo-updates, stored logits (DER)
    from fedal.client_app import build_client_app

    rc = {**golden.INPROCESS_BASE, **golden.INPROCESS_CASES[name]}
    grid = InProcessGrid(build_client_app(rc), golden.INPROCESS_CLIENTS, run_config=rc)
    for ctx in grid.contexts.values():
        ctx.node_config.update({"state-dir": str(tmp_path / "state"), "persistent-worker": True})
    try:
        rows, _ = run_inprocess(rc, golden.INPROCESS_CLIENTS, grid=grid)
    finally:
        assert node_worker.stop(tmp_path / "state")
    assert golden.mismatches(golden.normalised(rows), golden.load(f"inprocess_{name}")) == []
    dbs = list((tmp_path / "state" / "pools").glob("*/*.sqlite"))
    assert len(dbs) == golden.INPROCESS_CLIENTS
    code = ("import sys, fedal.client_app; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
