"""Mix balance's gate (``mix-gate = all-classes``, docs/method.md, "Mix balance"): random clients
while some class has no labeled point, the greedy once every class has one; and the BBSE skill
of simulations/mix_estimates.py (a gate measured and left out)."""

import numpy as np
import pytest

import simulations.mix_estimates as me
from fedal.config import Config, experiment_hash
from fedal.errors import ConfigError
from fedal.selection import ClientStats, MixBalanceParams, order_clients
from simulations.mix_estimates import bbse_skill
from tests.inprocess import run_inprocess
from tests.test_protocol import SMALL, M

C = 3


def _pure_clients(sizes=((30, 0, 0), (0, 20, 0), (0, 0, 25), (10, 10, 0), (0, 5, 15))):
    """Per-client (C, C) confusion counts of a model that is right on every labeled point. Every
    class is held by two clients at least: left out, a client's classes stay in M through others."""
    return np.stack([np.diag(s) for s in sizes]).astype(float)


def test_skill_is_one_when_bbse_recovers_every_labeled_histogram():
    confs = _pure_clients()
    hist = confs.sum(2)
    shares = hist / hist.sum(1, keepdims=True)  # a perfect model: the argmax share is the mix
    assert bbse_skill(confs, shares) == pytest.approx(1.0)


def test_a_client_counts_by_its_labels():
    # five clients estimated exactly and a sixth with 2 labels estimated all wrong: the skill stays
    # near 1, as the 2 labels are 2 of 137 (unweighted, the one wrong client of six would cost ~0.2)
    confs = np.concatenate([_pure_clients(), np.diag([0, 0, 2])[None]]).astype(float)
    shares = confs.sum(2) / confs.sum((1, 2))[:, None]
    shares[-1] = [1, 0, 0]
    assert 0.95 < bbse_skill(confs, shares) < 1


def test_skill_is_about_zero_when_the_shares_say_nothing_about_a_client():
    # 60 clients with skewed mixes (enough that leaving one out barely moves the pooled shares)
    rng = np.random.default_rng(0)
    confs = np.stack([np.diag(rng.multinomial(40, rng.dirichlet(np.full(C, 0.3)))) for _ in range(60)]).astype(float)
    shares = np.tile(confs.sum((0, 2)) / confs.sum(), (len(confs), 1))  # every client: the pooled mix
    assert abs(bbse_skill(confs, shares)) < 0.05
    worse = np.roll(confs.sum(2) / confs.sum((1, 2))[:, None], 1, axis=1)  # each client: a wrong class
    assert bbse_skill(confs, worse) < 0


def test_a_clients_own_labels_never_enter_its_estimate(monkeypatch):
    confs = _pure_clients()
    confs[3] = [[6, 4, 0], [3, 7, 0], [0, 0, 0]]
    seen = []
    real = me.bbse_mix
    monkeypatch.setattr(me, "bbse_mix", lambda conf, mu: (seen.append(np.array(conf)), real(conf, mu))[1])
    bbse_skill(confs, np.full((len(confs), C), 1 / C))
    assert len(seen) == len(confs)
    for z, conf in enumerate(seen):
        assert np.array_equal(conf, confs.sum(0) - confs[z])


def test_skill_needs_two_labeled_clients_with_unlabeled_points():
    confs = _pure_clients()
    shares = confs.sum(2) / confs.sum((1, 2))[:, None]
    confs[1:] = 0
    assert np.isnan(bbse_skill(confs, shares))
    confs = _pure_clients()
    shares[1:] = 0  # labels, but nothing left to estimate
    assert np.isnan(bbse_skill(confs, shares))


def _stats(labeled):
    mix = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]], dtype=float)
    return ClientStats(entropy=np.zeros(5), n_unlabeled=np.array([50, 40, 30, 20, 0]), predicted_mix=mix,
                       labeled_per_class=np.asarray(labeled))


def test_a_class_without_labels_leaves_clients_in_random_order():
    diag = {}
    got = order_clients("mix-balance", _stats([100, 5, 0]), np.random.default_rng(4),
                        MixBalanceParams(10, "all-classes"), diagnostics=diag)
    assert list(got) == list(np.random.default_rng(4).permutation([0, 1, 2, 3]))
    assert diag == {"classes_without_labels": 1}


def test_once_every_class_has_a_label_the_greedy_runs():
    diag = {}
    gated = order_clients("mix-balance", _stats([100, 1, 1]), np.random.default_rng(4),
                          MixBalanceParams(10, "all-classes"), diagnostics=diag)
    plain = order_clients("mix-balance", _stats([100, 1, 1]), np.random.default_rng(4), MixBalanceParams(10))
    assert list(gated) == list(plain) and set(gated[:2]) == {2, 3}  # the classes the labels lack first
    assert diag["classes_without_labels"] == 0 and "balance_entropy" in diag


def test_the_gate_is_a_validated_choice_out_of_old_runs_hashes():
    rc = {"client-strategy": "mix-balance", "predicted-mix": "bbse"}
    with pytest.raises(ConfigError, match="mix-gate.*'some'.*none, all-classes"):
        Config.from_run_config({**rc, "mix-gate": "some"})
    # mix-gate = none is how every earlier mix-balance run was recorded: the same hash
    assert experiment_hash({**rc, "mix-gate": "none"}) == experiment_hash(rc)
    assert experiment_hash({**rc, "mix-gate": "all-classes"}) != experiment_hash(rc)


def test_the_server_gates_on_the_labeled_class_counts():
    # a row records the labeled set after its round's acquisition, which is what the next
    # selection reads: in the small federation some class still has no label at the second one
    rc = {**SMALL, "client-strategy": "mix-balance", "point-strategy": "random", "mix-gate": "all-classes"}
    rows, _ = run_inprocess(rc, M)
    missing = int((np.asarray(rows[0]["labeled_per_class"]) == 0).sum())
    assert missing > 0 and rows[1]["graph"] == {"classes_without_labels": missing, "probes": rows[1]["graph"]["probes"]}
