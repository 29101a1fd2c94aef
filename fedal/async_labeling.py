"""The client side of asynchronous labeling (docs/method.md, "Asynchronous labeling"; SPEC §6).

A site (one client) keeps a *query pool* in its pool store (``fedal.store.PoolStore``): points
chosen for labeling, each tagged with the version of the global model that chose it, the
uncertainty measure of the worker that chose it and the model's guess and confidence. Simulated
annotators (``fedal.annotate.SimulatedAnnotators``) take queries from it and pay labels through
the store, so a query is paid at most once and nothing is paid beyond the site's budget; what is
open when the budget is spent is withdrawn by the store, unpaid. Paid labels move into the
client's ``Pools``, where local training reads them: training uses whatever is labeled when a
``train`` message arrives.

Time is simulated: the server sends its clock with every ``query.labeling`` message and the
site's annotators label up to that time first (``AsyncSite.advance``); whenever fewer than
``query-pool-low`` queries are open and budget is left, the site's workers refill the pool with
``query-pool-refill`` new queries chosen with the latest global model the site holds, worker k
by the k-th measure of ``async-workers`` (a refill takes no simulated time: scoring a site's
pool is milliseconds next to a label).

The sites live in this process (``_SITES``, by the server's run token and the client id): the
in-process engine and Flower's simulation keep a client's process alive across messages.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fedal import uncertainty
from fedal.annotate.annotators import Latency, SimulatedAnnotators, SimulatedClock
from fedal.store import PoolStore

MEASURES = {"entropy": uncertainty.entropy, "least-confidence": uncertainty.least_confidence,
            "margin": uncertainty.margin}
STRATEGY_TAGS = ("random", "entropy", "least-confidence", "margin")  # order of "paid-by-strategy"

_SITES: dict[tuple[str, str], "AsyncSite"] = {}
KEEP_SITES = False  # tests: keep a site (and its store) after the run's last message, to inspect it


class AsyncSite:
    """One client's query pool, its workers and its simulated annotators on a simulated clock."""

    def __init__(self, worker, run_token: str):
        cfg, d = worker.cfg, worker.data
        self.worker, self.cfg = worker, cfg
        self.dir = Path(tempfile.mkdtemp(prefix="fedal-async-"))
        self.clock = SimulatedClock(0.0)
        self.store = PoolStore(self.dir / "pool.sqlite", f"{cfg.config_hash()}-{run_token}", d.client_id,
                               len(d.x), "simulated", clock=self.clock, durable=False)
        self.latency = Latency.parse(cfg.annotator_latency)
        self.annotators: SimulatedAnnotators | None = None
        self.granted = 0
        self.state_dict = None
        self.version = 0
        self._probs = None
        self.refills = 0
        self.first_grant: float | None = None
        self.last_label = 0.0
        self.duty = (0.0, 0.0)  # (busy, idle) annotator seconds up to the site's last paid label
        # idle annotator seconds while labels were still owed (the pool ran dry) and while the
        # site's budget was spent (waiting for its next grant); and both up to the last label
        self.idle_split = [0.0, 0.0]
        self.duty_split = (0.0, 0.0)

    # ------------------------------------------------------------------ model and workers
    def set_model(self, state_dict, version: int) -> None:
        if version != self.version or self.state_dict is None:
            self.state_dict, self.version, self._probs = state_dict, int(version), None

    def _probs_of_model(self) -> np.ndarray:
        if self._probs is None:
            from fedal.training import predict

            self._probs, _ = predict(self.worker.model(self.state_dict), self.worker.data.x)
        return self._probs

    def refill(self) -> int:
        """Add up to ``query-pool-refill`` queries: random ones before the site holds a model,
        else split among the workers, each taking the most uncertain candidates by its measure
        (workers take turns going first, refill by refill). Returns how many were added."""
        cand = self.store.candidates()
        if not len(cand):
            return 0
        n = min(self.cfg.query_pool_refill, len(cand))
        self.refills += 1
        if self.state_dict is None:
            rng = np.random.default_rng(self.worker._seed(99, self.refills))
            return len(self.store.add_queries(rng.choice(cand, n, replace=False), 0, "random"))
        probs = self._probs_of_model()
        measures = list(self.cfg.worker_measures)
        k = self.refills % len(measures)
        measures = measures[k:] + measures[:k]
        share = [n // len(measures) + (i < n % len(measures)) for i in range(len(measures))]
        free = np.ones(len(cand), dtype=bool)
        added = 0
        for measure, m in zip(measures, share):
            if m == 0:
                continue
            score = MEASURES[measure](probs[cand])
            score = np.where(free, score, -np.inf)
            top = np.argsort(-score, kind="stable")[:m]
            free[top] = False
            p = probs[cand[top]]
            added += len(self.store.add_queries(cand[top], self.version, measure, guesses=p.argmax(1),
                                                confidences=np.clip(p.max(1), 0.0, 1.0)))
        return added

    # ------------------------------------------------------------------ budget and time
    def grant(self, n: int, now: float) -> int:
        """Raise the site's budget by ``n`` labels (at most what it has left to label); fill the
        pool at once and put the annotators to work. Returns the labels granted."""
        n = max(0, min(int(n), self.store.n_points - self.granted))
        if n == 0:
            return 0
        self.clock.sleep_until(now)
        self.granted += n
        self.store.set_budget(self.granted)
        if self.first_grant is None:
            self.first_grant = now
        if self.store.progress().open < self.cfg.query_pool_low:
            self.refill()
        if self.annotators is None:
            cfg = self.cfg
            self.annotators = SimulatedAnnotators(
                self.store, self.worker.data.y, n_annotators=cfg.annotators_per_site, latency=self.latency,
                clock=self.clock, flip_prob=cfg.label_noise, num_classes=self.worker.data.num_classes,
                seed=self.worker._seed(17), name=f"site{self.worker.data.client_id}")
        return n

    def advance(self, now: float) -> None:
        """Let the annotators label until ``now``, refilling the pool whenever it runs low."""
        if self.annotators is None:
            self.clock.sleep_until(now)
            return
        step = max(self.latency.mean / 4, 0.25)
        t = self.clock.now()
        labeled = self.store.progress().labeled
        idle = lambda: sum(s.idle_s for s in self.annotators.stats)  # noqa: E731
        while t < now:
            p = self.store.progress()
            before = idle()
            if p.spent and all(w.query is None for w in self.annotators.workers):
                self.annotators.run_until(now)  # nothing left to label until the next grant
                self.idle_split[1] += idle() - before
                break
            t = min(now, t + step)
            self.annotators.run_until(t)
            self.idle_split[1 if p.spent else 0] += idle() - before
            p = self.store.progress()
            if p.labeled > labeled:
                labeled = p.labeled
                self.last_label = t
                st = self.annotators.stats
                self.duty = (sum(s.busy_s for s in st), sum(s.idle_s for s in st))
                self.duty_split = tuple(self.idle_split)
            if not p.spent and p.open < self.cfg.query_pool_low:
                self.refill()

    def move_labels(self, al_round: int) -> np.ndarray:
        """Paid labels not yet in the client's pools go there (training reads them); returns
        their count per class."""
        pools = self.worker.pools()
        idx, lab = self.store.labeled_arrays()
        new = ~np.isin(idx, np.asarray(pools.labeled, dtype=np.int64))
        if new.any():
            pools.add(idx[new], lab[new], al_round)
            self.worker.store.save(pools)
        return np.bincount(lab[new], minlength=self.worker.data.num_classes)

    # ------------------------------------------------------------------ replies
    def metrics(self) -> dict:
        p = self.store.progress()
        pools = self.worker.pools()
        done = (p.spent or not len(self.store.candidates())) and p.open == 0 or self.granted == 0
        # n-grantable: points not yet covered by a grant, what a new grant may still ask for (the
        # server selects on it: a point granted but not yet labeled cannot be granted again)
        return {"n-labeled": pools.n_labeled, "n-unlabeled": pools.n_unlabeled,
                "n-grantable": self.store.n_points - max(self.granted, pools.n_labeled), "granted": self.granted,
                "paid": p.labeled, "open": p.open, "withdrawn": p.withdrawn, "done": int(bool(done))}

    def summary(self) -> dict:
        """Annotator statistics for the run's summary (called once, at the end)."""
        s = self.annotators.summary() if self.annotators is not None else {}
        st = self.annotators.stats if self.annotators is not None else []
        waits = [x for a in st for x in a.waits]
        by = {t: 0 for t in STRATEGY_TAGS}
        for q in self.store.queries("labeled"):
            by[q.strategy] = by.get(q.strategy, 0) + 1
        return {"busy-s": float(sum(a.busy_s for a in st)), "idle-s": float(sum(a.idle_s for a in st)),
                "duty-busy-s": float(self.duty[0]), "duty-idle-s": float(self.duty[1]),
                "duty-idle-owed-s": float(self.duty_split[0]), "duty-idle-spent-s": float(self.duty_split[1]),
                "waits-n": len(waits), "waits-sum-s": float(sum(waits)),
                "waits-max-s": float(max(waits)) if waits else 0.0,
                "wasted": int(s.get("wasted", 0)), "flipped": int(s.get("flipped", 0)),
                "first-grant-s": float(self.first_grant if self.first_grant is not None else math.nan),
                "last-label-s": float(self.last_label), "refills": self.refills,
                "paid-by-strategy": [int(by[t]) for t in STRATEGY_TAGS]}

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def site_for(run_token: str, worker) -> AsyncSite:
    key = (run_token, worker.data.client_id)
    site = _SITES.get(key)
    if site is None:
        site = _SITES[key] = AsyncSite(worker, run_token)
    site.worker = worker  # a fresh worker per message; its pool store is the same
    return site


def handle(worker, conf, state_dict) -> dict:
    """One ``query.labeling`` message: take the model (when sent), label up to the server's clock,
    grant budget, move the paid labels into the pools; on ``finish`` withdraw what is open and
    report the annotator statistics."""
    token = str(conf["run"])
    site = site_for(token, worker)
    if state_dict is not None:
        site.set_model(state_dict, int(conf["model-version"]))
    now, al_round = float(conf["now"]), int(conf["al-round"])
    site.advance(now)
    granted = site.grant(int(conf.get("grant", 0)), now) if int(conf.get("grant", 0)) > 0 else 0
    per_class = site.move_labels(al_round)
    out = {"partition-id": worker.data.partition_id, **site.metrics(), "granted-now": granted}
    if worker.cfg.report_label_histogram:  # an aggregate count per class (README: privacy)
        out["acquired-per-class"] = per_class.astype(int).tolist()
    if bool(conf.get("finish", False)):
        out["withdrawn-at-end"] = site.store.withdraw_open(reason="run-end")
        out.update(site.summary())
        out["withdrawn"] = site.store.progress().withdrawn
        if not KEEP_SITES:
            site.close()
            _SITES.pop((token, worker.data.client_id), None)
    return out
