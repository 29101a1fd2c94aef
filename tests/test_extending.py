"""docs/extending.md, run: a client strategy with its own parameters, a point strategy and a
dataset, each registered where fedal's own are (here from the test, as a plug-in would), and one
AL round in process with all three. Nothing else in fedal is touched: config validation, the
hash, the server loop, the clients and the model builder find them through their registries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fedal import acquisition, selection
from fedal.config import Config, ConfigError
from fedal.data.registry import Dataset, DatasetInfo, DisplayInfo, register_dataset, unregister_dataset
from tests.helpers import without_times
from tests.inprocess import run_inprocess


# ---------------------------------------------------------------------------------- a client strategy
@dataclass(frozen=True)
class MostUnlabeledParams:
    """Its own parameters: how many clients it may name at most (from the run config)."""

    at_most: int


orders: list[MostUnlabeledParams] = []


def most_unlabeled(stats, rng, params: MostUnlabeledParams, n=None, diagnostics=None) -> np.ndarray:
    """The clients with the most unlabeled points first (ties: lower index)."""
    orders.append(params)
    elig = np.flatnonzero(stats.eligible)
    return elig[np.argsort(-stats.n_unlabeled[elig], kind="stable")][:params.at_most]


# ---------------------------------------------------------------------------------- a point strategy
class FirstUnlabeled(acquisition.Strategy):
    """The n unlabeled points of lowest index; the utility is minus the index."""

    def _select(self, view, pool, n, rng):
        return pool[:n], -pool[:n].astype(float)


# ---------------------------------------------------------------------------------- a dataset
def blobs(root: str = "") -> Dataset:
    """Three Gaussian blobs in six dimensions: 600 training and 150 test points."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 750)
    x = (rng.normal(size=(750, 6)) + 3.0 * np.eye(3, 6)[y]).astype(np.float32)
    return Dataset("blobs", x[:600], y[:600], x[600:], y[600:], 3)


@pytest.fixture
def registered():
    selection.register("most-unlabeled", probes=False,
                       params=lambda cfg: MostUnlabeledParams(2 * cfg.clients_per_round))(most_unlabeled)
    acquisition.register("first-unlabeled")(FirstUnlabeled)
    register_dataset(DatasetInfo("blobs", (6,), "float", 3, "mlp", blobs,
                                 lambda root: DisplayInfo((6,), ("a", "b", "c"))))
    orders.clear()
    yield
    selection.unregister("most-unlabeled")
    acquisition.unregister("first-unlabeled")
    unregister_dataset("blobs")


RC = {"dataset": "blobs", "partition": "iid", "client-strategy": "most-unlabeled", "point-strategy": "first-unlabeled",
      "al-rounds": 1, "init-clients": 2, "init-points": 5, "clients-per-round": 2, "points-per-client": 6,
      "fl-rounds": 2, "local-epochs": 1, "batch-size": 16}


def test_a_registered_client_strategy_point_strategy_and_dataset_run_an_al_round(registered):
    seen = []
    rows, grid = run_inprocess(RC, 4, on_reply=lambda msg, reply: seen.append((msg, reply)))
    assert [r["round"] for r in rows] == [0, 1]
    # round 0 labels two random clients (5 points each) of four with 150 points (iid): the two
    # others hold the most unlabeled points, and the strategy, with its own parameters, picks them
    first = {int(msg.metadata.dst_node_id) for msg, _ in seen if msg.metadata.message_type == "query.acquire"
             and msg.content["config"]["al-round"] == 0}
    pid = {nid: int(ctx.node_config["partition-id"]) for nid, ctx in grid.contexts.items()}
    assert sorted(rows[0]["chosen_clients"]) == sorted(set(range(4)) - {pid[n] for n in first})
    assert orders and set(orders) == {MostUnlabeledParams(4)}
    assert rows[0]["acquired"] == 12 and rows[1]["labels"] == 2 * 5 + 2 * 6
    # the point strategy picked each chosen client's lowest unlabeled indices
    from fedal.client_app import POOLS_KEY
    from fedal.pools import Pools

    for nid, ctx in grid.contexts.items():
        if pid[nid] in rows[0]["chosen_clients"]:
            pools = Pools.from_dict(dict(ctx.state.config_records[POOLS_KEY]))
            assert sorted(int(i) for i, r in zip(pools.labeled, pools.acquired_round) if r == 1) == list(range(6))
    # the model was built for the dataset's inputs and classes, and it learned its blobs
    assert rows[1]["accuracy"] > 0.9 and len(rows[1]["labeled_per_class"]) == 3
    # the same run again: the same rows (seeded like fedal's own choices)
    assert without_times(run_inprocess(RC, 4)[0]) == without_times(rows)


def test_the_config_knows_registered_choices_only_while_registered(registered):
    cfg = Config.from_run_config(RC)
    assert cfg.dataset == "blobs" and selection.get(cfg.client_strategy).params(cfg) == MostUnlabeledParams(4)
    selection.unregister("most-unlabeled")
    with pytest.raises(ConfigError, match=r"client-strategy = 'most-unlabeled' is invalid; valid: random, "):
        Config.from_run_config(RC)
