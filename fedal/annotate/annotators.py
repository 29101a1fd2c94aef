"""Annotators: who turns queries of a site's query pool into paid labels (issue #14, SPEC §6).

``AnnotationDesk`` is the one interface through which labels are written: the labeling page
(one desk per browser session) and the simulated annotators both take a query, answer, skip or
undo through it, and it writes through the pool store's query-pool API, so the store's
guarantees (a query paid once, withdrawn queries never paid, exact budgets) hold for both.

``SimulatedAnnotators`` stands in for people in experiments: ``n`` annotators per site, each
taking a query, working on it for a latency drawn from a distribution, and answering with the
oracle's label, flipped with a probability (label noise). They are driven by a clock:
``SimulatedClock`` jumps from event to event, so hours of labeling run in milliseconds and are
reproducible; ``RealClock`` sleeps, for a demo or a soak test against a live ClientApp. Pass the
same clock to the ``PoolStore`` (its ``clock=`` argument) so query leases and time stamps use it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from fedal.store import DEFAULT_LEASE_S, BudgetSpent, PoolStore, Progress, Query, QueryClosed, StoreError, Submitted


# ---------------------------------------------------------------------------------- clocks
class RealClock:
    """Wall-clock time (seconds since the epoch)."""

    def now(self) -> float:
        return time.time()

    __call__ = now

    def sleep_until(self, t: float) -> None:
        dt = t - time.time()
        if dt > 0:
            time.sleep(dt)


class SimulatedClock:
    """Simulated time: ``sleep_until`` jumps there at once. Not shared between threads."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)

    def now(self) -> float:
        return self.t

    __call__ = now

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, float(t))

    def advance(self, dt: float) -> None:
        self.sleep_until(self.t + float(dt))


# ---------------------------------------------------------------------------------- latency
_LATENCY_PARAMS = {"constant": ("seconds",), "exponential": ("mean",), "lognormal": ("median", "sigma"),
                   "uniform": ("low", "high")}


@dataclass(frozen=True)
class Latency:
    """Seconds an annotator needs per label.

    ``constant:seconds=S``; ``exponential:mean=M``; ``lognormal:median=M,sigma=S`` (log of the
    time is normal with mean ln M and deviation S: right-skewed, as human labeling times are);
    ``uniform:low=A,high=B``. ``Latency.parse("lognormal:median=6,sigma=0.5")``.
    """

    kind: str
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _LATENCY_PARAMS:
            raise ValueError(f"latency kind {self.kind!r} is not one of {sorted(_LATENCY_PARAMS)}")
        p = dict(self.params)
        need = _LATENCY_PARAMS[self.kind]
        if sorted(p) != sorted(need):
            raise ValueError(f"{self.kind} latency takes {', '.join(need)}; got {sorted(p) or 'nothing'}")
        if any(not math.isfinite(v) or v < 0 for v in p.values()):
            raise ValueError(f"latency parameters must be finite and >= 0: {p}")
        if self.kind in ("exponential", "lognormal") and p[need[0]] <= 0:
            raise ValueError(f"{self.kind} latency needs {need[0]} > 0")
        if self.kind == "uniform" and p["low"] > p["high"]:
            raise ValueError(f"uniform latency needs low <= high: {p}")

    @classmethod
    def of(cls, kind: str, **params: float) -> "Latency":
        return cls(kind, tuple(sorted((k, float(v)) for k, v in params.items())))

    @classmethod
    def parse(cls, text: str) -> "Latency":
        kind, _, rest = str(text).strip().partition(":")
        params = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"latency {text!r}: expected key=value, got {item!r}")
            try:
                params[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"latency {text!r}: {value!r} is not a number") from None
        return cls.of(kind.strip(), **params)

    def sample(self, rng: np.random.Generator) -> float:
        p = dict(self.params)
        if self.kind == "constant":
            return p["seconds"]
        if self.kind == "exponential":
            return float(rng.exponential(p["mean"]))
        if self.kind == "lognormal":
            return float(rng.lognormal(math.log(p["median"]), p["sigma"]))
        return float(rng.uniform(p["low"], p["high"]))

    @property
    def mean(self) -> float:
        p = dict(self.params)
        return {"constant": lambda: p.get("seconds"), "exponential": lambda: p.get("mean"),
                "lognormal": lambda: p.get("median", 0) * math.exp(p.get("sigma", 0) ** 2 / 2),
                "uniform": lambda: (p.get("low", 0) + p.get("high", 0)) / 2}[self.kind]()

    def __str__(self) -> str:
        return f"{self.kind}:" + ",".join(f"{k}={v:g}" for k, v in self.params)


