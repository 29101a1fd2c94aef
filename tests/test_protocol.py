"""The AL protocol through the real ServerApp loop and real ClientApp handlers, in-process
(tests.inprocess.InProcessGrid), so every message can be inspected."""

import numpy as np
import pytest
from flwr.app import Message

from fedal.client_app import POOLS_KEY
from fedal.data import client_data
from fedal.config import Config
from fedal.pools import Pools
from tests.inprocess import run_inprocess
from tests.helpers import without_times

SMALL = {"dataset": "digits", "al-rounds": 2, "init-clients": 2, "init-points": 15,
         "clients-per-round": 2, "points-per-client": 12, "fl-rounds": 2, "local-epochs": 1,
         "pseudo-epochs": 2, "knn-k": 3, "local-k": 3}
M = 8


def _pools(grid):
    return {ctx.node_config["partition-id"]: Pools.from_dict(dict(ctx.state.config_records[POOLS_KEY]))
            for ctx in grid.contexts.values() if POOLS_KEY in ctx.state.config_records}


@pytest.mark.parametrize("client,point", [("entropy", "entropy"), ("random", "random"),
                                          ("diffusion", "diffusion")])
def test_budget_exact_and_no_index_labeled_twice(client, point):
    rc = {**SMALL, "client-strategy": client, "point-strategy": point}
    rows, grid = run_inprocess(rc, M)
    labels = [r["labels"] for r in rows]
    assert labels == [30, 54, 78]  # 2×15 initial, then exactly V·W = 24 per AL round
    assert [r["acquired"] for r in rows] == [24, 24, 0]
    pools = _pools(grid)
    assert sum(p.n_labeled for p in pools.values()) == 78
    for pid, p in pools.items():
        assert len(set(p.labeled)) == len(p.labeled)
        # the labels in the pool are the oracle's answers for exactly those indices
        _, y = client_data(Config.from_run_config(rc), pid, M)
        assert p.labels == y[p.labeled].tolist()
    # the class histogram the server saw adds up to the labels paid for
    assert sum(rows[-1]["labeled_per_class"]) == 78


def test_top_up_when_a_chosen_client_runs_dry():
    # W larger than some Dirichlet clients' pools: the round still acquires exactly V·W labels
    rc = {**SMALL, "dirichlet-alpha": 0.05, "points-per-client": 60, "client-strategy": "entropy",
          "point-strategy": "random", "al-rounds": 3}
    rows, _ = run_inprocess(rc, M)
    assert [r["acquired"] for r in rows[:-1]] == [120, 120, 120]


def test_same_seed_same_picks_and_accuracy():
    rc = {**SMALL, "client-strategy": "diffusion", "point-strategy": "diffusion"}
    a, _ = run_inprocess(rc, M)
    b, _ = run_inprocess(rc, M)
    assert without_times(a) == without_times(b)
    c, _ = run_inprocess({**rc, "seed": 1}, M)
    assert without_times(c) != without_times(a)


def test_results_do_not_depend_on_node_ids_or_reply_order(monkeypatch):
    # Flower's simulation draws node ids at random every run and replies arrive in any order;
    # FedAvg's float sums depend on the order, so it must come from the partition ids. The
    # rows alone are too coarse to see a last-bit difference (float32 test loss), so every
    # aggregated model is compared bit for bit.
    import strategies.active_learning as AL

    aggregated = []
    real = AL.aggregate_arrayrecords

    def spy(records, key):
        out = real(records, key)
        aggregated.append({k: v.numpy().copy() for k, v in out.items()})
        return out

    monkeypatch.setattr(AL, "aggregate_arrayrecords", spy)
    rc = {**SMALL, "client-strategy": "entropy", "point-strategy": "entropy", "init-clients": 5}
    a, _ = run_inprocess(rc, M, wire_seed=1)
    models_a, aggregated[:] = list(aggregated), []
    b, _ = run_inprocess(rc, M, wire_seed=2)
    assert without_times(a) == without_times(b)
    assert len(models_a) == len(aggregated) > 0
    for x, y in zip(models_a, aggregated):
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_fedavg_order_is_by_client_id_in_natural_order():
    from types import SimpleNamespace

    from strategies.active_learning import FederatedActiveLearning
    from strategies.federation import natural_key

    replies = {cid: SimpleNamespace(content=f"c{cid}") for cid in ["10", "2", "0"]}
    assert FederatedActiveLearning._ordered(replies) == ["c0", "c2", "c10"]  # as ints, not strings
    assert sorted(["site10", "site2", "lab", "site1"], key=natural_key) == ["lab", "site1", "site2", "site10"]


