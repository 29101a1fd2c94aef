"""An in-process stand-in for Flower's Grid: the real ServerApp loop talks to real ClientApp
objects, one Context per simulated node, without Ray or a SuperLink.

Tests use it to inspect every message a client sends (privacy) and to run many small protocols
quickly. The comparison runner can use it as an engine (``python -m simulations.compare SUITE
--engine inprocess``): the same handlers run on the same messages, so the rows equal the
simulation engine's (``tests/test_behaviour_preserved.py`` checks both against the same golden
rows), and without Ray's per-message overhead a run takes one core instead of two and less
wall time (``python -m simulations.benchmarks.bench_engines``). It is not a substitute for Flower's
engine: ``tests/test_simulation.py`` runs the real one as well.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid:
    def __init__(self, client_app, num_clients: int, run_config: dict | None = None,
                 on_reply: Callable[[Message, Message], None] | None = None, run_id: int = 1,
                 wire_seed: int | None = None):
        """``wire_seed``: as in Flower's simulation, node ids are random (unrelated to partition
        ids and different every run) and replies arrive in no fixed order; the seed draws both, so
        a test can check that results do not depend on them. None: node id 1000 + 7·pid, replies
        in send order."""
        self.client_app = client_app
        self.run_id = run_id
        self.wire_rng = None if wire_seed is None else np.random.default_rng(wire_seed)
        if self.wire_rng is None:
            node_ids = [1000 + 7 * pid for pid in range(num_clients)]  # still not the partition ids
        else:
            node_ids = [int(v) for v in self.wire_rng.choice(2**62, size=num_clients, replace=False)]
        self.contexts = {
            nid: Context(run_id=run_id, node_id=nid,
                         node_config={"partition-id": pid, "num-partitions": num_clients},
                         state=RecordDict(), run_config=dict(run_config or {}))
            for pid, nid in enumerate(node_ids)
        }
        self.on_reply = on_reply
        self.sent = 0
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent += 1
            node = msg.metadata.dst_node_id
            reply = self.client_app(msg, self.contexts[node])
            # as on the wire: the reply comes from the node the message went to
            reply.metadata.__dict__["_src_node_id"] = node
            if self.on_reply is not None:
                self.on_reply(msg, reply)
            replies.append(reply)
        if self.wire_rng is not None:
            replies = [replies[i] for i in self.wire_rng.permutation(len(replies))]
        return replies


def true_class_counts(grid: InProcessGrid, run_config: dict, num_classes: int):
    """The simulator's oracle for a simulator-only client strategy (fedal/selection/oracle.py):
    a function of client ids giving each client's true class counts over its unlabeled and its
    labeled pool, (M, C) each, read from the clients' own data and pools in this process. It goes
    around the protocol on purpose; no message carries these counts."""
    from fedal.client_app import worker

    def oracle(pids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        counts = {}
        for ctx in grid.contexts.values():
            w = worker(ctx, {**ctx.run_config, **run_config})
            pools, y = w.pools(), w.data.y
            counts[w.data.client_id] = (np.bincount(y[pools.unlabeled], minlength=num_classes),
                                        np.bincount(y[np.asarray(pools.labeled, dtype=np.int64)], minlength=num_classes))
        return (np.stack([counts[p][0] for p in pids]).astype(np.float64),
                np.stack([counts[p][1] for p in pids]).astype(np.float64))

    return oracle


def run_inprocess(run_config: dict, num_clients: int, on_reply=None, log=lambda s: None,
                  wire_seed: int | None = None, record: bool = False, grid=None, grid_class=None):
    """Run the full AL protocol in-process; returns (rows, grid). ``record``: also write the run
    directory (config.json, rounds.jsonl, q.npz, checkpoint.npz, summary.json) as the ServerApp
    does, with ``"engine": "inprocess"`` in config.json. ``grid``: run on this grid (its clients
    keep their pools from an earlier run, as SuperNodes outlive a crashed server);
    ``grid_class``: an ``InProcessGrid`` subclass to build instead (fault injection)."""
    from fedal.client_app import build_client_app
    from fedal import numerics
    from fedal.config import Config
    from strategies.active_learning import FederatedActiveLearning

    cfg = Config.from_run_config(run_config)
    numerics.apply(cfg.numerics, cfg.device)  # before any torch computation in this process
    if grid is None:
        grid = (grid_class or InProcessGrid)(build_client_app(run_config), num_clients, on_reply=on_reply,
                                             wire_seed=wire_seed)
    loop = FederatedActiveLearning.for_run(cfg, grid, log=log)
    if loop.strategy.simulator_only:
        loop.oracle = true_class_counts(grid, run_config, loop.num_classes)
    grid.loop = loop  # callers read what the loop kept after the run (e.g. its summary)
    recorder = None
    if record:
        from fedal.results import RunRecorder
        from fedal.results import run_directory, run_metadata

        recorder = RunRecorder(run_directory(cfg), {**run_metadata(cfg), "engine": "inprocess"},
                               resume=cfg.resume)
    return loop.run(recorder), grid