# ---------------------------------------------------------------------------------- the desk
class AnnotationDesk:
    """One annotator's access to a site's query pool.

    ``num_classes`` (when known) makes ``submit`` refuse a class id the site does not have
    before anything reaches the store."""

    def __init__(self, store: PoolStore, annotator: str, *, num_classes: int | None = None,
                 lease_s: float = DEFAULT_LEASE_S) -> None:
        if not str(annotator):
            raise ValueError("an annotator needs a name")
        self.store, self.annotator, self.num_classes, self.lease_s = store, str(annotator), num_classes, lease_s

    def next(self) -> Query | None:
        """The query this annotator should answer now (claimed for ``lease_s``), or None."""
        return self.store.next_query(self.annotator, lease_s=self.lease_s)

    def submit(self, query_id: int, label: int) -> Submitted:
        if self.num_classes is not None and not (0 <= int(label) < self.num_classes):
            raise StoreError(f"label {label} is not a class id of this site (0..{self.num_classes - 1})")
        return self.store.submit_label(query_id, int(label), self.annotator)

    def skip(self, query_id: int) -> Query:
        return self.store.skip(query_id, self.annotator)

    def undo(self) -> Query | None:
        """Un-pay this annotator's last label; its query comes back as this annotator's next."""
        return self.store.undo_last(self.annotator, lease_s=self.lease_s)

    def progress(self) -> Progress:
        return self.store.progress(self.annotator)


# ---------------------------------------------------------------------------------- the run, for the page
# A people run tells its sites' labeling pages, through notes in each site's store, whether it is
# still labeling and which data set it runs: fedal/async_labeling.py marks every query.labeling
# message ("finished" with the run's last one, after the open queries are withdrawn), and the page
# (fedal/annotate/app.py) says "more may come later" or "this labeling run has finished", and draws
# the points as the data set's shape (fedal/data/info.py).
RUN_NOTE, DATASET_NOTE = "run", "dataset"
RUN_LABELING, RUN_FINISHED = "labeling", "finished"


@dataclass(frozen=True)
class RunState:
    finished: bool  # the run sent its last message: nothing more will be asked in it
    dataset: str | None  # the run's dataset (None: no people run has marked this store)


def mark_run(store: PoolStore, *, dataset: str, finished: bool) -> None:
    """Record the run's state and data set in the site's store (written only when they change)."""
    for key, value in ((DATASET_NOTE, str(dataset)), (RUN_NOTE, RUN_FINISHED if finished else RUN_LABELING)):
        if store.note(key) != value:
            store.note(key, value)


def run_state(store: PoolStore) -> RunState:
    return RunState(store.note(RUN_NOTE) == RUN_FINISHED, store.note(DATASET_NOTE))


# ---------------------------------------------------------------------------------- simulation
@dataclass
class AnnotatorStats:
    name: str
    labels: int = 0  # paid
    wasted: int = 0  # answered, but the query had been withdrawn (budget spent, refill) meanwhile
    skipped: int = 0
    flipped: int = 0  # paid labels that differ from the oracle's (label noise)
    busy_s: float = 0.0
    idle_s: float = 0.0  # waiting with nothing to label
    waits: list[float] = field(default_factory=list)  # from a submit to the next query in hand

    @property
    def idle_fraction(self) -> float:
        total = self.busy_s + self.idle_s
        return self.idle_s / total if total > 0 else 0.0


@dataclass
class _Worker:
    desk: AnnotationDesk
    rng: np.random.Generator
    stats: AnnotatorStats
    query: Query | None = None
    started: float = 0.0
    next_at: float = 0.0
    idle_since: float | None = None  # waiting for a query since, or None
    waiting_since: float | None = None  # for the query latency: when it last submitted


