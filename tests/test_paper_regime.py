"""The paper's training regime as run-config options (docs/method.md, "The paper's training
regime"): equal-size Dirichlet clients, the step learning-rate schedule, and their config keys."""

import numpy as np
import pytest

from fedal.config import Config, ConfigError
from fedal.data.partitioners import dirichlet_equal_indices
from fedal.training import scheduled_lr


def test_dirichlet_equal_gives_every_client_the_same_size_and_a_skewed_mix():
    y = np.repeat(np.arange(10), 300)
    np.random.default_rng(0).shuffle(y)
    parts = dirichlet_equal_indices(y, 20, 0.1, seed=1)
    sizes = [len(p) for p in parts]
    assert sizes[:-1] == [150] * 19 and sum(sizes) == len(y)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(y)  # a partition: every point once
    hist = np.stack([np.bincount(y[p], minlength=10) for p in parts])
    # α = 0.1: a client is mostly one or two classes (uniform mixes would give a share of ~0.15)
    assert np.mean(hist.max(1) / hist.sum(1)) > 0.5
    again = dirichlet_equal_indices(y, 20, 0.1, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = dirichlet_equal_indices(y, 20, 0.1, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_equal_mix_follows_alpha():
    y = np.repeat(np.arange(10), 500)
    share = {}
    for alpha in (0.1, 100.0):
        parts = dirichlet_equal_indices(y, 20, alpha, seed=0)
        hist = np.stack([np.bincount(y[p], minlength=10) for p in parts[:-1]])
        share[alpha] = np.mean(hist.max(1) / hist.sum(1))
    assert share[0.1] > 0.5 > 0.25 > share[100.0]


def test_dirichlet_equal_rejects_bad_input():
    with pytest.raises(ValueError, match="num_partitions"):
        dirichlet_equal_indices(np.zeros(5), 6, 0.1, 0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_equal_indices(np.zeros(5), 2, 0.0, 0)


def test_the_partition_key_serves_equal_clients_through_flower_datasets():
    from fedal.data import partition_indices

    parts = partition_indices("digits", "", 10, "dirichlet-equal", 0.1, 0.2, 0)
    sizes = [len(p) for p in parts]
    assert len(set(sizes[:-1])) == 1 and sizes[-1] >= sizes[0]


def test_step_schedule_decays_tenfold_every_step_rounds():
    assert [scheduled_lr(1e-3, "step", 10, t) for t in (1, 10, 11, 20, 21)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    assert scheduled_lr(3e-3, "constant", 10, 99) == 3e-3
    with pytest.raises(ValueError, match="lr-schedule"):
        scheduled_lr(1e-3, "cosine", 10, 1)


def test_clients_train_with_the_scheduled_rate():
    """A client's update in FL round 3 under step/2 equals one at a constant lr/10: the schedule
    reaches local training (both branches: retrain and warm start)."""
    from fedal.client import ClientWorker
    from fedal.client_data import load_client_data
    from fedal.store import MemoryPoolStore
    from fedal.pools import Pools

    for mode in ("retrain", "warm-start"):
        base = {"dataset": "digits", "training-mode": mode, "learning-rate": 0.01}
        out = []
        for rc in ({**base, "lr-schedule": "step", "lr-step-rounds": 2},
                   {**base, "learning-rate": 0.001}):
            data = load_client_data(rc, 0, 4)
            pools = Pools(size=len(data.x))
            pools.add(np.arange(20), data.y[:20], 0)
            store = MemoryPoolStore()
            store.save(pools)
            w = ClientWorker(data, store)
            out.append(w.train(w.model().state_dict(), 0, 3, 1).weights)
        assert all(torch_equal(out[0][k], out[1][k]) for k in out[0]), mode


def torch_equal(a, b):
    import torch

    return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))


def test_new_keys_validate_and_stay_out_of_old_hashes():
    old = Config.from_run_config({})
    assert "lr-schedule" not in __import__("fedal.config", fromlist=["x"]).experiment_key(old.to_run_config())
    step = Config.from_run_config({"lr-schedule": "step"})
    assert step.config_hash() != old.config_hash()
    assert step.replace(lr_step_rounds=5).config_hash() != step.config_hash()
    # a constant schedule never reads lr-step-rounds
    assert old.replace(lr_step_rounds=5).config_hash() == old.config_hash()
    # coverage-steps and pow-d-candidates count only for the strategies that read them
    assert old.replace(coverage_steps=10).config_hash() == old.config_hash()
    cov = Config.from_run_config({"client-strategy": "diffusion-coverage"})
    assert cov.replace(coverage_steps=10).config_hash() != cov.config_hash()
    for rc, match in [({"coverage-steps": 5}, "coverage-steps"), ({"coverage-steps": 0}, "coverage-steps"),
                      ({"client-strategy": "diffusion-coverage", "laplacian": "rw"}, "rw"),
                      ({"pow-d-candidates": 3}, "pow-d-candidates"), ({"lr-schedule": "cosine"}, "lr-schedule"),
                      ({"lr-step-rounds": 0}, "lr-step-rounds")]:
        with pytest.raises(ConfigError, match=match):
            Config.from_run_config(rc)


def test_a_dirichlet_partition_flower_cannot_draw_is_a_clear_error_naming_the_way_out():
    """flwr-datasets' DirichletPartitioner gives up after 10 draws that leave a client with fewer
    than 10 points (100 clients on digits' 1,438 training points at alpha 0.1, any seed; on MNIST-1D seed
    5 of 100 clients); fedal names the values and what to change instead of the partitioner's
    "Please update the values of alpha"."""
    from fedal.config import ConfigError
    from fedal.data import partition_indices

    with pytest.raises(ConfigError, match=r"dirichlet-alpha = 0\.1 and seed = 3 .* 100 clients .* 1438 points "
                                          r"of 'digits'.*partition = dirichlet-equal"):
        partition_indices("digits", "", 100, "dirichlet", 0.1, 0.2, 3)
    assert len(partition_indices("digits", "", 100, "dirichlet-equal", 0.1, 0.2, 3)) == 100  # the way out works
