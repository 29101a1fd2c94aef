"""Labeling policies: how the labels of the clients an AL round chose come in. The AL loop
(``strategies.active_learning``) owns the round and calls a policy's hooks; the policy owns
its state as fields, so a run's whole labeling state is one object.

- ``SyncAcquisition`` (``labeling = "sync"``, the paper's loop): the chosen clients pick their
  points and label them before the next training; a client skipped after its retries passes its
  share on to the next clients of the strategy's order (the top-up rule of docs/method.md,
  "Protocol").
- ``AsyncLabeling`` (``labeling = "async"``, ``strategies.async_policy``): chosen clients are
  granted budget and label while the server trains on, on the run's clock.

A hook's default is what the synchronous loop does; ``LabelingPolicy`` lists them in the order
the loop calls them.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np

from fedal.checkpoint import CheckpointError
from fedal.protocol import METRICS, AcquireRequest
from strategies.federation import ALState, ClientFailure, ClientInfo


class LabelingPolicy:
    """The hooks of the AL loop. ``loop``: the ``FederatedActiveLearning`` that calls them."""

    records_q = True  # the client graph's q matrices go to q.npz
    checkpoints = True  # the loop saves a checkpoint after every AL round (with ``checkpoint_extra``)
    unlabeled_key = "n-unlabeled"  # the reply's count of the points selection may still choose

    def load(self, loop, ck_path):
        """``resume = true``, before any client is asked: the checkpoint to continue from."""
        return loop.load_checkpoint(ck_path)

    def start(self, loop, state: ALState, ck) -> None:
        """The federation is known: check it against the config or the checkpoint ``ck``."""

    def round_zero(self, loop, state: ALState, plan: list[tuple[str, int]], order: list[str]) -> None:
        """Round 0's random labels (``plan``; ``order``: the random order, for top-ups)."""

    def resume(self, loop, state: ALState, ck, recorder) -> None:
        """After the loop restored its state from ``ck``."""

    def runs_round(self, r: int, al_rounds: int) -> bool:
        """Whether AL round ``r`` is trained (the synchronous loop ends after ``al-rounds``)."""
        return r <= al_rounds

    def begin_round(self, loop, r: int, times: dict) -> None:
        """Before AL round ``r``'s training; ``times``: its row's seconds per step."""

    def before_fl_round(self, loop, state: ALState, al_round: int, arrays) -> None:
        """Before each FL round of AL round ``al_round``, with the current global model."""

    def pending(self, cid: str) -> int:
        """Labels granted to client ``cid`` and not paid yet (its probe leaves that many out)."""
        return 0

    def cap(self, plan: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The client strategy's plan, cut to what may still be spent."""
        return plan

    def acquire(self, loop, state: ALState, plan: list[tuple[str, int]], arrays, al_round: int,
                order: Callable[[], list[str]]) -> list[str]:
        """The chosen clients' labels for AL round ``al_round``; returns the clients that took
        part, in plan order."""
        raise NotImplementedError

    def acquired_fields(self) -> dict:
        """This round's acquisition in its row (``acquired`` and what goes with it)."""
        raise NotImplementedError

    def round_fields(self, loop, r: int, selecting: bool) -> dict:
        """The policy's own keys at the end of round ``r``'s row."""
        return {}

    def checkpoint_extra(self) -> dict | None:
        return None

    def round_line(self, r: int, row: dict, times: dict) -> str:
        raise NotImplementedError

    def tail_done(self) -> bool:
        """After a round without selection: whether the run is over."""
        return True

    def may_stop(self, recorder) -> bool:
        """Whether ``stop-after-round`` may stop the run here (it resumes from the checkpoint)."""
        return True

    def end_tail(self, loop, r: int, row: dict, rows: list[dict]) -> bool:
        """After round ``r`` (not stopped otherwise): whether to end the run now."""
        return False

    def finish(self, loop, state: ALState, r: int) -> dict:
        """The run's end; returns the summary's first keys."""
        return {}

    def summary_tail(self) -> dict:
        """The summary's last keys (after final accuracy, labels and wall time)."""
        return {}

    def report(self, loop, summary: dict, rows: list[dict], wall: float) -> None:
        """The last log lines."""

    def take_counts(self, loop, state: ALState, got: dict[str, Mapping]) -> np.ndarray:
        """Each replying client's |L| and |U| (``unlabeled_key``: what selection counts as
        unlabeled) from its reply's metrics (``got``, by client id); returns the summed
        ``acquired-per-class`` of the replies."""
        per_class = np.zeros(loop.num_classes, dtype=np.int64)
        for cid, m in got.items():
            c = state.clients[cid]
            c.n_labeled, c.n_unlabeled = int(m["n-labeled"]), int(m[self.unlabeled_key])
            if "acquired-per-class" in m:
                per_class += np.asarray(m["acquired-per-class"], dtype=np.int64)
        return per_class


class SyncAcquisition(LabelingPolicy):
    """``labeling = "sync"``: each chosen client picks and labels its points in one
    ``query.acquire`` before the next training (docs/method.md, "Protocol")."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.acquired = np.zeros(0, dtype=np.int64)  # this round's acquired labels per class
        self.t_round0 = 0.0  # round 0's acquisition seconds (its row's acquire_initial)

    def start(self, loop, state: ALState, ck) -> None:
        cfg = self.cfg
        if ck is not None:
            self._check_resumed(loop, state, ck)
        else:
            cfg.check_against_clients({p: (c.n_labeled, c.n_unlabeled) for p, c in state.clients.items()})
        loop.log(f"fedal: {len(state.clients)} clients, {sum(c.n_unlabeled for c in state.clients.values())} "
                 f"unlabeled points; client-strategy={cfg.client_strategy} point-strategy="
                 f"{cfg.point_strategy} seed={cfg.seed}")

    def round_zero(self, loop, state: ALState, plan: list[tuple[str, int]], order: list[str]) -> None:
        t = time.perf_counter()
        loop.labeled_per_class, _ = self._acquire(loop, state, plan, None, "random", 0, self.cfg.init_points,
                                                  lambda: order)
        self.t_round0 = time.perf_counter() - t

    def resume(self, loop, state: ALState, ck, recorder) -> None:
        loop.log(f"fedal: resuming {recorder.dir} after AL round {ck.al_round}")

    def begin_round(self, loop, r: int, times: dict) -> None:
        self.acquired = np.zeros(loop.num_classes, dtype=np.int64)
        if r == 0:
            times["acquire_initial"] = self.t_round0

    def acquire(self, loop, state, plan, arrays, al_round, order) -> list[str]:
        self.acquired, chosen = self._acquire(loop, state, plan, arrays, self.cfg.point_strategy, al_round,
                                              self.cfg.points_per_client, order)
        loop.labeled_per_class = loop.labeled_per_class + self.acquired
        return chosen

    def acquired_fields(self) -> dict:
        return {"acquired": int(self.acquired.sum()), "acquired_per_class": self.acquired.tolist()}

    def round_line(self, r: int, row: dict, times: dict) -> str:
        return (f"[AL round {r:2d}/{self.cfg.al_rounds}] labels {row['labels']:6d}  acc {row['accuracy']:.4f}  "
                f"loss {row['loss']:.3f}  train {times['train']:.1f}s probe {times['probe']:.1f}s "
                f"select {times['select']:.2f}s acquire {times['acquire']:.1f}s"
                + (f"  → clients {row['chosen_clients']}" if row["chosen_clients"] else ""))

    def report(self, loop, summary: dict, rows: list[dict], wall: float) -> None:
        loop.log("fedal: accuracy per label count: " +
                 ", ".join(f"{row['labels']}: {row['accuracy']:.4f}" for row in rows))
        loop.log(f"fedal: done in {wall:.1f}s")

    # ------------------------------------------------------------------ acquisition with top-up
    def _acquire(self, loop, state: ALState, plan: list[tuple[str, int]], arrays, strategy: str, al_round: int,
                 per_client: int, order: Callable[[], list[str]] | None = None) -> tuple[np.ndarray, list[str]]:
        """Send each chosen client its share; returns this round's acquired counts per class and
        the clients that acquired, in plan order.

        A client skipped after its retries passes its share on: the next clients of the
        strategy's ``order`` not asked yet this round take up to ``per_client`` each (the top-up
        rule of docs/method.md, "Protocol"), so the round's budget is still spent."""
        per_class = np.zeros(loop.num_classes, dtype=np.int64)
        asked = {cid for cid, _ in plan}
        done: list[str] = []
        todo = list(plan)
        while todo:
            jobs = [(cid, AcquireRequest(n, al_round, strategy)) for cid, n in todo]
            got = loop.exchange(state, jobs, arrays, require_any=False)
            per_class += self.take_counts(loop, state, {c: r.content[METRICS] for c, r in got.items()})
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
                loop.log(f"fedal: AL round {al_round}: top-up of {sum(n for _, n in todo)} labels "
                         f"on client(s) {', '.join(c for c, _ in todo)}")
            elif missing:
                loop.log(f"fedal: AL round {al_round}: {missing} labels of the budget unspent: no "
                         "eligible client left to take them")
        if plan and not done:
            raise ClientFailure(f"every client asked failed on 'query.acquire' in AL round {al_round}")
        return per_class, done

    # ------------------------------------------------------------------ resume
    def _check_resumed(self, loop, state: ALState, ck) -> None:
        """Checks the clients' label counts against the checkpoint's and takes its counts."""
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
                loop.log(f"fedal: client {cid} holds {c.n_labeled} labels, the checkpoint {n_l}: labels "
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
            loop.log(f"fedal: client(s) {', '.join(gone)} of the checkpoint are not connected; they are "
                     "skipped until they return")

