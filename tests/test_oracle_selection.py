"""The class-mix oracle (fedal/selection/oracle.py): a simulator-only yardstick for client choice.
Its greedy, its counts (the clients' own pools, read in-process), and the refusals that keep it
out of every run that is not the in-process simulator."""

import itertools

import numpy as np
import pytest

from fedal.config import Config
from fedal.data import client_data
from fedal.errors import ConfigError
from fedal.selection import ClientStats, get, order_clients
from fedal.class_balance import balance_greedy, entropy as _entropy
from fedal.selection import MixBalanceParams as OracleParams
from tests.inprocess import InProcessGrid, run_inprocess
from tests.test_protocol import ALLOWED_METRICS, SMALL, M, _pools

C = 4


def _single_class_federation(per_class=(3, 2, 2, 1), size=50):
    """Clients that each hold one class: ``per_class[c]`` clients of class c."""
    rows = []
    for c, k in enumerate(per_class):
        for _ in range(k):
            row = np.zeros(C)
            row[c] = size
            rows.append(row)
    return np.array(rows)


def test_greedy_covers_every_class_before_repeating_one():
    unl = _single_class_federation()
    order, after = balance_greedy(unl, np.zeros(C), np.full(len(unl), 20), n=6)
    cls = unl[order].argmax(1)
    assert sorted(cls[:C]) == list(range(C))          # 4 picks, 4 classes
    assert np.isclose(after[C - 1], np.log(C))          # the batch is exactly even
    assert np.all(np.diff(after[:C]) > 0)


def test_greedy_fills_the_labeled_sets_missing_classes_first():
    unl = _single_class_federation()
    labeled = np.array([100.0, 100.0, 0.0, 100.0])    # class 2 missing so far
    order, _ = balance_greedy(unl, labeled, np.full(len(unl), 20), n=1)
    assert unl[order[0]].argmax() == 2


def test_each_pick_is_the_best_next_one_and_entropies_are_reported():
    # the greedy's i-th pick maximises the entropy given picks 1..i-1 (brute force over the rest)
    rng = np.random.default_rng(0)
    unl = rng.integers(0, 30, size=(8, C)).astype(float)
    labeled = rng.integers(0, 10, size=C).astype(float)
    take = np.full(8, 10)
    order, after = balance_greedy(unl, labeled, take, n=4)
    mix = unl / unl.sum(1, keepdims=True) * 10
    h = labeled.copy()
    for z, e in zip(order, after):
        best = max(range(8), key=lambda y: (-np.inf if y in order[:list(order).index(z)] else _entropy(h + mix[y])))
        assert z == best and np.isclose(e, _entropy(h + mix[z]))
        h += mix[z]
    assert len(set(order)) == 4


def test_ineligible_and_empty_clients_are_never_picked():
    unl = _single_class_federation()
    unl[0] = 0  # an empty client
    elig = np.ones(len(unl), bool)
    elig[1] = False
    order, _ = balance_greedy(unl, np.zeros(C), np.full(len(unl), 20), n=len(unl), eligible=elig)
    assert 0 not in order and 1 not in order and len(order) == len(unl) - 2


def test_the_strategy_refuses_stats_without_true_counts():
    stats = ClientStats(entropy=np.zeros(3), n_unlabeled=np.array([5, 5, 5]))
    with pytest.raises(ValueError, match="in-process simulator"):
        order_clients("oracle-balance", stats, np.random.default_rng(0), OracleParams(2), n=2)
    assert get("oracle-balance").simulator_only and not get("oracle-balance").probes


def test_outside_the_simulator_the_loop_refuses_before_any_message():
    from fedal.client_app import build_client_app
    from strategies.active_learning import FederatedActiveLearning

    rc = {**SMALL, "client-strategy": "oracle-balance", "point-strategy": "random"}
    grid = InProcessGrid(build_client_app(rc), M)
    loop = FederatedActiveLearning.for_run(Config.from_run_config(rc), grid, log=lambda s: None)
    with pytest.raises(ConfigError, match="'oracle-balance'.*in-process simulator.*random"):
        loop.run()
    assert grid.sent == 0


def test_compare_refuses_the_oracle_on_flowers_engine(tmp_path):
    from simulations.compare import main

    with pytest.raises(SystemExit, match="Oracle\\+Rand.*--engine inprocess"):
        main(["mnist1d-dirichlet-pretrained", "--methods", "Rand", "Oracle+Rand", "--seeds", "0",
              "--results", str(tmp_path), "--dry-run"])


