"""Asynchronous labeling (labeling = "async"; docs/method.md, "Asynchronous labeling"): exact
budgets read from the sites' stores, a server that never waits for labels, several worker
measures, determinism under a seed, client selection still running, and the sync hash."""

from __future__ import annotations

import numpy as np
import pytest

import fedal.async_labeling as async_labeling
from fedal.config import Config, ConfigError
from tests.golden import INPROCESS_BASE
from tests.inprocess import run_inprocess

CLIENTS = 8
ASYNC = {**INPROCESS_BASE, "labeling": "async", "client-strategy": "diffusion", "point-strategy": "entropy",
         "annotator-latency": "lognormal:median=5,sigma=0.5", "annotators-per-site": 2,
         "query-pool-low": 4, "query-pool-refill": 9, "sim-fl-round-s": 20.0, "sim-select-s": 10.0}


def run_async(rc: dict, keep: bool = False):
    """rows, the run's summary, and (``keep``) the sites by client id, stores open."""
    async_labeling.KEEP_SITES = keep
    before = set(async_labeling._SITES)
    try:
        rows, grid = run_inprocess(rc, CLIENTS)
    finally:
        async_labeling.KEEP_SITES = False
    sites = {}
    for key in set(async_labeling._SITES) - before:
        sites[key[1]] = async_labeling._SITES.pop(key)
    return rows, grid.loop.summary, sites


@pytest.fixture(scope="module")
def run():
    rows, summary, sites = run_async(ASYNC, keep=True)
    yield rows, summary, sites
    for s in sites.values():
        s.close()


def test_budgets_are_exact_and_read_from_the_stores(run):
    rows, summary, sites = run
    cfg = Config.from_run_config(ASYNC)
    paid = granted = 0
    for cid, site in sites.items():
        idx, labels = site.store.labeled_arrays()
        queries = site.store.queries()
        labeled = [q for q in queries if q.state == "labeled"]
        assert len(set(idx.tolist())) == len(idx), "a point paid twice"
        # every paid label is one labeled query, and each query is paid at most once
        assert sorted(q.index for q in labeled) == sorted(idx.tolist())
        assert len({q.id for q in labeled}) == len(labeled)
        withdrawn = [q for q in queries if q.state == "withdrawn"]
        assert all(q.label is None for q in withdrawn), "a withdrawn query was paid"
        assert len(idx) <= site.granted == (site.store.budget or 0)
        # the client's pools (what training reads) hold exactly the store's paid labels
        pools = site.worker.pools()
        assert sorted(pools.labeled) == sorted(idx.tolist())
        assert dict(zip(pools.labeled, pools.labels)) == dict(zip(idx.tolist(), labels.tolist()))
        assert not [q for q in queries if q.state == "open"], "open queries left after the run"
        paid += len(idx)
        granted += site.granted
    assert paid == granted == cfg.label_budget == summary["paid"] == rows[-1]["labels"]
    assert summary["withdrawn"] > 0  # refills overshoot the budget: the rest is withdrawn, unpaid


def test_several_worker_measures_are_used(run):
    _, summary, sites = run
    tags = {}
    for site in sites.values():
        for q in site.store.queries():
            tags.setdefault(q.strategy, []).append(q)
    assert {"entropy", "least-confidence", "margin", "random"} <= set(tags)
    for m in ("entropy", "least-confidence", "margin"):
        assert all(q.model_version > 0 for q in tags[m])  # chosen with a global model, tagged with it
        assert all(q.guess is not None and 0 <= q.confidence <= 1 for q in tags[m])
        assert summary["paid_by_strategy"][m] > 0
    assert all(q.model_version == 0 for q in tags["random"])  # round 0: no model yet


def test_client_selection_still_runs(run):
    rows, _, _ = run
    cfg = Config.from_run_config(ASYNC)
    selecting = [r for r in rows if not r["tail"]]
    assert len(selecting) == cfg.al_rounds  # AL rounds 0..R-1 select; R and later only train
    for r in selecting:
        assert len(r["chosen_clients"]) == cfg.clients_per_round
        assert r["acquired"] == cfg.clients_per_round * cfg.points_per_client
        assert "graph" in r and r["graph"]["probes"] >= 1  # the diffusion selection ran on probes


def test_the_first_training_waits_for_the_seed_set(run):
    # round 0 trains on the whole seed set (as the synchronous loop does), not on a trickle of it
    rows, _, _ = run
    cfg = Config.from_run_config(ASYNC)
    assert rows[0]["labels"] == cfg.init_clients * cfg.init_points
    assert rows[0]["sim_round_start_s"] > 0  # the clock ran while the seed set was labeled


