"""The federated active-learning loop of docs/method.md, "Protocol", driven by the ServerApp.

One AL round: train (FedAvg over labeled clients) → evaluate (central test set) → probe (client
statistics) → choose (client strategy, pure) → acquire (chosen clients pick and label points) →
record. The Flower simulation engine is started once per run; all AL rounds happen inside one
ServerApp ``main`` (restarting the engine per round is a known anti-pattern).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedal.config import Config
from fedal.training import evaluate
from strategies import client_selection
from strategies.client_selection import ClientStats, allocate_budget, plan_round


class ClientFailure(RuntimeError):
    """A client replied with an error; the run stops rather than silently biasing the protocol."""


@dataclass
class ClientInfo:
    node_id: int
    partition_id: int
    n_labeled: int
    n_unlabeled: int


@dataclass
class ALState:
    clients: dict[int, ClientInfo]  # by partition id
    prev_entropy: dict[int, float] = field(default_factory=dict)
    labeled_per_class: np.ndarray | None = None


class FederatedActiveLearning:
    def __init__(self, cfg: Config, grid: Grid, model_fn: Callable[[], torch.nn.Module],
                 test_set: tuple[np.ndarray, np.ndarray], num_classes: int,
                 log: Callable[[str], None] = print, timeout: float | None = None):
        self.cfg = cfg
        self.grid = grid
        self.model_fn = model_fn
        self.x_test, self.y_test = test_set
        self.num_classes = num_classes
        self.log = log
        self.timeout = timeout
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        from fedal.continual import training_mode

        self.strategy = client_selection.get(cfg.client_strategy)
        self.mode = training_mode(cfg.training_mode)
        self.diffusion = self.strategy.params(cfg)

    # ------------------------------------------------------------------ messaging helpers
    def _send(self, kind: str, targets: Iterable[ClientInfo], config: dict,
              arrays: ArrayRecord | None = None) -> list[Message]:
        return self._send_each(kind, [(c, config) for c in targets], arrays)

    def _send_each(self, kind: str, jobs: list[tuple[ClientInfo, dict]],
                   arrays: ArrayRecord | None = None) -> list[Message]:
        """One message per (client, config) in a single send_and_receive, so clients work in
        parallel; any client error stops the run with the client's reason."""
        msgs = []
        for c, config in jobs:
            content = RecordDict({"config": ConfigRecord(dict(config))})
            if arrays is not None:
                content["arrays"] = arrays
            msgs.append(Message(content=content, dst_node_id=c.node_id, message_type=kind))
        if not msgs:
            return []
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout))
        errors = [r for r in replies if r.has_error()]
        if errors:
            raise ClientFailure(f"{len(errors)} client(s) failed on {kind!r}: {errors[0].error.reason}")
        if len(replies) != len(msgs):
            raise ClientFailure(f"{kind!r}: {len(msgs) - len(replies)} of {len(msgs)} clients did not reply")
        return replies

    def discover(self) -> ALState:
        nodes = sorted(self.grid.get_node_ids())
        deadline = time.time() + 60
        while not nodes and time.time() < deadline:  # deployment: SuperNodes may still connect
            time.sleep(1)
            nodes = sorted(self.grid.get_node_ids())
        targets = [ClientInfo(n, -1, 0, 0) for n in nodes]
        clients = {}
        for r in self._send("query.info", targets, {}):
            m = r.content["metrics"]
            pid = int(m["partition-id"])
            clients[pid] = ClientInfo(r.metadata.src_node_id, pid, int(m["n-labeled"]), int(m["n-unlabeled"]))
        return ALState(dict(sorted(clients.items())))

    # ------------------------------------------------------------------ protocol steps
    def train(self, state: ALState, start: ArrayRecord, al_round: int,
              probe_round: int | None = None) -> tuple[ArrayRecord, list[list[Message]], float]:
        """FedAvg weighted by |L_z| over clients with labels (Eq. 2-3).

        ``probe_round`` (the AL round the next selection serves), when the client strategy needs
        client statistics: after each FL round t whose global model w(t) the strategy reads,
        every client with unlabeled data is probed with w(t) — for strategies with a client graph
        the last ⌈T/4⌉ rounds (the paper's last 25% of the training epochs), else the last only.
        Returns the final weights, the probe replies per recorded round and the probe seconds."""
        from fedal.continual import Schedule, resolve_schedule
        from fedal.training import recorded_rounds

        # continual modes train fewer FL rounds after the first AL round (fedal.continual.SCHEDULES)
        sched = resolve_schedule(self.cfg.training_mode, Schedule(self.cfg.fl_rounds, self.cfg.local_epochs),
                                 al_round=al_round)
        need = self.strategy.needs_pseudo_updates
        probed: list[int] = []
        if probe_round is not None and self.strategy.probes:
            probed = recorded_rounds(sched.fl_rounds) if need else [sched.fl_rounds]
            # one projection per AL round, the same on every client and recorded round
            sketch_seed = int(self.rng.integers(2**31))
        arrays = start
        labeled = [c for c in state.clients.values() if c.n_labeled > 0]
        replies, probe_time = [], 0.0
        for fl_round in range(1, sched.fl_rounds + 1):
            got = self._send("train", labeled, {"al-round": al_round, "server-round": fl_round,
                                                "local-epochs": sched.local_epochs}, arrays)
            arrays = aggregate_arrayrecords(self._ordered(got, state), "num-examples")
            if fl_round in probed:
                t = time.perf_counter()
                live = [c for c in state.clients.values() if c.n_unlabeled > 0]
                replies.append(self._send("query.probe", live, {
                    "al-round": probe_round, "fl-round": fl_round, "need-embeddings": need,
                    "need-mix": self.strategy.needs_predicted_mix,
                    "sketch-seed": sketch_seed}, arrays))
                probe_time += time.perf_counter() - t
        return arrays, replies, probe_time

    @staticmethod
    def _ordered(replies: list[Message], state: ALState) -> list[RecordDict]:
        """Reply contents in partition-id order. FedAvg's float sums depend on the order, and
        neither the arrival order nor the node ids (random in every Flower simulation) are
        reproducible; the partition ids are, so runs under one seed are bit-reproducible."""
        pid = {c.node_id: c.partition_id for c in state.clients.values()}
        return [r.content for r in sorted(replies, key=lambda r: pid[r.metadata.src_node_id])]

    def evaluate(self, arrays: ArrayRecord) -> tuple[float, float]:
        model = self.model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(model, self.x_test, self.y_test)

    def client_stats(self, state: ALState, probes: list[list[Message]]) -> ClientStats:
        """ClientStats from the probe replies of the recorded FL rounds (the last gives g, as
        f^r; the pseudo-updates of all of them stack into m_t, t = 1..T')."""
        pids = list(state.clients)
        n_u = np.array([state.clients[p].n_unlabeled for p in pids])
        if not probes:  # random selection needs only |U|, tracked from acquire replies
            return ClientStats(entropy=np.zeros(len(pids)), n_unlabeled=n_u)
        rounds = [{int(r.content["metrics"]["partition-id"]): r.content for r in got} for got in probes]
        last = rounds[-1]
        g = np.array([float(last[p]["metrics"]["g"]) if p in last else 0.0 for p in pids])
        prev = np.array([state.prev_entropy.get(p, np.nan) for p in pids])
        state.prev_entropy.update({p: float(last[p]["metrics"]["g"]) for p in last})
        emb = mix = None
        if self.strategy.needs_pseudo_updates:
            dim = next(iter(last.values()))["pseudo"]["m"].numpy().shape[-1]
            emb = np.zeros((len(pids), len(rounds), dim))  # rows of unprobed (|U| = 0) clients stay 0
            for t, by_pid in enumerate(rounds):
                for z, p in enumerate(pids):
                    if p in by_pid:
                        emb[z, t] = by_pid[p]["pseudo"]["m"].numpy().reshape(-1)
        if self.strategy.needs_predicted_mix:
            mix = np.zeros((len(pids), self.num_classes))
            for z, p in enumerate(pids):
                if p in last:
                    mix[z] = np.asarray(last[p]["metrics"]["mix"], dtype=np.float64)
        return ClientStats(entropy=g, n_unlabeled=n_u, embeddings=emb,
                           prev_entropy=None if np.all(np.isnan(prev)) else prev,
                           predicted_mix=mix, labeled_per_class=state.labeled_per_class)

    def acquire(self, state: ALState, plan: list[tuple[int, int]], arrays: ArrayRecord | None,
                strategy: str, al_round: int) -> np.ndarray:
        """Send each chosen client its share; returns this round's acquired counts per class."""
        pids = list(state.clients)
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        jobs = [(state.clients[pids[z]], {"n": n, "al-round": al_round, "point-strategy": strategy})
                for z, n in plan]
        replies = self._send_each("query.acquire", jobs, arrays)
        for r in replies:
            m = r.content["metrics"]
            c = state.clients[int(m["partition-id"])]
            c.n_labeled, c.n_unlabeled = int(m["n-labeled"]), int(m["n-unlabeled"])
            if "acquired-per-class" in m:
                per_class += np.asarray(m["acquired-per-class"], dtype=np.int64)
        return per_class

    # ------------------------------------------------------------------ the loop
    def run(self, recorder=None) -> list[dict]:
        cfg = self.cfg
        t_run = time.perf_counter()
        state = self.discover()
        cfg.check_against_clients({p: (c.n_labeled, c.n_unlabeled) for p, c in state.clients.items()})
        pids = list(state.clients)
        self.log(f"fedal: {len(pids)} clients, {sum(c.n_unlabeled for c in state.clients.values())} "
                 f"unlabeled points; client-strategy={cfg.client_strategy} point-strategy="
                 f"{cfg.point_strategy} seed={cfg.seed}")

        initial = ArrayRecord(self.model_fn().state_dict())  # f^0: the same weights each retrain
        # Round 0 (docs/method.md, "Protocol"): init-clients random clients, init-points random labels each
        n_u = np.array([state.clients[p].n_unlabeled for p in pids])
        order0 = self.rng.permutation(np.flatnonzero(n_u > 0))
        plan0 = allocate_budget(order0, n_u, cfg.init_points, cfg.init_clients)
        t0 = time.perf_counter()
        labeled_per_class = self.acquire(state, plan0, None, "random", 0)
        t_acq0 = time.perf_counter() - t0

        rows = []
        arrays = initial
        for r in range(cfg.al_rounds + 1):
            times = {"train": 0.0, "evaluate": 0.0, "probe": 0.0, "select": 0.0, "acquire": 0.0}
            if r == 0:
                times["acquire_initial"] = t_acq0
            t = time.perf_counter()
            start = arrays if self.mode.warm_start else initial
            state.labeled_per_class = labeled_per_class
            arrays, probes, times["probe"] = self.train(state, start, r, r + 1 if r < cfg.al_rounds else None)
            times["train"] = time.perf_counter() - t - times["probe"]
            t = time.perf_counter()
            acc, loss = self.evaluate(arrays)
            times["evaluate"] = time.perf_counter() - t
            n_labels = sum(c.n_labeled for c in state.clients.values())
            chosen: list[int] = []
            acquired = np.zeros(self.num_classes, dtype=np.int64)
            diagnostics: dict = {}
            if r < cfg.al_rounds:
                stats = self.client_stats(state, probes)
                t = time.perf_counter()
                plan = plan_round(cfg.client_strategy, stats, self.rng, self.diffusion,
                                  cfg.points_per_client, cfg.clients_per_round, diagnostics)
                times["select"] = time.perf_counter() - t
                t = time.perf_counter()
                acquired = self.acquire(state, plan, arrays, cfg.point_strategy, r + 1)
                times["acquire"] = time.perf_counter() - t
                chosen = [pids[z] for z, _ in plan]
                labeled_per_class = labeled_per_class + acquired
            row = {"round": r, "labels": n_labels, "accuracy": acc, "loss": loss,
                   "chosen_clients": chosen, "acquired": int(acquired.sum()),
                   "acquired_per_class": acquired.tolist(),
                   "labeled_per_class": labeled_per_class.tolist(),
                   "clients_with_labels": sum(c.n_labeled > 0 for c in state.clients.values()),
                   "time_s": {k: round(v, 4) for k, v in times.items()}}
            q = diagnostics.pop("q", None)
            q_clients = diagnostics.pop("q_clients", None)
            if diagnostics:  # client-graph scalars of the selection made after this round
                row["graph"] = {**diagnostics, "probes": len(probes)}
            rows.append(row)
            if recorder is not None:
                recorder.add_round(row)
                if q is not None:  # q among the graph's clients, by partition id (q.npz)
                    recorder.add_arrays({f"q_r{r + 1}": q,
                                         f"clients_r{r + 1}": np.asarray([pids[z] for z in q_clients])})
            self.log(f"[AL round {r:2d}/{cfg.al_rounds}] labels {n_labels:6d}  acc {acc:.4f}  "
                     f"loss {loss:.3f}  train {times['train']:.1f}s probe {times['probe']:.1f}s "
                     f"select {times['select']:.2f}s acquire {times['acquire']:.1f}s"
                     + (f"  → clients {chosen}" if chosen else ""))
        wall = time.perf_counter() - t_run
        if recorder is not None:
            recorder.finish({"final_accuracy": rows[-1]["accuracy"], "labels": rows[-1]["labels"],
                             "wall_time_s": round(wall, 2)})
        self.log("fedal: accuracy per label count: " +
                 ", ".join(f"{row['labels']}: {row['accuracy']:.4f}" for row in rows))
        self.log(f"fedal: done in {wall:.1f}s")
        return rows