ALLOWED_METRICS = {"partition-id", "n-labeled", "n-unlabeled", "num-classes", "num-examples",
                   "train-loss", "train-time", "g", "acquired", "acquire-time", "acquired-per-class"}


def assert_hides_no_private_row(array: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """No contiguous segment of ``array`` (flattened, at any offset) equals, or correlates at
    |r| > 0.95 with, any raw input row of the client or its label vector: a row hidden anywhere
    in a reply, even scaled or shifted, is found. Random weights of a digits model correlate at
    most ≈ 0.7 with some 64-pixel row by chance."""
    flat = np.asarray(array, dtype=np.float64).ravel()
    for rows in (x.reshape(len(x), -1).astype(np.float64), y[None, :].astype(np.float64)):
        d = rows.shape[1]
        if flat.size < d:
            continue
        win = np.lib.stride_tricks.sliding_window_view(flat, d)
        keep = rows.std(axis=1) > 0
        z = rows[keep] - rows[keep].mean(axis=1, keepdims=True)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        c = np.cumsum(np.concatenate([[0.0], flat]))
        c2 = np.cumsum(np.concatenate([[0.0], flat ** 2]))
        mean = (c[d:] - c[:-d]) / d
        norm = np.sqrt(np.maximum((c2[d:] - c2[:-d]) - d * mean ** 2, 0.0))
        live = norm > 1e-6 * max(1.0, float(np.abs(flat).max()))
        corr = (win[live] @ z.T) / norm[live, None]  # Pearson r: z is centred, so the mean drops
        assert not np.any(np.abs(corr) > 0.95), "a reply array holds a private row"
        exact = {r.tobytes() for r in rows.astype(np.float32)}
        assert not any(w.astype(np.float32).tobytes() in exact for w in win[~live]), \
            "a reply array holds a private row"


@pytest.mark.parametrize("histogram", [True, False])
def test_privacy_no_raw_inputs_or_labels_leave_a_client(histogram):
    rc = {**SMALL, "client-strategy": "diffusion", "point-strategy": "diffusion",
          "report-label-histogram": histogram}
    cfg = Config.from_run_config(rc)
    replies: list[tuple[Message, Message]] = []
    rows, grid = run_inprocess(rc, M, on_reply=lambda m, r: replies.append((m, r)))
    model_keys = None
    private = {pid: client_data(cfg, pid, M) for pid in range(M)}
    assert len(replies) == grid.sent > 0
    for msg, reply in replies:
        content = reply.content
        pid = grid.contexts[reply.metadata.src_node_id].node_config["partition-id"]
        # the one config record: the client's name, nothing else
        assert set(content.config_records) == {"client"}
        assert dict(content.config_records["client"]) == {"client-id": str(pid)}
        for name, metrics in content.metric_records.items():
            assert set(metrics) <= ALLOWED_METRICS, set(metrics) - ALLOWED_METRICS
            for k, v in metrics.items():
                if isinstance(v, list):
                    # the only list: an aggregate class histogram, never per-point labels
                    assert k == "acquired-per-class" and histogram and len(v) == 10
        for name, arrays in content.array_records.items():
            if name == "arrays":  # model parameters
                keys = list(arrays.keys())
                model_keys = model_keys or keys
                assert keys == model_keys
            else:
                assert name == "pseudo" and list(arrays.keys()) == ["m"]
            x, y = private[pid]
            for a in arrays.values():
                assert_hides_no_private_row(a.numpy(), x, y)
    kinds = {m.metadata.message_type for m, _ in replies}
    assert kinds == {"query.info", "train", "query.probe", "query.acquire"}


@pytest.mark.parametrize("mode", ["warm-start", "cal-er", "cal-mir", "cal-der", "cal-sd", "cal-sds2"])
def test_training_modes_run_the_protocol_and_keep_logits_on_the_client(mode):
    rc = {**SMALL, "client-strategy": "entropy", "point-strategy": "entropy", "training-mode": mode}
    rows, grid = run_inprocess(rc, M)
    assert [r["labels"] for r in rows] == [30, 54, 78]
    assert rows[-1]["accuracy"] > 0.15  # learns something beyond chance (10 classes)
    pools = _pools(grid)
    # every label trained on in an earlier AL round has its z' stored, on the client only
    for p in pools.values():
        earlier = [i for i, r in zip(p.labeled, p.acquired_round) if r < 2]
        assert set(earlier) <= set(p.logits)


def test_probes_follow_the_last_quarter_of_training_and_rows_carry_graph_diagnostics(tmp_path):
    """Pseudo-updates are taken after each of the last ⌈T/4⌉ FL rounds of the AL round's
    training, from that round's global model, by every client with unlabeled data; the row of the
    round records the client graph and q.npz its q matrix."""
    rc = {**SMALL, "client-strategy": "diffusion", "point-strategy": "random", "fl-rounds": 5,
          "training-mode": "retrain", "run-dir": str(tmp_path)}
    probes = []

    def on_reply(msg, reply):
        if msg.metadata.message_type == "query.probe":
            conf = msg.content["config"]
            probes.append((int(conf["al-round"]), int(conf["fl-round"]),
                           reply.content["pseudo"]["m"].numpy().shape))

    rows, grid = run_inprocess(rc, M, on_reply=on_reply)
    # retrain: T = 5 FL rounds in every AL round → rounds 4 and 5 are recorded, for AL rounds 1, 2
    assert sorted({(a, f) for a, f, _ in probes}) == [(1, 4), (1, 5), (2, 4), (2, 5)]
    assert all(shape[0] == 1 for _, _, shape in probes)  # one update per message
    for r in rows[:-1]:
        gr = r["graph"]
        assert gr["probes"] == 2 and gr["nodes"] == M and gr["edges"] > 0
        assert {"isolated", "std_g", "std_v", "sigma_w2"} <= set(gr)
    assert "graph" not in rows[-1]


def test_q_matrix_is_saved_per_round_with_the_graph_clients(tmp_path):
    from fedal.results import run_directory

    rc = {**SMALL, "client-strategy": "diffusion", "point-strategy": "random", "run-dir": str(tmp_path)}
    run_inprocess(rc, M, record=True)
    q = np.load(run_directory(Config.from_run_config(rc)) / "q.npz")
    assert sorted(q.files) == ["clients_r1", "clients_r2", "q_r1", "q_r2"]
    for r in (1, 2):
        mat, who = q[f"q_r{r}"], q[f"clients_r{r}"]
        assert mat.shape == (M, M) and np.allclose(mat, mat.T) and not np.diag(mat).any()
        assert sorted(who.tolist()) == list(range(M))
        assert (mat[~np.eye(M, dtype=bool)] > 0).all()


@pytest.mark.parametrize("strategy", ["balanced-diffusion", "balanced-divfl"])
def test_balanced_strategies_run_the_protocol_and_send_only_a_mean_prediction(strategy):
    rc = {**SMALL, "client-strategy": strategy, "point-strategy": "entropy"}
    seen = []

    def on_reply(msg, reply):
        if msg.metadata.message_type == "query.probe":
            mix = reply.content["metrics"]["mix"]
            seen.append(len(mix))
            assert abs(sum(mix) - 1) < 1e-5

    rows, _ = run_inprocess(rc, M, on_reply=on_reply)
    assert [r["labels"] for r in rows] == [30, 54, 78]
    assert seen and set(seen) == {10}  # digits: 10 classes
    with pytest.raises(Exception, match="report-label-histogram"):
        Config.from_run_config({**rc, "report-label-histogram": False})


def test_cumulative_divfl_reads_which_clients_hold_labels_from_the_servers_own_counts():
    # the clients that hold labels come from the acquire replies the server tracks (no new message
    # field): 2 initial clients before round 1's choice, and those plus round 1's 2 picks before round 2's
    rc = {**SMALL, "client-strategy": "cumulative-divfl", "point-strategy": "random"}
    rows, _ = run_inprocess(rc, M)
    assert [r["labels"] for r in rows] == [30, 54, 78]
    holders = [set(rows[0]["chosen_clients"])]
    holders.append(holders[0] | set(rows[1]["chosen_clients"]))
    assert [r["graph"]["covered_before"] for r in rows[:-1]] == [len(h) for h in holders]
    assert len(holders[1]) > len(holders[0])