def test_probes_see_clients_as_if_their_granted_labels_were_in(monkeypatch):
    # a client still owed labels is probed without that many of its most uncertain points, so
    # selection does not pile grant on grant on it (ClientWorker.probe, "pending")
    from fedal.client import ClientWorker

    seen = []
    real = ClientWorker.probe

    def spy(self, *a, pending=0, **kw):
        seen.append((self.data.client_id, pending))
        return real(self, *a, pending=pending, **kw)

    monkeypatch.setattr(ClientWorker, "probe", spy)
    rows, summary, _ = run_async({**ASYNC, "annotator-latency": "constant:seconds=60"})
    assert any(p > 0 for _, p in seen)
    assert all(0 <= p <= Config.from_run_config(ASYNC).points_per_client * 10 for _, p in seen)


def test_server_never_waits_for_labels():
    # annotators far slower than training: every AL round still takes exactly its modelled time
    import strategies.async_policy as al

    rc = {**ASYNC, "annotator-latency": "constant:seconds=400"}
    cfg = Config.from_run_config(rc)
    old = al.MAX_TAIL_ROUNDS
    al.MAX_TAIL_ROUNDS = 2
    try:
        rows, summary, sites = run_async(rc, keep=True)
    finally:
        al.MAX_TAIL_ROUNDS = old
    from fedal.continual import Schedule, resolve_schedule

    for r in rows:
        fl = resolve_schedule(cfg.training_mode, Schedule(cfg.fl_rounds, cfg.local_epochs), al_round=r["round"])
        dt = r["sim_time_s"] - r["sim_round_start_s"]
        assert dt == pytest.approx(fl.fl_rounds * cfg.sim_fl_round_s + (0 if r["tail"] else cfg.sim_select_s))
    assert rows[1]["labels"] < rows[1]["granted"]  # it trained on while labels were outstanding
    assert summary["paid"] < cfg.label_budget  # the run ended with labels unpaid ...
    assert summary["paid"] == rows[-1]["paid"] and summary["withdrawn"] > 0  # ... and withdrew them
    n_ended = 0
    for site in sites.values():  # what was open at the end is withdrawn, never paid
        queries = site.store.queries()
        assert not [q for q in queries if q.state == "open"]
        ended = [q for q in queries if q.closed_by == "run-end"]
        assert all(q.state == "withdrawn" and q.label is None for q in ended)
        assert site.store.progress().labeled < site.granted or not ended
        n_ended += len(ended)
        site.close()
    assert n_ended > 0  # some site still had queries open at the end (or the checks above test nothing)


def test_deterministic_under_a_seed(run):
    rows, summary, _ = run
    rows2, summary2, _ = run_async(ASYNC)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert strip(rows2) == strip(rows)
    drop = ("wall_time_s",)
    assert {k: v for k, v in summary2.items() if k not in drop} == {k: v for k, v in summary.items() if k not in drop}
    rows3, _, _ = run_async({**ASYNC, "seed": 1})
    assert strip(rows3) != strip(rows)


def test_async_keys_leave_the_sync_hash_alone():
    base = Config.from_run_config({}).config_hash()
    for key, value in (("label-noise", 0.2), ("annotators-per-site", 5), ("async-workers", "margin"),
                       ("sim-fl-round-s", 99.0), ("labeling", "sync")):
        assert Config.from_run_config({key: value}).config_hash() == base, key
    a = Config.from_run_config({"labeling": "async"}).config_hash()
    assert a != base
    assert Config.from_run_config({"labeling": "async", "label-noise": 0.2}).config_hash() != a


@pytest.mark.parametrize("key,value", [("labeling", "maybe"), ("async-workers", "entropy,badge"),
                                       ("async-workers", ""), ("annotator-latency", "gamma:k=2"),
                                       ("label-noise", 1.5), ("annotators-per-site", 0),
                                       ("query-pool-refill", 2), ("sim-fl-round-s", 0.0),
                                       ("async-budget", "greedy")])
def test_async_keys_are_validated(key, value):
    rc = {key: value, "query-pool-low": 5} if key == "query-pool-refill" else {key: value}
    with pytest.raises(ConfigError, match=key):
        Config.from_run_config(rc)


def test_resume_is_refused_in_async_mode():
    from fedal.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="async"):
        run_inprocess({**ASYNC, "resume": True}, CLIENTS)


def test_labels_vs_time_is_consistent(run):
    rows, _, _ = run
    t = [r["sim_time_s"] for r in rows]
    assert t == sorted(t) and len(set(t)) == len(t)
    labels = [r["labels"] for r in rows]
    assert labels == sorted(labels)
    assert np.all(np.diff([r["granted"] for r in rows]) >= 0)


def test_a_client_chosen_again_before_its_labels_came_is_granted_in_full():
    # large shares and slow annotators: clients are chosen again while earlier grants are still
    # being labeled; selection must see the points not granted yet, or the budget is under-spent
    rc = {**ASYNC, "points-per-client": 60, "clients-per-round": 3, "al-rounds": 3,
          "annotator-latency": "constant:seconds=20"}
    rows, summary, _ = run_async(rc)
    chosen = [c for r in rows for c in r["chosen_clients"]]
    assert len(chosen) > len(set(chosen))  # some client was chosen twice
    assert summary["granted"] == summary["paid"] == Config.from_run_config(rc).label_budget


