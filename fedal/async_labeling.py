"""The client side of asynchronous labeling (docs/method.md, "Asynchronous labeling"; SPEC §6;
docs/labeling.md for people).

A site (one client) keeps a *query pool* in a pool store (``fedal.store.PoolStore``): points
chosen for labeling, each tagged with a model version, the uncertainty measure of the worker that
chose it and the model's guess and confidence. Annotators take queries from it and pay labels
through the store, so a query is paid at most once and nothing is paid beyond the site's budget;
what is open when the budget is spent is withdrawn by the store, unpaid. Whenever fewer than
``query-pool-low`` queries are open and budget is left, the site's workers refill the pool with
``query-pool-refill`` new queries chosen with the latest global model the site holds (random
before a model exists), worker k by the k-th measure of ``async-workers``. ``QuerySite`` holds
this part, common to both kinds of annotators (``annotators`` in the run config):

- ``simulated`` (``SimulatedSite``): simulated annotators (``fedal.annotate.SimulatedAnnotators``)
  on a simulated clock, in a temporary store of their own. The server sends its clock with every
  ``query.labeling`` message and the annotators label up to that time first
  (``SimulatedSite.advance``, refilling as they go; a refill takes no simulated time: scoring a
  site's pool is milliseconds next to a label). Paid labels then move into the client's ``Pools``,
  where local training reads them. The sites live in this process (``_SITES``, by the server's
  run token and the client id): the in-process engine and Flower's simulation keep a client's
  process alive across messages. Queries carry the server's model version.
- ``people`` (``PeopleSite``): people label on the site's labeling page (``fedal-annotate``,
  fedal/annotate/app.py), which opens the client's *durable* store (``fedal.store.node_pool_store``,
  the file of ``fedal.store.site_store_path``). The query pool lives in that store, next to the
  labels training reads, so a label paid on the page is in the pools at once: nothing moves. A
  deployed SuperNode may start a fresh process for every message, so the site keeps nothing in
  memory between messages: the granted total is the store's budget (``PoolStore.grant``, once
  per run token and AL round, so a resent message grants nothing twice), the refill count and
  the class counts already reported are notes in the store, and the model comes with the
  message. Refills happen when a message arrives (every FL round); so that a person who empties
  the pool does not wait for the next one, each message with a model also leaves a *reserve* in
  the store, the queries the next few refills would add ranked by that model
  (``PeopleSite.write_reserve``), which the page opens when the pool runs low
  (``PoolStore.promote_reserve``: no model in the page's process). Queries
  carry the AL round of the message instead of the model version: the label a query pays takes
  its tag as its AL round, and local training (``ClientWorker.train``) trains on the labels of
  AL rounds up to the current one, so a tag from the server's model counter (which grows every
  FL round) would hide people's labels from training.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fedal import acquisition
from fedal.annotate.annotators import Latency, SimulatedAnnotators, SimulatedClock, mark_run
from fedal.store import PoolStore

# the tag of each query: "random" (before a model exists) or the worker's measure, a point
# strategy that ranks by a score of the model's probabilities; order of "paid-by-strategy"
STRATEGY_TAGS = ("random", *acquisition.uncertainty_measures())

_SITES: dict[tuple[str, str], "SimulatedSite"] = {}
KEEP_SITES = False  # tests: keep a site (and its store) after the run's last message, to inspect it
# people: the reserve a message leaves in the store holds this many refills' worth of queries
# (PeopleSite.write_reserve), fewer when fewer candidates are left. Why four: with the default
# query-pool-refill (30) that is 120 labels past the open ones, at a few seconds a label many
# minutes of work, enough to bridge an FL round of minutes; a longer one would be ranked by an ever
# staler model (it does not see the labels paid since), and the next message replaces it anyway.
RESERVE_REFILLS = 4


class PeopleModeError(RuntimeError):
    """A site cannot take part in a run with annotators = "people"; the message says why."""


class QuerySite:
    """One client's query pool in ``store`` and the workers that refill it; the budget grants
    and the counts of a ``query.labeling`` reply. Subclasses say where the pool lives, how the
    refills are counted and who labels."""

    def __init__(self, worker, store: PoolStore):
        self.worker, self.cfg, self.store = worker, worker.cfg, store
        self.state_dict = None
        self.version = 0  # the tag of the queries a refill adds
        self._probs = None

    # ------------------------------------------------------------------ model and workers
    def set_model(self, state_dict, version: int) -> None:
        if version != self.version or self.state_dict is None:
            self.state_dict, self.version, self._probs = state_dict, int(version), None

    def _probs_of_model(self) -> np.ndarray:
        if self._probs is None:
            from fedal.training import predict

            self._probs, _ = predict(self.worker.model(self.state_dict), self.worker.data.x)
        return self._probs

    def _next_refill(self) -> int:
        """The number of this refill (1, 2, ...): it seeds a random refill and picks the worker
        that goes first."""
        raise NotImplementedError

    def refill(self) -> int:
        """Add up to ``query-pool-refill`` queries: random ones before the site holds a model,
        else split among the workers, each taking the most uncertain candidates by its measure
        (workers take turns going first, refill by refill). Returns how many were added."""
        cand = self.store.candidates()
        if not len(cand):
            return 0
        n = min(self.cfg.query_pool_refill, len(cand))
        refills = self._next_refill()
        if self.state_dict is None:
            rng = np.random.default_rng(self.worker.seed(99, refills))
            return len(self.store.add_queries(rng.choice(cand, n, replace=False), self.version, "random"))
        probs = self._probs_of_model()
        free = np.ones(len(cand), dtype=bool)
        added = 0
        for measure, top in self._choose(probs, cand, free, refills, n, {}):
            p = probs[cand[top]]
            added += len(self.store.add_queries(cand[top], self.version, measure, guesses=p.argmax(1),
                                                confidences=np.clip(p.max(1), 0.0, 1.0)))
        return added

    def _choose(self, probs: np.ndarray, cand: np.ndarray, free: np.ndarray, refills: int, n: int,
                scores: dict) -> list[tuple[str, np.ndarray]]:
        """The ``n`` points of refill number ``refills``, split among the workers (worker
        ``refills mod k`` goes first), each taking the most uncertain of the ``free`` candidates
        by its measure: (measure, positions in ``cand``) per worker, in turn order. Marks them
        taken in ``free``; ``scores`` caches each measure's scores of ``cand``."""
        measures = list(self.cfg.worker_measures)
        k = refills % len(measures)
        measures = measures[k:] + measures[:k]
        share = [n // len(measures) + (i < n % len(measures)) for i in range(len(measures))]
        picks = []
        for measure, m in zip(measures, share):
            if m == 0:
                continue
            if measure not in scores:
                scores[measure] = acquisition.get(measure).score(probs[cand])
            score = np.where(free, scores[measure], -np.inf)
            top = np.argsort(-score, kind="stable")[:m]
            free[top] = False
            picks.append((measure, top))
        return picks

    def refill_if_low(self) -> int:
        """Refill when fewer than ``query-pool-low`` queries are open and budget is left."""
        p = self.store.progress()
        if p.budget is not None and not p.spent and p.open < self.cfg.query_pool_low:
            return self.refill()
        return 0

    # ------------------------------------------------------------------ budget
    @property
    def granted(self) -> int:
        """Labels granted to this site so far: its store's budget."""
        return self.store.budget or 0

    def grant(self, key: str, n: int) -> int:
        """Raise the site's budget by ``n`` labels (at most what it has left to label), once per
        ``key`` (a message without a grant records nothing under its key). Returns the labels
        granted; the caller fills the pool."""
        return self.store.grant(key, int(n)) if int(n) > 0 else 0

    # ------------------------------------------------------------------ replies
    def metrics(self, pools=None) -> dict:
        p = self.store.progress()
        pools = self.worker.pools() if pools is None else pools
        granted = p.budget or 0
        done = (p.spent or not len(self.store.candidates())) and p.open == 0 or granted == 0
        # n-grantable: points not yet covered by a grant, what a new grant may still ask for (the
        # server selects on it: a point granted but not yet labeled cannot be granted again)
        return {"n-labeled": pools.n_labeled, "n-unlabeled": pools.n_unlabeled,
                "n-grantable": self.store.n_points - max(granted, pools.n_labeled), "granted": granted,
                "paid": p.labeled, "open": p.open, "withdrawn": p.withdrawn, "done": int(bool(done))}

    def paid_by_strategy(self) -> list[int]:
        """Labels paid through queries, by the strategy that chose them (``STRATEGY_TAGS`` order)."""
        by = {t: 0 for t in STRATEGY_TAGS}
        for q in self.store.queries("labeled"):
            by[q.strategy] = by.get(q.strategy, 0) + 1
        return [int(by[t]) for t in STRATEGY_TAGS]


class SimulatedSite(QuerySite):
    """A site whose simulated annotators label its query pool on a simulated clock."""

    def __init__(self, worker, run_token: str):
        cfg, d = worker.cfg, worker.data
        self.dir = Path(tempfile.mkdtemp(prefix="fedal-async-"))
        self.clock = SimulatedClock(0.0)
        store = PoolStore(self.dir / "pool.sqlite", f"{cfg.config_hash()}-{run_token}", d.client_id,
                          len(d.x), "simulated", clock=self.clock, durable=False)
        super().__init__(worker, store)
        self.latency = Latency.parse(cfg.annotator_latency)
        self.annotators: SimulatedAnnotators | None = None
        self.refills = 0
        self.first_grant: float | None = None
        self.last_label = 0.0
        self.duty = (0.0, 0.0)  # (busy, idle) annotator seconds up to the site's last paid label
        # idle annotator seconds while labels were still owed (the pool ran dry) and while the
        # site's budget was spent (waiting for its next grant); and both up to the last label
        self.idle_split = [0.0, 0.0]
        self.duty_split = (0.0, 0.0)

    def _next_refill(self) -> int:
        self.refills += 1
        return self.refills

    # ------------------------------------------------------------------ budget and time
    def grant_at(self, key: str, n: int, now: float) -> int:
        """``grant`` at the server's time ``now``; puts the annotators to work."""
        if n <= 0:
            return 0
        self.clock.sleep_until(now)
        n = self.grant(key, n)
        if n == 0:
            return 0
        self.refill_if_low()  # fill the pool at once
        if self.first_grant is None:
            self.first_grant = now
        if self.annotators is None:
            cfg = self.cfg
            self.annotators = SimulatedAnnotators(
                self.store, self.worker.data.y, n_annotators=cfg.annotators_per_site, latency=self.latency,
                clock=self.clock, flip_prob=cfg.label_noise, num_classes=self.worker.data.num_classes,
                seed=self.worker.seed(17), name=f"site{self.worker.data.client_id}")
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

    def summary(self) -> dict:
        """Annotator statistics for the run's summary (called once, at the end)."""
        s = self.annotators.summary() if self.annotators is not None else {}
        st = self.annotators.stats if self.annotators is not None else []
        waits = [x for a in st for x in a.waits]
        return {"busy-s": float(sum(a.busy_s for a in st)), "idle-s": float(sum(a.idle_s for a in st)),
                "duty-busy-s": float(self.duty[0]), "duty-idle-s": float(self.duty[1]),
                "duty-idle-owed-s": float(self.duty_split[0]), "duty-idle-spent-s": float(self.duty_split[1]),
                "waits-n": len(waits), "waits-sum-s": float(sum(waits)),
                "waits-max-s": float(max(waits)) if waits else 0.0,
                "wasted": int(s.get("wasted", 0)), "flipped": int(s.get("flipped", 0)),
                "first-grant-s": float(self.first_grant if self.first_grant is not None else math.nan),
                "last-label-s": float(self.last_label), "refills": self.refills,
                "paid-by-strategy": self.paid_by_strategy()}

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PeopleSite(QuerySite):
    """A site whose people label its query pool on the labeling page, in the client's durable
    store; built afresh for every message (nothing is kept in memory between messages)."""

    def __init__(self, worker, run_token: str):
        db = worker.durable_store
        if db is None:
            raise PeopleModeError(
                f"client {worker.data.client_id!r}: annotators = 'people' needs the client's durable pool "
                "store, which its labeling page opens, but this node has no state directory: set the node "
                "config state-dir=\"<local folder>\" (or the environment variable FEDAL_STATE_DIR of the "
                "SuperNode) and start fedal-annotate with the same --state-dir")
        super().__init__(worker, db)
        self.token = run_token

    def _next_refill(self) -> int:
        n = int(self.store.note("refills") or 0) + 1
        self.store.note("refills", str(n))
        return n

    def write_reserve(self) -> int:
        """Rank the site's next queries with the model of this message and keep them in the
        store's reserve (``PoolStore.set_reserve``), replacing the one an older model ranked.

        The reserve holds what ``RESERVE_REFILLS`` more refills would add after the open queries,
        in the order they would add them: the same candidates, the same split among the workers,
        the worker rotation continued from the refills so far. The labeling page promotes them
        (``PoolStore.promote_reserve``) whenever the pool runs low between messages, so a person
        who empties the pool does not wait for the next FL round; each promotion counts as a
        refill (the ``refills`` note), so the rotation goes on where it stopped. A site whose
        budget is spent keeps an empty reserve. Returns the entries written."""
        cfg, p = self.cfg, self.store.progress()
        if self.state_dict is None:
            return 0
        cand = self.store.candidates()
        idx, tags, guess, conf = [], [], [], []
        if p.budget is not None and not p.spent and len(cand):
            probs = self._probs_of_model()
            free, scores = np.ones(len(cand), dtype=bool), {}
            refills = int(self.store.note("refills") or 0)
            for j in range(1, RESERVE_REFILLS + 1):
                n = min(cfg.query_pool_refill, int(free.sum()))
                if n == 0:
                    break
                for measure, top in self._choose(probs, cand, free, refills + j, n, scores):
                    pr = probs[cand[top]]
                    idx += cand[top].tolist()
                    tags += [measure] * len(top)
                    guess += pr.argmax(1).tolist()
                    conf += np.clip(pr.max(1), 0.0, 1.0).tolist()
        return self.store.set_reserve(np.asarray(idx, dtype=np.int64), self.version, tags, guess, conf,
                                      low=cfg.query_pool_low, refill=cfg.query_pool_refill, count_note="refills")

    def new_per_class(self, pools, recount: bool = False) -> np.ndarray:
        """Paid labels per class since this run's last reply: the class counts of the labels
        now minus those reported before (kept as a note in the store: a fresh process per
        message remembers nothing). A label undone on the page counts −1. ``recount``: all of
        them (a resumed server lost the replies after its checkpoint, and counts afresh)."""
        c = self.worker.data.num_classes
        now = np.bincount(np.asarray(pools.labels, dtype=np.int64), minlength=c)[:c]
        key = f"reported-per-class:{self.token}"
        before = None if recount else self.store.note(key)
        before = np.asarray(json.loads(before), dtype=np.int64) if before else np.zeros(c, dtype=np.int64)
        self.store.note(key, json.dumps(now.astype(int).tolist()))
        return now - before

    def summary(self) -> dict:
        """What the store knows at the end: paid labels by the strategy that chose them and the
        refills. Annotator time (busy, idle, waits) is not measured for people."""
        return {"paid-by-strategy": self.paid_by_strategy(), "refills": int(self.store.note("refills") or 0)}


def site_for(run_token: str, worker) -> SimulatedSite:
    key = (run_token, worker.data.client_id)
    site = _SITES.get(key)
    if site is None:
        site = _SITES[key] = SimulatedSite(worker, run_token)
    site.worker = worker  # a fresh worker per message; its pool store is the same
    return site


def grant_key(req) -> str:
    """The key a message's grant is recorded under in the site's store: one grant per run token
    and AL round (client selection's), and one per ``grant-tag`` within a round (the standing
    share's top-ups, tagged by the server's model version, i.e. per FL round). A resent message
    carries the same key and grants nothing twice. ``req``: a ``fedal.protocol.LabelingRequest``."""
    return f"{req.run}:{req.al_round}" + (f":{req.grant_tag}" if req.grant_tag else "")


def handle(worker, req, state_dict) -> dict:
    """One ``query.labeling`` message (``req``, a ``fedal.protocol.LabelingRequest``): take the
    model (when sent), grant budget, refill the query pool; simulated annotators first label up
    to the server's clock and their paid labels move into the pools. On ``finish`` withdraw what
    is open and report the annotators. Returns the site's counts."""
    if worker.cfg.annotators == "people":
        return _handle_people(worker, req, state_dict)
    token = req.run
    site = site_for(token, worker)
    if state_dict is not None:
        site.set_model(state_dict, req.model_version)
    now, al_round = req.now, req.al_round
    site.advance(now)
    granted = site.grant_at(grant_key(req), req.grant, now)
    per_class = site.move_labels(al_round)
    out = {"partition-id": worker.data.partition_id, **site.metrics(), "granted-now": granted}
    if worker.cfg.report_label_histogram:  # an aggregate count per class (README: privacy)
        out["acquired-per-class"] = per_class.astype(int).tolist()
    if req.finish:
        out["withdrawn-at-end"] = site.store.withdraw_open(reason="run-end")
        out.update(site.summary())
        out["withdrawn"] = site.store.progress().withdrawn
        if not KEEP_SITES:
            site.close()
            _SITES.pop((token, worker.data.client_id), None)
    return out


def _handle_people(worker, req, state_dict) -> dict:
    token, al_round = req.run, req.al_round
    site = PeopleSite(worker, token)
    finish = req.finish
    # the queries of this message carry its AL round (module docstring); a model comes with every
    # message but round 0's first and the last, and without one only round 0 refills (randomly)
    site.version = al_round
    if state_dict is not None:
        site.state_dict = state_dict
    granted = 0
    if not finish:
        mark_run(site.store, dataset=worker.cfg.dataset, finished=False)  # for the labeling page
        granted = site.grant(grant_key(req), req.grant)
        if state_dict is not None or req.model_version == 0:
            site.refill_if_low()  # after a grant, or when people emptied the pool
        if state_dict is not None:
            site.write_reserve()  # what the page may open until the next message (PeopleSite.write_reserve)
    out = {}
    if finish:
        site.store.clear_reserve()  # first: the page must not open queries after the withdrawal
        out["withdrawn-at-end"] = site.store.withdraw_open(reason="run-end")
        mark_run(site.store, dataset=worker.cfg.dataset, finished=True)  # the page: "this run has finished"
        out.update(site.summary())
    pools = worker.pools()  # the labels paid on the page are in them already: nothing moves
    # granted-run: what this run (its token) granted the site; a resumed server checks it
    out = {"partition-id": worker.data.partition_id, **site.metrics(pools), "granted-now": granted,
           "granted-run": site.store.granted_under(f"{token}:"), **out}
    if worker.cfg.report_label_histogram:  # an aggregate count per class (README: privacy)
        out["acquired-per-class"] = site.new_per_class(pools, req.recount).astype(int).tolist()
    return out
