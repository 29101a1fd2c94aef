"""The federated active-learning loop of docs/method.md, "Protocol", driven by the ServerApp.

One loop owns the AL round, as Flower's ``Strategy.start`` owns an FL round: train (FedAvg over
labeled clients) → evaluate (central test set) → probe (client statistics) → choose (client
strategy, pure) → acquire → record (one row) → checkpoint. How the chosen clients' labels come
in is the run's *labeling policy* (``strategies.labeling``): synchronous acquisition with top-up,
or asynchronous labeling with its clock and grants (``strategies.async_policy``); the loop calls
its hooks and nothing else differs between the two. Round 0, resume, rows, stop-after-round and
the finish exist here once.

The Flower simulation engine is started once per run; all AL rounds happen inside one ServerApp
``main`` (restarting the engine per round is a known anti-pattern).
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedal import checkpoint, selection
from fedal.checkpoint import CheckpointError
from fedal.config import Config
from fedal.protocol import FEDAVG_WEIGHT, ProbeReply, ProbeRequest, TrainRequest
from fedal.results import CHECKPOINT_FILE
from fedal.selection import ClientStats, allocate_budget, order_clients, plan_round
from fedal.training import evaluate
from strategies.federation import ALState, ClientFailure, ClientInfo, Federation, natural_key
from strategies.async_policy import AsyncLabeling
from strategies.labeling import LabelingPolicy, SyncAcquisition

# the labeling policies, by run-config ``labeling`` (fedal.config.LABELING): docs/method.md,
# "Protocol" and "Asynchronous labeling"
POLICIES: dict[str, type[LabelingPolicy]] = {"sync": SyncAcquisition, "async": AsyncLabeling}
TIMES = ("train", "evaluate", "probe", "select", "acquire")  # a row's time_s, seconds per step


class FederatedActiveLearning(Federation):
    """The server's side of a run: ``run()`` is the loop; ``policy`` (a ``LabelingPolicy``, by
    default the one ``labeling`` names) is how labels come in. After a run ``summary`` holds what
    summary.json records."""

    def __init__(self, cfg: Config, grid: Grid, model_fn: Callable[[], torch.nn.Module],
                 test_set: tuple[np.ndarray, np.ndarray], num_classes: int,
                 log: Callable[[str], None] = print, timeout: float | None = None,
                 policy: LabelingPolicy | None = None):
        from fedal.continual import training_mode

        super().__init__(cfg, grid, log, timeout)
        self.model_fn = model_fn
        self.x_test, self.y_test = test_set
        self.num_classes = num_classes
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        self.strategy = selection.get(cfg.client_strategy)
        self.params = self.strategy.params(cfg)  # the client strategy's own parameters
        self.mode = training_mode(cfg.training_mode)
        self.policy = policy if policy is not None else POLICIES[cfg.labeling](cfg)
        # labels paid so far, per class (the labeled set's histogram; balanced diffusion reads it)
        self.labeled_per_class = np.zeros(num_classes, dtype=np.int64)
        self.summary: dict | None = None
        # the in-process simulator's view of the clients' true class counts, for a simulator-only
        # client strategy (fedal/selection/oracle.py): client ids -> ((M, C) over U, (M, C) over L).
        # simulations/inprocess.py sets it; nothing else can, so such a run is refused elsewhere.
        self.oracle: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None

    @classmethod
    def for_run(cls, cfg: Config, grid: Grid, log: Callable[[str], None] = print) -> "FederatedActiveLearning":
        """The loop of a run: the data set's test set (its frozen-backbone features with
        ``freeze-backbone``) for the server's evaluation, and the model every AL round starts
        from (built from the run's seed)."""
        from fedal.data import load_dataset, model_inputs
        from fedal.training import build_model

        ds = load_dataset(cfg.dataset, cfg.data_root)
        x_test = model_inputs(cfg, ds.x_test, "test")  # frozen backbone: the test set's features

        def model_fn():
            return build_model(cfg.dataset, tuple(x_test.shape[1:]), ds.num_classes, cfg.backbone,
                               cfg.backbone_weights, seed=cfg.seed, freeze_backbone=cfg.freeze_backbone)

        return cls(cfg, grid, model_fn, (x_test, ds.y_test), ds.num_classes, log=log)

    # ------------------------------------------------------------------ protocol steps
    def train(self, state: ALState, start: ArrayRecord, al_round: int,
              probe_round: int | None = None) -> tuple[ArrayRecord, list[dict[str, Message]], float]:
        """FedAvg weighted by |L_z| over clients with labels (Eq. 2-3), over the replies that
        came (a client that failed an FL round is left out of that round's average).

        ``probe_round`` (the AL round the next selection serves), when the client strategy needs
        client statistics: after each FL round t whose global model w(t) the strategy reads,
        every client with unlabeled data is probed with w(t) — for strategies with a client graph
        the last ⌈T/4⌉ rounds (the paper's last 25% of the training epochs), else the last only.
        Returns the final weights, the probe replies (by client id) per recorded round and the
        probe seconds.

        The policy's ``before_fl_round`` runs before each FL round (asynchronous labeling: labels
        arrive while the server trains), so the clients with labels are counted after it; a round
        without any trains nothing."""
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
        replies, probe_time = [], 0.0
        for fl_round in range(1, sched.fl_rounds + 1):
            self.policy.before_fl_round(self, state, al_round, arrays)
            labeled = [cid for cid, c in state.clients.items() if c.n_labeled > 0]
            if labeled:
                got = self.send(state, TrainRequest(al_round, fl_round, sched.local_epochs), labeled,
                                arrays, fl_round=fl_round)
                arrays = aggregate_arrayrecords(self._ordered(got), FEDAVG_WEIGHT)
            if fl_round in probed:
                t = time.perf_counter()
                live = [cid for cid, c in state.clients.items() if c.n_unlabeled > 0]
                jobs = [(cid, ProbeRequest(probe_round, fl_round, need, self.strategy.needs_predicted_mix,
                                           sketch_seed, self.policy.pending(cid))) for cid in live]
                replies.append(self.exchange(state, jobs, arrays, fl_round=fl_round))
                probe_time += time.perf_counter() - t
        return arrays, replies, probe_time

    @staticmethod
    def _ordered(replies: dict[str, Message]) -> list[RecordDict]:
        """Reply contents in client-id order (``natural_key``). FedAvg's float sums depend on the
        order, and neither the arrival order nor the node ids (random in every Flower simulation,
        new after a SuperNode restarts) are reproducible; the client ids are (in simulation, the
        partition ids), so runs under one seed are bit-reproducible."""
        return [replies[cid].content for cid in sorted(replies, key=natural_key)]

    def evaluate(self, arrays: ArrayRecord) -> tuple[float, float]:
        model = self.model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(model, self.x_test, self.y_test)

    def client_stats(self, state: ALState, probes: list[dict[str, Message]]) -> ClientStats:
        """ClientStats from the probe replies of the recorded FL rounds (the last gives g, as
        f^r; the pseudo-updates of all of them stack into m_t, t = 1..T').

        A client is eligible when it is connected and has unlabeled data; with probes, also only
        when it answered every probe of the round: a client not probed has no statistics and
        is left out of the graph and the choice (as a client with |U_z| = 0 is)."""
        pids = list(state.clients)
        n_u = np.array([state.clients[p].n_unlabeled if state.clients[p].node_id is not None else 0
                        for p in pids])
        n_l = np.array([state.clients[p].n_labeled for p in pids])
        if not probes:  # random selection needs only |U|, tracked from acquire replies
            return ClientStats(entropy=np.zeros(len(pids)), n_unlabeled=n_u, n_labeled=n_l)
        rounds = [{cid: ProbeReply.from_record(r.content) for cid, r in got.items()} for got in probes]
        answered = set.intersection(*(set(by_id) for by_id in rounds))
        if not answered:
            raise ClientFailure(f"no client answered every probe of the {len(rounds)} recorded FL rounds")
        n_u = np.where([p in answered for p in pids], n_u, 0)
        last = {p: c for p, c in rounds[-1].items() if p in answered}
        g = np.array([float(last[p].g) if p in last else 0.0 for p in pids])
        prev = np.array([state.prev_entropy.get(p, np.nan) for p in pids])
        state.prev_entropy.update({p: float(last[p].g) for p in last})
        emb = mix = None
        if self.strategy.needs_pseudo_updates:
            dim = next(iter(last.values())).m.shape[-1]
            emb = np.zeros((len(pids), len(rounds), dim))  # rows of unprobed (|U| = 0) clients stay 0
            for t, by_id in enumerate(rounds):
                for z, p in enumerate(pids):
                    if p in answered:
                        emb[z, t] = by_id[p].m.reshape(-1)
        if self.strategy.needs_predicted_mix:
            mix = np.zeros((len(pids), self.num_classes))
            for z, p in enumerate(pids):
                if p in last:
                    mix[z] = np.asarray(last[p].mix, dtype=np.float64)
            if self.cfg.predicted_mix == "bbse":  # argmax shares through the summed confusion counts
                from fedal.uncertainty import bbse_mix

                c = self.num_classes
                conf = sum(np.asarray(r.confusion, dtype=np.float64).reshape(c, c) for r in last.values())
                mix = bbse_mix(conf, mix)
        return ClientStats(entropy=g, n_unlabeled=n_u, embeddings=emb,
                           prev_entropy=None if np.all(np.isnan(prev)) else prev,
                           predicted_mix=mix, labeled_per_class=state.labeled_per_class, n_labeled=n_l)

    def with_truth(self, pids: list[str], stats: ClientStats) -> ClientStats:
        """``stats`` with the clients' true class counts added, for a simulator-only strategy."""
        if not self.strategy.simulator_only:
            return stats
        import dataclasses

        unlabeled, labeled = self.oracle(pids)
        return dataclasses.replace(stats, true_unlabeled=unlabeled, true_labeled=labeled)

    def choose(self, pids: list[str], stats: ClientStats, diagnostics: dict) -> tuple[list, Callable]:
        """The client strategy's plan for this round, as (client id, labels) pairs (``pids``: the
        client ids in the order of ``stats``), and its whole order (drawn again from the same
        random state: the top-up's order)."""
        before = copy.deepcopy(self.rng.bit_generator.state)
        plan = plan_round(self.cfg.client_strategy, stats, self.rng, self.params,
                          self.cfg.points_per_client, self.cfg.clients_per_round, diagnostics)

        def order() -> list[str]:
            rng = np.random.default_rng()
            rng.bit_generator.state = before
            return [pids[z] for z in order_clients(self.cfg.client_strategy, stats, rng, self.params)]

        return [(pids[z], n) for z, n in plan], order

    def round_zero_plan(self, state: ALState) -> tuple[list[tuple[str, int]], list[str]]:
        """Round 0 (docs/method.md, "Protocol"): ``init-clients`` random clients with unlabeled
        data, ``init-points`` random labels each; returns the plan and the random order (its
        top-up order)."""
        pids = list(state.clients)
        n_u = np.array([state.clients[p].n_unlabeled for p in pids])
        order_idx = self.rng.permutation(np.flatnonzero(n_u > 0))
        plan = allocate_budget(order_idx, n_u, self.cfg.init_points, self.cfg.init_clients)
        return [(pids[z], n) for z, n in plan], [pids[z] for z in order_idx]

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self, ck_path) -> checkpoint.Checkpoint:
        if ck_path is None:
            raise CheckpointError("resume = true needs the run directory (a recorder) that holds the checkpoint")
        return checkpoint.load(ck_path, self.cfg.config_hash(), self.cfg.seed)

    def save_checkpoint(self, path, state: ALState, al_round: int, arrays: ArrayRecord, rows: list[dict],
                        extra: dict | None = None) -> None:
        checkpoint.save(path, checkpoint.Checkpoint(
            al_round=al_round, weights={k: v.numpy() for k, v in arrays.items()},
            clients={cid: (c.n_labeled, c.n_unlabeled) for cid, c in state.clients.items()},
            prev_entropy=dict(state.prev_entropy), labeled_per_class=[int(v) for v in self.labeled_per_class],
            rng_state=self.rng.bit_generator.state, rows=rows, config_hash=self.cfg.config_hash(),
            seed=self.cfg.seed, extra=extra))

    def _restore(self, state: ALState, ck, recorder) -> tuple[ArrayRecord, list[dict], int]:
        """The server's state from checkpoint ``ck``: the random state, g of the last probes, the
        labeled set's histogram and the rows (rounds.jsonl is cut back to them); clients of the
        checkpoint not connected now are kept, not connected, until they return. Returns (weights,
        rows, the next AL round)."""
        self.rng.bit_generator.state = ck.rng_state
        state.prev_entropy = dict(ck.prev_entropy)
        for cid, (n_l, n_u) in ck.clients.items():
            if cid not in state.clients:
                state.add(ClientInfo(None, cid, n_l, n_u))
        self.labeled_per_class = np.asarray(ck.labeled_per_class, dtype=np.int64)
        rows = [dict(r) for r in ck.rows]
        recorder.resume_from(rows)
        return ArrayRecord({k: Array(v) for k, v in ck.weights.items()}), rows, ck.al_round + 1

    # ------------------------------------------------------------------ the loop
    def run(self, recorder=None) -> list[dict]:
        cfg, policy = self.cfg, self.policy
        if self.strategy.simulator_only and self.oracle is None:
            from fedal.errors import ConfigError

            raise ConfigError(
                f"client-strategy = {cfg.client_strategy!r} reads the clients' true class counts, which only the "
                "in-process simulator can give (python -m simulations.compare SUITE --engine inprocess); it is a "
                "yardstick, not a method for flwr run or a deployment. Choose another client-strategy: "
                + ", ".join(n for n in selection.available() if not selection.get(n).simulator_only))
        t_run = time.perf_counter()
        ck_path = None if recorder is None else recorder.dir / CHECKPOINT_FILE
        ck = policy.load(self, ck_path) if cfg.resume else None  # refused before any client is asked
        state = self.discover()
        policy.start(self, state, ck)
        if ck is None:
            arrays, rows, r = None, [], 0
            policy.round_zero(self, state, *self.round_zero_plan(state))
        else:
            arrays, rows, r = self._restore(state, ck, recorder)
            policy.resume(self, state, ck, recorder)
        initial = ArrayRecord(self.model_fn().state_dict())  # f^0: the same weights each retrain
        arrays = initial if arrays is None else arrays
        while policy.runs_round(r, cfg.al_rounds):
            selecting = r < cfg.al_rounds
            self.failures = []
            if r > 0:
                self.refresh(state)
            times = dict.fromkeys(TIMES, 0.0)
            policy.begin_round(self, r, times)
            state.labeled_per_class = self.labeled_per_class
            t = time.perf_counter()
            arrays, probes, times["probe"] = self.train(state, arrays if self.mode.warm_start else initial, r,
                                                        r + 1 if selecting else None)
            times["train"] = time.perf_counter() - t - times["probe"]
            t = time.perf_counter()
            acc, loss = self.evaluate(arrays)
            times["evaluate"] = time.perf_counter() - t
            n_labels = sum(c.n_labeled for c in state.clients.values())
            chosen, diagnostics, pids = [], {}, list(state.clients)
            if selecting:
                stats = self.with_truth(pids, self.client_stats(state, probes))
                t = time.perf_counter()
                plan, order = self.choose(pids, stats, diagnostics)
                plan = policy.cap(plan)
                times["select"] = time.perf_counter() - t
                t = time.perf_counter()
                chosen = policy.acquire(self, state, plan, arrays, r + 1, order)
                times["acquire"] = time.perf_counter() - t
            row = {"round": r, "labels": n_labels, "accuracy": acc, "loss": loss,
                   "chosen_clients": [state.public_id(c) for c in chosen], **policy.acquired_fields(),
                   "labeled_per_class": self.labeled_per_class.tolist(),
                   "clients_with_labels": sum(c.n_labeled > 0 for c in state.clients.values()),
                   "time_s": {k: round(v, 4) for k, v in times.items()}, **policy.round_fields(self, r, selecting)}
            q, q_clients = diagnostics.pop("q", None), diagnostics.pop("q_clients", None)
            if diagnostics:  # client-graph scalars of the selection made after this round
                row["graph"] = {**diagnostics, "probes": len(probes)}
            if self.failures:  # only in a round where some client was skipped for some step
                row["failures"] = list(self.failures)
            rows.append(row)
            if recorder is not None:
                recorder.add_round(row)
                if q is not None and policy.records_q:  # q among the graph's clients, by client id (q.npz)
                    recorder.add_arrays({f"q_r{r + 1}": q,
                                         f"clients_r{r + 1}": np.asarray([state.public_id(pids[z]) for z in q_clients])})
                if policy.checkpoints:
                    self.save_checkpoint(ck_path, state, r, arrays, rows, policy.checkpoint_extra())
            self.log(policy.round_line(r, row, times))
            if not selecting and policy.tail_done():
                break
            if selecting and r == cfg.stop_after_round and policy.may_stop(recorder):
                self.log(f"fedal: stopping after AL round {r} (stop-after-round); resume = true continues")
                return rows
            if policy.end_tail(self, r, row, rows):
                break
            r += 1
        head = policy.finish(self, state, r)
        wall = time.perf_counter() - t_run
        self.summary = {**head, "final_accuracy": rows[-1]["accuracy"], "labels": rows[-1]["labels"],
                        "wall_time_s": round(wall, 2), **policy.summary_tail()}
        if recorder is not None:
            recorder.finish(self.summary)
        policy.report(self, self.summary, rows, wall)
        return rows