# async-budget = "standing": slow AL rounds next to quick grants, so that with the paper's rule a
# site that has labeled its grant waits for selection to pick it again
STANDING = {**ASYNC, "al-rounds": 4}


def test_a_standing_share_keeps_budgets_exact_and_reaches_only_granted_sites():
    cfg = Config.from_run_config({**STANDING, "async-budget": "standing"})
    rows, summary, sites = run_async({**STANDING, "async-budget": "standing"}, keep=True)
    try:
        assert summary["paid"] == summary["granted"] == cfg.label_budget
        assert summary["granted_standing"] > 0 and \
            summary["granted_by_selection"] + summary["granted_standing"] == cfg.label_budget
        assert sum(r.get("standing_granted", 0) for r in rows) == summary["granted_standing"]
        # only seed-set and chosen sites are ever granted budget; a top-up never goes elsewhere
        chosen = {c for r in rows for c in r["chosen_clients"]}
        others = [cid for cid, s in sites.items() if s.granted > 0 and s.worker.data.partition_id not in chosen]
        assert len(others) <= cfg.init_clients
        for site in sites.values():
            idx, _ = site.store.labeled_arrays()
            assert len(set(idx.tolist())) == len(idx) <= site.granted  # nothing paid twice or unpaid-for
    finally:
        for s in sites.values():
            s.close()
    # the paper's rule on the same run: selection grants it all, and sites wait to be picked again
    _, plain, _ = run_async(STANDING)
    assert plain["granted_standing"] == 0 and plain["granted_by_selection"] == cfg.label_budget
    assert summary["idle_fraction_waiting_for_grant"] < 0.5 * plain["idle_fraction_waiting_for_grant"]


def test_a_site_takes_each_new_model_version_and_keeps_its_scores_for_a_resent_one():
    """``QuerySite.set_model``: the first model a site is sent is taken whatever its version (0:
    the initial model); a new version replaces it and drops the probabilities scored with the
    old one; the same version again (a message resent) keeps the model and its scores, so the
    pool is not scored twice by one model."""
    from types import SimpleNamespace

    site = async_labeling.QuerySite(SimpleNamespace(cfg=None), store=None)
    first, resent, newer = {"w": 1}, {"w": 2}, {"w": 3}
    site.set_model(first, 0)
    assert site.state_dict is first and site.version == 0
    site._probs = scores = np.full((3, 2), 0.5)  # what _probs_of_model caches
    site.set_model(resent, 0)
    assert site.state_dict is first and site._probs is scores
    site.set_model(newer, 4)
    assert site.state_dict is newer and site.version == 4 and site._probs is None


def test_a_simulated_sites_store_keeps_time_on_the_runs_clock(run):
    """A simulated site's store stamps its queries (and leases) on the run's simulated clock,
    which starts at 0 with the server's: the first queries of a site are stamped at the time of
    its first grant, and nothing is stamped after the run's last row."""
    rows, _, sites = run
    end = rows[-1]["sim_time_s"]
    assert any(site.first_grant == 0.0 for site in sites.values())  # the seed set's grants, at time 0
    for site in sites.values():
        queries = site.store.queries()
        if not queries:
            continue
        assert min(q.created_at for q in queries) == site.first_grant
        assert all(q.created_at <= q.closed_at <= end for q in queries if q.closed_at is not None)


def test_closing_a_simulated_site_removes_its_temporary_store_and_may_be_repeated(run):
    _, _, sites = run
    site = async_labeling.SimulatedSite(next(iter(sites.values())).worker, "another-run-token")
    folder = site.dir
    assert (folder / "pool.sqlite").is_file()
    site.close()
    assert not folder.exists()
    site.close()  # a kept site closed by a test's teardown after the run closed it: nothing to do


def test_a_simulated_sites_summary_starts_from_nothing_and_counts_its_refills(run):
    _, _, sites = run
    site = async_labeling.SimulatedSite(next(iter(sites.values())).worker, "a-third-run-token")
    try:
        s = site.summary()  # nothing granted, nothing labeled: no time, no refill
        assert [s[k] for k in ("busy-s", "idle-s", "duty-busy-s", "duty-idle-s", "duty-idle-owed-s",
                               "duty-idle-spent-s", "last-label-s", "refills")] == [0] * 8
        assert np.isnan(s["first-grant-s"])
        assert site.grant("grant-key", 30) == 30
        assert [site.refill() for _ in range(3)] == [9, 9, 9]
        assert site.summary()["refills"] == 3
    finally:
        site.close()


def test_the_idle_time_up_to_a_sites_last_label_is_split_into_owed_and_spent(run):
    _, _, sites = run
    labeled = [site.summary() for site in sites.values() if site.store.progress().labeled]
    assert labeled
    for s in labeled:
        assert s["duty-idle-owed-s"] + s["duty-idle-spent-s"] == pytest.approx(s["duty-idle-s"], abs=1e-9)