class SimulatedAnnotators:
    """``n`` simulated annotators labeling one site's query pool.

    ``oracle``: the true labels (an array indexed by point, or a function of the point index).
    Each label takes ``latency.sample()`` seconds of the annotator's time; with probability
    ``flip_prob`` the answer is another class, uniformly (needs ``num_classes``); with
    probability ``skip_prob`` the annotator skips. An annotator with nothing to label looks
    again every ``poll_s`` seconds. Annotator k draws from ``default_rng([seed, k])``.
    """

    def __init__(self, store: PoolStore, oracle: Sequence[int] | np.ndarray | Callable[[int], int], *,
                 n_annotators: int = 1, latency: Latency | str = "constant:seconds=5",
                 clock: RealClock | SimulatedClock | None = None, flip_prob: float = 0.0,
                 skip_prob: float = 0.0, num_classes: int | None = None, seed: int = 0, poll_s: float = 1.0,
                 name: str = "sim", lease_s: float | None = None) -> None:
        if n_annotators < 1:
            raise ValueError(f"n_annotators = {n_annotators} must be >= 1")
        if not (0.0 <= flip_prob <= 1.0 and 0.0 <= skip_prob <= 1.0):
            raise ValueError(f"flip_prob = {flip_prob} and skip_prob = {skip_prob} must lie in [0, 1]")
        if flip_prob > 0 and (num_classes is None or num_classes < 2):
            raise ValueError("label noise (flip_prob > 0) needs num_classes >= 2")
        if poll_s <= 0:
            raise ValueError(f"poll_s = {poll_s} must be > 0")
        self.store = store
        self.oracle = oracle if callable(oracle) else (lambda i, y=np.asarray(oracle): int(y[i]))
        self.latency = Latency.parse(latency) if isinstance(latency, str) else latency
        self.clock = clock if clock is not None else RealClock()
        self.flip_prob, self.skip_prob, self.num_classes, self.poll_s = flip_prob, skip_prob, num_classes, poll_s
        # a lease longer than any plausible latency: a simulated annotator always finishes
        lease = lease_s if lease_s is not None else max(DEFAULT_LEASE_S, 100 * self.latency.mean)
        now = self.clock.now()
        self.workers = [_Worker(AnnotationDesk(store, f"{name}-{k}", num_classes=num_classes, lease_s=lease),
                                np.random.default_rng([seed, k]), AnnotatorStats(f"{name}-{k}"),
                                next_at=now, idle_since=None) for k in range(n_annotators)]
        for w in self.workers:
            self._take(w, now)

    @property
    def stats(self) -> list[AnnotatorStats]:
        return [w.stats for w in self.workers]

    def _take(self, w: _Worker, now: float) -> None:
        q = w.desk.next()
        if q is None:
            if w.idle_since is None:
                w.idle_since = now
            w.query, w.next_at = None, now + self.poll_s
            return
        if w.idle_since is not None:
            w.stats.idle_s += now - w.idle_since
            w.idle_since = None
        if w.waiting_since is not None:
            w.stats.waits.append(now - w.waiting_since)
            w.waiting_since = None
        w.query, w.started = q, now
        w.next_at = now + self.latency.sample(w.rng)

    def _answer(self, w: _Worker, now: float) -> None:
        q, rng = w.query, w.rng
        w.stats.busy_s += now - w.started
        w.query, w.waiting_since = None, now
        try:
            if self.skip_prob and rng.random() < self.skip_prob:
                w.desk.skip(q.id)
                w.stats.skipped += 1
                return
            truth = int(self.oracle(q.index))
            label = truth
            if self.flip_prob and rng.random() < self.flip_prob:
                label = int(rng.choice([c for c in range(self.num_classes) if c != truth]))
            r = w.desk.submit(q.id, label)
            if r.paid_now:
                w.stats.labels += 1
                w.stats.flipped += int(r.label != truth)
        except (QueryClosed, BudgetSpent):
            w.stats.wasted += 1

    def run_until(self, t_end: float, *, stop_when_done: bool = False) -> list[AnnotatorStats]:
        """Label until the clock reads ``t_end`` (a real clock sleeps; a simulated one jumps).

        ``stop_when_done``: return early once nobody holds a query and none is open (the
        budget is spent or the pool is empty and nobody refills it)."""
        while True:
            w = min(self.workers, key=lambda w: w.next_at)
            if w.next_at > t_end:
                break
            if stop_when_done and all(x.query is None for x in self.workers) and self.store.progress().open == 0:
                break
            self.clock.sleep_until(w.next_at)
            now = self.clock.now()
            if w.query is not None:
                self._answer(w, now)
            self._take(w, now)
        end = min(t_end, self.clock.now()) if stop_when_done else t_end
        if not stop_when_done:
            self.clock.sleep_until(t_end)
        for w in self.workers:  # account the time up to now, and go on from here next call
            if w.query is not None and end > w.started:
                w.stats.busy_s += end - w.started
                w.started = end
            if w.idle_since is not None and end > w.idle_since:
                w.stats.idle_s += end - w.idle_since
                w.idle_since = end
        return self.stats

    def summary(self) -> dict:
        """Totals over annotators: labels, wasted, flipped, idle fraction, mean query latency."""
        st = self.stats
        busy, idle = sum(s.busy_s for s in st), sum(s.idle_s for s in st)
        waits = [x for s in st for x in s.waits]
        return {"annotators": len(st), "labels": sum(s.labels for s in st), "wasted": sum(s.wasted for s in st),
                "skipped": sum(s.skipped for s in st), "flipped": sum(s.flipped for s in st),
                "idle_fraction": idle / (busy + idle) if busy + idle > 0 else 0.0,
                "mean_query_latency_s": float(np.mean(waits)) if waits else 0.0,
                "latency": str(self.latency)}
