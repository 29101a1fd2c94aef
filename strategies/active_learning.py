"""The federated active-learning loop of docs/method.md, "Protocol", driven by the ServerApp.

One AL round: train (FedAvg over labeled clients) → evaluate (central test set) → probe (client
statistics) → choose (client strategy, pure) → acquire (chosen clients pick and label points) →
record. The Flower simulation engine is started once per run; all AL rounds happen inside one
ServerApp ``main`` (restarting the engine per round is a known anti-pattern).
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
from fedal.protocol import AcquireRequest, ProbeReply, ProbeRequest, TrainRequest
from fedal.results import CHECKPOINT_FILE
from fedal.selection import ClientStats, allocate_budget, order_clients, plan_round
from fedal.training import evaluate
from strategies.federation import ALState, ClientFailure, ClientInfo, Federation, natural_key


class FederatedActiveLearning(Federation):
    def __init__(self, cfg: Config, grid: Grid, model_fn: Callable[[], torch.nn.Module],
                 test_set: tuple[np.ndarray, np.ndarray], num_classes: int,
                 log: Callable[[str], None] = print, timeout: float | None = None):
        super().__init__(cfg, grid, log, timeout)
        self.model_fn = model_fn
        self.x_test, self.y_test = test_set
        self.num_classes = num_classes
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        # async labeling: labels granted to a client and not paid yet, by client id; its probe
        # leaves that many of its most uncertain points out (fedal.client.ClientWorker.probe)
        self.pending_labels: dict[str, int] = {}
        from fedal.continual import training_mode

        self.strategy = selection.get(cfg.client_strategy)
        self.mode = training_mode(cfg.training_mode)
        self.diffusion = self.strategy.params(cfg)

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
              probe_round: int | None = None, before_round: Callable | None = None,
              ) -> tuple[ArrayRecord, list[dict[str, Message]], float]:
        """FedAvg weighted by |L_z| over clients with labels (Eq. 2-3), over the replies that
        came (a client that failed an FL round is left out of that round's average).

        ``probe_round`` (the AL round the next selection serves), when the client strategy needs
        client statistics: after each FL round t whose global model w(t) the strategy reads,
        every client with unlabeled data is probed with w(t) — for strategies with a client graph
        the last ⌈T/4⌉ rounds (the paper's last 25% of the training epochs), else the last only.
        Returns the final weights, the probe replies (by client id) per recorded round and the
        probe seconds.

        ``before_round(fl_round, arrays)`` (asynchronous labeling): called before each FL round;
        the clients with labels are counted after it (labels arrive while the server trains)."""
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
        labeled = [cid for cid, c in state.clients.items() if c.n_labeled > 0]
        replies, probe_time = [], 0.0
        for fl_round in range(1, sched.fl_rounds + 1):
            if before_round is not None:
                before_round(fl_round, arrays)
                labeled = [cid for cid, c in state.clients.items() if c.n_labeled > 0]
            if labeled or before_round is None:  # async: nothing labeled yet, nothing to train on
                got = self.send(state, TrainRequest(al_round, fl_round, sched.local_epochs), labeled,
                                arrays, fl_round=fl_round)
                arrays = aggregate_arrayrecords(self._ordered(got), "num-examples")
            if fl_round in probed:
                t = time.perf_counter()
                live = [cid for cid, c in state.clients.items() if c.n_unlabeled > 0]
                jobs = [(cid, ProbeRequest(probe_round, fl_round, need, self.strategy.needs_predicted_mix,
                                           sketch_seed, self.pending_labels.get(cid, 0))) for cid in live]
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
        if not probes:  # random selection needs only |U|, tracked from acquire replies
            return ClientStats(entropy=np.zeros(len(pids)), n_unlabeled=n_u)
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
        return ClientStats(entropy=g, n_unlabeled=n_u, embeddings=emb,
                           prev_entropy=None if np.all(np.isnan(prev)) else prev,
                           predicted_mix=mix, labeled_per_class=state.labeled_per_class)

    def train_and_evaluate(self, state: ALState, start: ArrayRecord, al_round: int, probe_round: int | None,
                           times: dict, before_round: Callable | None = None):
        """One AL round's training (with its probes) and the evaluation of its model; fills the
        ``train``, ``probe`` and ``evaluate`` seconds of ``times``. Returns (weights, probe
        replies, accuracy, loss)."""
        t = time.perf_counter()
        arrays, probes, times["probe"] = self.train(state, start, al_round, probe_round, before_round)
        times["train"] = time.perf_counter() - t - times["probe"]
        t = time.perf_counter()
        acc, loss = self.evaluate(arrays)
        times["evaluate"] = time.perf_counter() - t
        return arrays, probes, acc, loss

    def take_counts(self, state: ALState, got: dict, unlabeled_key: str) -> np.ndarray:
        """Each replying client's |L| and |U| (``unlabeled_key``: what selection counts as
        unlabeled) from its reply; returns the summed ``acquired-per-class`` of the replies."""
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        for cid, r in got.items():
            m = r.content["metrics"]
            c = state.clients[cid]
            c.n_labeled, c.n_unlabeled = int(m["n-labeled"]), int(m[unlabeled_key])
            if "acquired-per-class" in m:
                per_class += np.asarray(m["acquired-per-class"], dtype=np.int64)
        return per_class

    def acquire(self, state: ALState, plan: list[tuple[str, int]], arrays: ArrayRecord | None,
                strategy: str, al_round: int, per_client: int,
                order: Callable[[], list[str]] | None = None) -> tuple[np.ndarray, list[str]]:
        """Send each chosen client its share; returns this round's acquired counts per class and
        the clients that acquired, in plan order.

        A client skipped after its retries passes its share on: the next clients of the
        strategy's ``order`` not asked yet this round take up to ``per_client`` each (the top-up
        rule of docs/method.md, "Protocol"), so the round's budget is still spent."""
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        asked = {cid for cid, _ in plan}
        done: list[str] = []
        todo = list(plan)
        while todo:
            jobs = [(cid, AcquireRequest(n, al_round, strategy)) for cid, n in todo]
            got = self.exchange(state, jobs, arrays, require_any=False)
            per_class += self.take_counts(state, got, "n-unlabeled")
            done += [cid for cid, _ in todo if cid in got]
            missing = sum(n for cid, n in todo if cid not in got)
            todo = []
            for cid in (order() if missing and order is not None else []):
                if missing <= 0:
                    break
                c = state.clients.get(cid)
                if cid in asked or c is None or c.node_id is None:
                    continue
                take = min(per_client, c.n_unlabeled, missing)
                if take > 0:
                    todo.append((cid, take))
                    asked.add(cid)
                    missing -= take
            if todo:
                self.log(f"fedal: AL round {al_round}: top-up of {sum(n for _, n in todo)} labels "
                         f"on client(s) {', '.join(c for c, _ in todo)}")
            elif missing:
                self.log(f"fedal: AL round {al_round}: {missing} labels of the budget unspent: no "
                         "eligible client left to take them")
        if plan and not done:
            raise ClientFailure(f"every client asked failed on 'query.acquire' in AL round {al_round}")
        return per_class, done

    # ------------------------------------------------------------------ resume
    def _resume(self, state: ALState, ck) -> None:
        """Checks the clients' label counts against the checkpoint's and restores the AL state."""
        gone, lost, behind = [], [], []
        for cid, (n_l, n_u) in ck.clients.items():
            c = state.clients.get(cid)
            if c is None:
                gone.append(cid)
                state.add(ClientInfo(None, cid, n_l, n_u))
                continue
            if c.n_labeled == 0 and n_l > 0:
                lost.append(cid)
            elif c.n_labeled < n_l:
                behind.append(f"{cid} ({c.n_labeled} < {n_l})")
            elif c.n_labeled > n_l:
                self.log(f"fedal: client {cid} holds {c.n_labeled} labels, the checkpoint {n_l}: labels "
                         "of the interrupted AL round; asking for that round again returns them only "
                         "if the client's store is idempotent per AL round")
            c.n_labeled, c.n_unlabeled = n_l, n_u
        if lost:
            raise CheckpointError(
                f"resume = true, but client(s) {', '.join(lost)} report no labels where the checkpoint "
                "counts some: their pools did not survive. Clients keep their pools across runs only "
                "in a durable store: in simulation set FEDAL_STATE_DIR to the same directory for the "
                "interrupted and the resumed run; in deployment keep each client's state directory. "
                "Or set resume = false to start afresh")
        if behind:
            raise CheckpointError(
                f"resume = true, but client(s) {', '.join(behind)} hold fewer labels than the checkpoint "
                "counts: their state is not the one this run checkpointed; set resume = false to start afresh")
        if gone:
            self.log(f"fedal: client(s) {', '.join(gone)} of the checkpoint are not connected; they are "
                     "skipped until they return")
        state.prev_entropy = dict(ck.prev_entropy)

    def _save_checkpoint(self, path, state: ALState, al_round: int, arrays: ArrayRecord,
                         labeled_per_class: np.ndarray, rows: list[dict], extra: dict | None = None) -> None:
        checkpoint.save(path, checkpoint.Checkpoint(
            al_round=al_round, weights={k: v.numpy() for k, v in arrays.items()},
            clients={cid: (c.n_labeled, c.n_unlabeled) for cid, c in state.clients.items()},
            prev_entropy=dict(state.prev_entropy), labeled_per_class=[int(v) for v in labeled_per_class],
            rng_state=self.rng.bit_generator.state, rows=rows, config_hash=self.cfg.config_hash(),
            seed=self.cfg.seed, extra=extra))

    # ------------------------------------------------------------------ the loop
    def run(self, recorder=None) -> list[dict]:
        cfg = self.cfg
        if cfg.labeling == "async":  # docs/method.md, "Asynchronous labeling"
            from strategies.async_loop import run_async

            return run_async(self, recorder)
        t_run = time.perf_counter()
        state = self.discover()
        ck = None
        ck_path = None if recorder is None else recorder.dir / CHECKPOINT_FILE
        if cfg.resume:
            if ck_path is None:
                raise CheckpointError("resume = true needs the run directory (a recorder) that holds the checkpoint")
            ck = checkpoint.load(ck_path, cfg.config_hash(), cfg.seed)
            self._resume(state, ck)
        else:
            cfg.check_against_clients({p: (c.n_labeled, c.n_unlabeled) for p, c in state.clients.items()})
        self.log(f"fedal: {len(state.clients)} clients, {sum(c.n_unlabeled for c in state.clients.values())} "
                 f"unlabeled points; client-strategy={cfg.client_strategy} point-strategy="
                 f"{cfg.point_strategy} seed={cfg.seed}")

        initial = ArrayRecord(self.model_fn().state_dict())  # f^0: the same weights each retrain
        t_acq0 = 0.0
        if ck is None:
            # Round 0 (docs/method.md, "Protocol"): init-clients random clients, init-points random labels each
            pids = list(state.clients)
            n_u = np.array([state.clients[p].n_unlabeled for p in pids])
            order_idx = self.rng.permutation(np.flatnonzero(n_u > 0))
            order0 = [pids[z] for z in order_idx]
            plan0 = [(pids[z], n) for z, n in allocate_budget(order_idx, n_u, cfg.init_points, cfg.init_clients)]
            t0 = time.perf_counter()
            labeled_per_class, _ = self.acquire(state, plan0, None, "random", 0, cfg.init_points,
                                                lambda: order0)
            t_acq0 = time.perf_counter() - t0
            rows: list[dict] = []
            arrays = initial
            first = 0
        else:
            self.rng.bit_generator.state = ck.rng_state
            arrays = ArrayRecord({k: Array(v) for k, v in ck.weights.items()})
            labeled_per_class = np.asarray(ck.labeled_per_class, dtype=np.int64)
            rows = [dict(r) for r in ck.rows]
            recorder.resume_from(rows)
            first = ck.al_round + 1
            self.log(f"fedal: resuming {recorder.dir} after AL round {ck.al_round}")

        for r in range(first, cfg.al_rounds + 1):
            self.failures = []
            if r > 0:
                self.refresh(state)
            pids = list(state.clients)
            times = {"train": 0.0, "evaluate": 0.0, "probe": 0.0, "select": 0.0, "acquire": 0.0}
            if r == 0:
                times["acquire_initial"] = t_acq0
            state.labeled_per_class = labeled_per_class
            arrays, probes, acc, loss = self.train_and_evaluate(
                state, arrays if self.mode.warm_start else initial, r, r + 1 if r < cfg.al_rounds else None, times)
            n_labels = sum(c.n_labeled for c in state.clients.values())
            chosen: list[str] = []
            acquired = np.zeros(self.num_classes, dtype=np.int64)
            diagnostics: dict = {}
            if r < cfg.al_rounds:
                stats = self.client_stats(state, probes)
                t = time.perf_counter()
                before = copy.deepcopy(self.rng.bit_generator.state)
                plan = plan_round(cfg.client_strategy, stats, self.rng, self.diffusion,
                                  cfg.points_per_client, cfg.clients_per_round, diagnostics)
                times["select"] = time.perf_counter() - t

                def order(stats=stats, before=before, pids=pids) -> list[str]:
                    # the strategy's whole order, drawn as the plan was (top-up after a failure)
                    rng = np.random.default_rng()
                    rng.bit_generator.state = before
                    return [pids[z] for z in order_clients(cfg.client_strategy, stats, rng, self.diffusion)]

                t = time.perf_counter()
                acquired, chosen = self.acquire(state, [(pids[z], n) for z, n in plan], arrays,
                                                cfg.point_strategy, r + 1, cfg.points_per_client, order)
                times["acquire"] = time.perf_counter() - t
                labeled_per_class = labeled_per_class + acquired
            row = {"round": r, "labels": n_labels, "accuracy": acc, "loss": loss,
                   "chosen_clients": [state.public_id(c) for c in chosen], "acquired": int(acquired.sum()),
                   "acquired_per_class": acquired.tolist(),
                   "labeled_per_class": labeled_per_class.tolist(),
                   "clients_with_labels": sum(c.n_labeled > 0 for c in state.clients.values()),
                   "time_s": {k: round(v, 4) for k, v in times.items()}}
            q = diagnostics.pop("q", None)
            q_clients = diagnostics.pop("q_clients", None)
            if diagnostics:  # client-graph scalars of the selection made after this round
                row["graph"] = {**diagnostics, "probes": len(probes)}
            if self.failures:  # only in a round where some client was skipped for some step
                row["failures"] = list(self.failures)
            rows.append(row)
            if recorder is not None:
                recorder.add_round(row)
                if q is not None:  # q among the graph's clients, by client id (q.npz)
                    recorder.add_arrays({f"q_r{r + 1}": q,
                                         f"clients_r{r + 1}": np.asarray([state.public_id(pids[z]) for z in q_clients])})
                self._save_checkpoint(ck_path, state, r, arrays, labeled_per_class, rows)
            self.log(f"[AL round {r:2d}/{cfg.al_rounds}] labels {n_labels:6d}  acc {acc:.4f}  "
                     f"loss {loss:.3f}  train {times['train']:.1f}s probe {times['probe']:.1f}s "
                     f"select {times['select']:.2f}s acquire {times['acquire']:.1f}s"
                     + (f"  → clients {row['chosen_clients']}" if chosen else ""))
            if r == cfg.stop_after_round and r < cfg.al_rounds:
                self.log(f"fedal: stopping after AL round {r} (stop-after-round); resume = true continues")
                return rows
        wall = time.perf_counter() - t_run
        if recorder is not None:
            recorder.finish({"final_accuracy": rows[-1]["accuracy"], "labels": rows[-1]["labels"],
                             "wall_time_s": round(wall, 2)})
        self.log("fedal: accuracy per label count: " +
                 ", ".join(f"{row['labels']}: {row['accuracy']:.4f}" for row in rows))
        self.log(f"fedal: done in {wall:.1f}s")
        return rows