def test_in_process_picks_follow_the_true_counts_and_no_message_carries_them():
    rc = {**SMALL, "client-strategy": "oracle-balance", "point-strategy": "random", "al-rounds": 1}
    cfg = Config.from_run_config(rc)
    replies = []
    rows, grid = run_inprocess(rc, M, on_reply=lambda m, r: replies.append(r))
    assert [r["labels"] for r in rows] == [30, 54]
    # rebuild round 1's choice from the pools as they were after round 0 (round 0's labels only)
    pools = _pools(grid)
    y = {pid: client_data(cfg, pid, M)[1] for pid in range(M)}
    unl = np.zeros((M, 10))
    lab = np.zeros(10)
    for pid in range(M):
        p = pools.get(pid)
        first = [] if p is None else [i for i, r in zip(p.labeled, p.acquired_round) if r == 0]
        mask = np.ones(len(y[pid]), bool)
        mask[first] = False
        unl[pid] = np.bincount(y[pid][mask], minlength=10)
        lab += np.bincount(y[pid][first], minlength=10)
    want, _ = balance_greedy(unl, lab, np.minimum(12, unl.sum(1)), n=2)
    assert rows[0]["chosen_clients"] == [int(z) for z in want]
    # the oracle is read in-process: the run sends no probe and replies carry only the usual scalars
    kinds = {r.metadata.message_type for r in replies}
    assert kinds == {"query.info", "train", "query.acquire"}
    for r in replies:
        for metrics in r.content.metric_records.values():
            assert set(metrics) <= ALLOWED_METRICS


# ---------------------------------------------------------------- mix balance, the deployable twin
def test_mix_balance_is_the_oracles_greedy_on_predicted_mixes():
    # with predicted mixes equal to the true ones, mix balance picks what the oracle picks; with
    # the mixes permuted among clients, it follows the mixes, not the truth
    rng = np.random.default_rng(3)
    unl = rng.integers(0, 40, size=(10, C)).astype(float)
    n_u = unl.sum(1).astype(int)
    lab = rng.integers(0, 20, size=(10, C)).astype(float)
    truth = ClientStats(entropy=np.zeros(10), n_unlabeled=n_u, true_unlabeled=unl, true_labeled=lab)
    seen = ClientStats(entropy=np.zeros(10), n_unlabeled=n_u, predicted_mix=unl / n_u[:, None],
                       labeled_per_class=lab.sum(0))
    r = np.random.default_rng(0)
    want = order_clients("oracle-balance", truth, r, OracleParams(15), n=5)
    got = order_clients("mix-balance", seen, r, get("mix-balance").params(Config.from_run_config(
        {"points-per-client": 15})), n=5)
    assert list(got) == list(want)
    perm = np.roll(np.arange(10), 3)
    moved = ClientStats(entropy=np.zeros(10), n_unlabeled=n_u[perm], predicted_mix=(unl / n_u[:, None])[perm],
                        labeled_per_class=lab.sum(0))
    got2 = order_clients("mix-balance", moved, r, get("mix-balance").params(Config.from_run_config(
        {"points-per-client": 15})), n=5)
    assert list(got2) == [int(np.flatnonzero(perm == z)[0]) for z in want]


def test_mix_balance_runs_the_protocol_sending_only_a_mean_prediction():
    rc = {**SMALL, "client-strategy": "mix-balance", "point-strategy": "random"}
    replies = []
    rows, _ = run_inprocess(rc, M, on_reply=lambda m, r: replies.append(r))
    assert [r["labels"] for r in rows] == [30, 54, 78]
    assert all(len(r["graph"]["balance_entropy"]) == 2 for r in rows[:-1])
    probes = [r for r in replies if r.metadata.message_type == "query.probe"]
    assert probes and not any(r.content.array_records for r in probes)  # no pseudo-updates, no data
    for r in probes:  # the mix: C numbers, a mean over the client's pool
        metrics = {k: v for rec in r.content.metric_records.values() for k, v in rec.items()}
        assert set(metrics) <= ALLOWED_METRICS | {"mix"} and len(metrics["mix"]) == 10
    with pytest.raises(ConfigError, match="report-label-histogram"):
        Config.from_run_config({**rc, "report-label-histogram": False})


def test_bbse_mixes_reach_mix_balance_through_the_summed_confusion_counts(monkeypatch):
    # predicted-mix = bbse: clients send their argmax share and their labeled points' confusion
    # counts (C² integers that add up to the client's labels); the server solves each share through
    # the federation's summed counts before the greedy sees it
    import fedal.class_balance as cb
    from fedal.uncertainty import bbse_mix

    seen = []
    real = cb.balance_greedy
    monkeypatch.setattr(cb, "balance_greedy", lambda u, *a, **k: (seen.append(np.array(u)), real(u, *a, **k))[1])
    rc = {**SMALL, "client-strategy": "mix-balance", "point-strategy": "random", "predicted-mix": "bbse",
          "al-rounds": 1}
    probes = []
    rows, grid = run_inprocess(rc, M, on_reply=lambda m, r: probes.append(r) if r.metadata.message_type == "query.probe" else None)
    assert [r["labels"] for r in rows] == [30, 54]
    got = {}
    for r in probes:
        met = {k: v for rec in r.content.metric_records.values() for k, v in rec.items()}
        assert set(met) <= ALLOWED_METRICS | {"mix", "confusion"} and not r.content.array_records
        assert len(met["confusion"]) == 100 and sum(met["confusion"]) == met["n-labeled"]
        got[int(met["partition-id"])] = met
    conf = sum(np.asarray(m["confusion"], dtype=float).reshape(10, 10) for m in got.values())
    want = np.stack([bbse_mix(conf, got[z]["mix"]) * got[z]["n-unlabeled"] for z in range(M)])
    assert np.allclose(seen[0], want)
    assert not np.allclose(seen[0], np.stack([np.asarray(got[z]["mix"]) * got[z]["n-unlabeled"] for z in range(M)]))
