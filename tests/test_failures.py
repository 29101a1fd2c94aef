"""Deployment semantics on the server (docs/method.md, "Failures and resume"): clients followed by
client id across node ids, waiting for min-clients, and clients that fail or fall silent are
retried, then skipped with the failure recorded and their label budget topped up elsewhere.

Faults are injected into the in-process grid (the real loop and the real ClientApp handlers)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict

from fedal.client_app import POOLS_KEY
from fedal.pools import Pools
from strategies.federation import ClientFailure, FederationError
from tests.golden import INPROCESS_BASE
from tests.helpers import without_times
from tests.inprocess import InProcessGrid, run_inprocess

M = 8
FAST = {**INPROCESS_BASE, "client-strategy": "entropy", "point-strategy": "entropy",
        "retry-backoff": 0.0, "send-timeout": 5.0}


def pid_of(grid, node_id) -> int:
    return int(grid.contexts[node_id].node_config["partition-id"])


class FaultyGrid(InProcessGrid):
    """``fault(msg, pid)`` returns None (deliver), "error" (the handler fails: an error reply, as
    Flower sends when a ClientApp raises) or "drop" (no reply: the client timed out). A message
    to a node id that is not connected gets no reply either."""

    fault = staticmethod(lambda msg, pid: None)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log: list[tuple[str, int, dict]] = []  # (message type, partition id, config) sent

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                continue
            pid = pid_of(self, node)
            self.log.append((msg.metadata.message_type, pid, dict(msg.content["config"])))
            what = self.fault(msg, pid)
            if what == "drop":
                continue
            if what == "error":
                reply = Message(Error(code=0, reason=f"injected failure at client {pid}"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = node
                replies.append(reply)
                continue
            replies += super().send_and_receive([msg], timeout=timeout)
        return replies

    def move(self, pid: int, new_node: int) -> None:
        """The SuperNode of ``pid`` restarts and registers under a new node id, keeping its state
        (a durable store)."""
        [old] = [n for n in self.contexts if pid_of(self, n) == pid]
        ctx = self.contexts.pop(old)
        self.contexts[new_node] = Context(run_id=ctx.run_id, node_id=new_node, node_config=dict(ctx.node_config),
                                          state=ctx.state, run_config=dict(ctx.run_config))


def faulty(fault):
    return type("Grid", (FaultyGrid,), {"fault": staticmethod(fault)})


def pools(grid) -> dict[int, Pools]:
    return {pid_of(grid, n): Pools.from_dict(dict(ctx.state.config_records[POOLS_KEY]))
            for n, ctx in grid.contexts.items() if POOLS_KEY in ctx.state.config_records}


@pytest.fixture(scope="module")
def plain_rows():
    rows, grid = run_inprocess(FAST, M)
    return without_times(rows), grid


def test_a_client_error_in_training_is_retried_then_skipped_and_fedavg_uses_the_rest(monkeypatch):
    import strategies.active_learning as AL

    averaged = []
    real = AL.aggregate_arrayrecords
    monkeypatch.setattr(AL, "aggregate_arrayrecords", lambda recs, key: averaged.append(len(recs)) or real(recs, key))
    victim = {}

    def fault(msg, pid):
        conf = msg.content["config"]
        if msg.metadata.message_type == "train" and conf["al-round"] == 1 and conf["server-round"] == 1:
            victim.setdefault("pid", pid)  # the first client trained in AL round 1 fails all its tries
            return "error" if pid == victim["pid"] else None
        return None

    rows, grid = run_inprocess({**FAST, "max-retries": 2}, M, grid_class=faulty(fault))
    v = victim["pid"]
    assert [r["labels"] for r in rows] == [30, 54, 78]  # the run completed, budget exact
    assert rows[1]["failures"] == [{"client": v, "step": "train", "fl_round": 1,
                                    "reason": f"client error: injected failure at client {v}"}]
    assert "failures" not in rows[0] and "failures" not in rows[2]
    sent = [p for kind, p, c in grid.log if kind == "train" and c["al-round"] == 1 and c["server-round"] == 1]
    assert sent.count(v) == 3  # the first try and max-retries = 2 resends
    trained = rows[0]["clients_with_labels"]  # who holds labels when AL round 1 trains
    # AL round 1 averages FL round 1 over the others, FL round 2 over everyone again
    assert averaged[2:4] == [trained - 1, trained]


def test_a_client_failing_acquisition_has_its_share_topped_up_on_the_next_client(plain_rows):
    victim = {}

    def fault(msg, pid):
        if msg.metadata.message_type == "query.acquire" and msg.content["config"]["al-round"] >= 1:
            victim.setdefault("pid", pid)  # the first client chosen in AL round 0 fails for good
            return "error" if pid == victim["pid"] else None
        return None

    rows, grid = run_inprocess(FAST, M, grid_class=faulty(fault))
    v = victim["pid"]
    assert [r["labels"] for r in rows] == [30, 54, 78]  # every round still spent V·W = 24 labels
    assert [r["acquired"] for r in rows] == [24, 24, 0]
    assert rows[0]["failures"][0] == {"client": v, "step": "query.acquire",
                                      "reason": f"client error: injected failure at client {v}"}
    assert v not in rows[0]["chosen_clients"] and len(rows[0]["chosen_clients"]) == 2
    # the client that took the share was not chosen by the plan: the plan's other client and
    # the next one in the strategy's order acquired
    plain = plain_rows[0]
    assert v in plain[0]["chosen_clients"]
    kept = [c for c in plain[0]["chosen_clients"] if c != v]
    assert rows[0]["chosen_clients"][0] == kept[0]
    p = pools(grid)
    assert sum(x.n_labeled for x in p.values()) == 78
    assert v not in p or set(p[v].acquired_round) <= {0}  # it paid no label after round 0


def test_a_silent_client_is_retried_then_not_probed_and_not_chosen(plain_rows, monkeypatch):
    import strategies.active_learning as AL

    eligible = []
    real = AL.plan_round
    monkeypatch.setattr(AL, "plan_round", lambda name, stats, *a: eligible.append(stats.eligible) or real(name, stats, *a))
    v = plain_rows[0][0]["chosen_clients"][0]  # the entropy strategy's first choice in AL round 0

    def fault(msg, pid):
        if msg.metadata.message_type == "query.probe" and msg.content["config"]["al-round"] == 1 and pid == v:
            return "drop"
        return None

    rows, grid = run_inprocess({**FAST, "max-retries": 1, "send-timeout": 0.25}, M, grid_class=faulty(fault))
    assert rows[0]["failures"] == [{"client": v, "step": "query.probe", "fl_round": 2,
                                    "reason": "no reply within send-timeout = 0.25 s"}]
    assert sum(1 for kind, p, c in grid.log if p == v and kind == "query.probe" and c["al-round"] == 1) == 2
    assert v not in rows[0]["chosen_clients"]  # no statistics: not eligible this round
    assert not eligible[0][v] and eligible[0].sum() == M - 1 and eligible[1].all()
    assert [r["labels"] for r in rows] == [30, 54, 78]


def test_every_client_failing_a_step_stops_the_run():
    fault = lambda msg, pid: "error" if msg.metadata.message_type == "train" else None  # noqa: E731
    with pytest.raises(ClientFailure, match=r"every client \(2\) failed on 'train' after 2 tries"):
        run_inprocess({**FAST, "max-retries": 1}, M, grid_class=faulty(fault))


def test_on_client_failure_stop_raises_at_the_first_failure():
    fault = lambda msg, pid: "error" if (msg.metadata.message_type == "query.probe" and pid == 3) else None  # noqa: E731
    grid_cls = faulty(fault)
    with pytest.raises(ClientFailure, match="client 3: client error: injected failure at client 3"):
        run_inprocess({**FAST, "on-client-failure": "stop"}, M, grid_class=grid_cls)


def test_a_client_back_under_a_new_node_id_is_recognised_by_its_client_id(plain_rows):
    # client 5's SuperNode restarts twice: between AL rounds (found by the round's re-mapping)
    # and in the middle of a step (its message is lost; the resend goes to its new node id)
    class Restarting(FaultyGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            first = messages[0]
            conf = first.content["config"]
            if first.metadata.message_type == "train" and conf["al-round"] == 1 and conf["server-round"] == 1:
                if 77 not in self.contexts:
                    self.move(5, 77)  # before the first train message of AL round 1
            out = super().send_and_receive(messages, timeout=timeout)
            if first.metadata.message_type == "query.acquire" and conf["al-round"] == 0:
                self.move(3, 99)  # after round 0's acquisition
            return out

    lines = []
    rows, grid = run_inprocess({**FAST, "init-clients": 8, "init-points": 5}, M, grid_class=Restarting,
                               log=lines.append)
    ref, _ = run_inprocess({**FAST, "init-clients": 8, "init-points": 5}, M)
    assert without_times(rows) == without_times(ref)  # nothing lost, nothing skipped
    assert {99, 77} <= set(grid.contexts)
    assert any("client 3 is back, now on node 99" in s for s in lines)
    assert any("client 5 is back, now on node 77" in s for s in lines)


def test_two_live_nodes_claiming_one_client_id_are_refused():
    class Twins(FaultyGrid):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            nodes = list(self.contexts)
            self.contexts[nodes[4]].node_config["partition-id"] = 2  # node 4 says it is client 2

    with pytest.raises(FederationError, match=r"client id '2' is claimed by 2 live nodes \(1014, 1028\)"):
        run_inprocess(FAST, M, grid_class=Twins)


def test_a_late_node_claiming_the_id_of_a_connected_client_is_refused():
    # after AL round 0 a new node joins and answers as client 2, whose own node still answers:
    # one site's labels must not move to another machine silently, so the run stops
    class LateTwin(FaultyGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            out = super().send_and_receive(messages, timeout=timeout)
            if messages[0].metadata.message_type == "query.acquire" and 99 not in self.contexts:
                [ctx] = [c for c in self.contexts.values() if int(c.node_config["partition-id"]) == 2]
                self.contexts[99] = Context(run_id=ctx.run_id, node_id=99, node_config=dict(ctx.node_config),
                                            state=RecordDict(), run_config=dict(ctx.run_config))
            return out

    with pytest.raises(FederationError, match=r"client id '2' is claimed by 2 live nodes \(99, 1014\); every "
                                              r"SuperNode needs its own client-id"):
        run_inprocess(FAST, M, grid_class=LateTwin)


def test_the_server_waits_for_min_clients_and_then_starts():
    class SlowStart(FaultyGrid):
        calls = 0

        def get_node_ids(self):
            self.calls += 1
            return list(self.contexts)[: min(M, 2 * self.calls)]  # two more nodes per poll

    lines = []
    rows, grid = run_inprocess({**FAST, "min-clients": 6, "al-rounds": 0}, M, grid_class=SlowStart,
                               log=lines.append)
    assert grid.calls == 3 and rows[0]["labels"] == 30
    assert any(line.startswith("fedal: 6 clients") for line in lines)


def test_too_few_clients_within_wait_timeout_is_a_clear_error():
    with pytest.raises(FederationError, match=r"only 3 client\(s\) answered query.info within wait-timeout "
                                              r"= 0.3 s, fewer than min-clients = 5; .*lower min-clients"):
        run_inprocess({**FAST, "min-clients": 5, "wait-timeout": 0.3, "init-clients": 1, "clients-per-round": 1},
                      3)


def test_a_federation_error_is_printed_with_its_message_and_raised(capsys, tmp_path):
    from types import SimpleNamespace

    from strategies.server_app import main

    grid = InProcessGrid(lambda m, c: pytest.fail("no node answers"), 0)
    with pytest.raises(FederationError):
        main(grid, SimpleNamespace(run_config={}),
             {**FAST, "min-clients": 2, "wait-timeout": 0.2, "run-dir": str(tmp_path)})
    assert "fedal: error: only 0 client(s) answered query.info" in capsys.readouterr().err


def test_rows_name_clients_by_string_when_ids_are_not_all_digits():
    from strategies.federation import ALState, ClientInfo

    s = ALState({c: ClientInfo(1, c, 0, 1) for c in ["3", "12"]})
    assert [s.public_id(c) for c in s.clients] == [3, 12]
    s.add(ClientInfo(2, "site-a", 0, 1))
    assert list(s.clients) == ["3", "12", "site-a"] and s.public_id("3") == "3"
    assert np.asarray([s.public_id(c) for c in s.clients]).dtype.kind == "U"


def test_nodes_failing_query_info_are_named_in_the_min_clients_error():
    fault = lambda msg, pid: "error" if (msg.metadata.message_type == "query.info" and pid != 0) else None  # noqa: E731
    with pytest.raises(FederationError, match=r"only 1 client\(s\) answered .*\(7 node\(s\) failed query.info; "
                                              r"node 1007: injected failure at client 1\)"):
        run_inprocess({**FAST, "min-clients": 2, "wait-timeout": 0.3}, M, grid_class=faulty(fault))


def test_the_deployment_keys_are_validated_and_leave_the_experiment_hash_alone():
    from fedal.config import Config, ConfigError

    base = Config.from_run_config(FAST)
    ops = {"min-clients": 7, "wait-timeout": 5.0, "send-timeout": 9.0, "max-retries": 0, "retry-backoff": 0.5,
           "on-client-failure": "stop", "resume": True, "stop-after-round": 1}
    assert Config.from_run_config({**FAST, **ops}).config_hash() == base.config_hash()
    for key, bad in [("min-clients", 0), ("wait-timeout", 0), ("send-timeout", -1.0), ("max-retries", -1),
                     ("retry-backoff", -0.1), ("on-client-failure", "ignore"), ("stop-after-round", -2)]:
        with pytest.raises(ConfigError, match=key):
            Config.from_run_config({**FAST, key: bad})
