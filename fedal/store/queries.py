"""A site store's query pool and reserve (issue #14, schema versions 2 and 3): the points
chosen for labeling (``add_queries``; ``candidates``: what a refill may choose from), the
reserve the labeling page promotes between messages (``set_reserve``, ``promote_reserve``),
reading the pool (``query``, ``queries``) and retiring open queries (``withdraw_open``). Never a
point twice, nothing once the budget is spent."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedal.store.database import QUERY_STATES, StoreError


def _busy_sql(skipped: bool) -> str:
    """The points a new query must not ask about: labeled, in an open query, chosen by a pending
    acquisition, and (``skipped``) skipped by an annotator."""
    states = "('open', 'skipped')" if skipped else "('open')"
    return f"SELECT idx FROM labels UNION SELECT idx FROM queries WHERE state IN {states} UNION SELECT idx FROM chosen"


@dataclass(frozen=True)
class Query:
    """One row of the query pool (``label`` is set once the query is paid)."""

    id: int
    index: int  # the point, an index into the site's data
    model_version: int
    strategy: str
    state: str  # one of QUERY_STATES
    created_at: float
    guess: int | None  # the model's predicted class at query time, if the client gave it
    confidence: float | None  # the model's probability of that class
    claimed_by: str | None
    lease_until: float | None
    closed_by: str | None  # who labeled or skipped it ('budget'/'acquisition'/... for withdrawals)
    closed_at: float | None
    label: int | None = None


@dataclass(frozen=True)
class ReserveEntry:
    """One row of the reserve: a point the site's workers would ask about next (``set_reserve``)."""

    pos: int  # promotion order
    index: int
    model_version: int  # the tag its query will carry
    strategy: str  # the measure that picks it
    guess: int | None
    confidence: float | None


class QueryPool:
    """The query pool and the reserve (a ``fedal.store.PoolStore`` job)."""

    def _check_points(self, what: str, indices, model_version: int, guesses, confidences):
        """The points, guesses and confidences of ``add_queries``/``set_reserve``, validated."""
        idx = np.asarray(indices)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise StoreError(f"{what}: indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64).ravel()
        if len(np.unique(idx)) != len(idx):
            raise StoreError(f"{what}: the same point appears twice")
        bad = idx[(idx < 0) | (idx >= self.n_points)]
        if len(bad):
            raise StoreError(f"{what}: indices outside 0..{self.n_points - 1}: {bad[:10].tolist()}")
        if isinstance(model_version, bool) or int(model_version) != model_version or model_version < 0:
            raise StoreError(f"{what}: model_version = {model_version!r} must be an integer >= 0")
        g = [None] * len(idx) if guesses is None else [int(v) for v in np.asarray(guesses).ravel()]
        c = [None] * len(idx) if confidences is None else [float(v) for v in np.asarray(confidences).ravel()]
        if len(g) != len(idx) or len(c) != len(idx):
            raise StoreError(f"{what}: {len(idx)} points need as many guesses and confidences "
                             f"(got {len(g)} and {len(c)})")
        if any(v is not None and v < 0 for v in g):
            raise StoreError(f"{what}: a guess is a class id >= 0")
        if any(v is not None and not (0.0 <= v <= 1.0) for v in c):  # also refuses NaN
            raise StoreError(f"{what}: a confidence is a probability in [0, 1]")
        return idx, g, c

    def add_queries(self, indices, model_version: int, strategy: str, guesses=None,
                    confidences=None) -> list[int]:
        """Put points into the query pool, in the order given (the order annotators get them in,
        among queries of the same model version; newer versions go first).

        ``guesses``/``confidences``: the model's predicted class and its probability per point,
        shown to annotators. Points already labeled, already in an open query or chosen by a
        pending acquisition are left out (a label may have landed since the caller looked), and
        nothing is added once the budget is spent. Returns the ids of the queries added.
        """
        idx, g, c = self._check_points("add_queries", indices, model_version, guesses, confidences)
        now = self._clock()
        with self._tx() as db:
            budget = self._budget(db)
            if budget is not None and db.execute("SELECT count(*) FROM labels").fetchone()[0] >= budget:
                return []
            added, _ = self._open_queries(db, [(i, int(model_version), str(strategy), gi, ci)
                                               for i, gi, ci in zip(idx.tolist(), g, c)],
                                          self._busy(db, skipped=False), now)
        return added

    @staticmethod
    def _busy(db: sqlite3.Connection, *, skipped: bool) -> set[int]:
        """Points a new query must not ask about (``_busy_sql``)."""
        return {r[0] for r in db.execute(_busy_sql(skipped))}

    @staticmethod
    def _open_queries(db: sqlite3.Connection, entries, busy: set[int], now: float,
                      limit: int | None = None) -> tuple[list[int], int]:
        """Open a query for each (point, model version, strategy, guess, confidence) of
        ``entries`` in order, leaving out ``busy`` points, until ``limit`` are open. Returns the
        new queries' ids and how many entries were gone through."""
        added, seen = [], 0
        for i, version, strategy, gi, ci in entries:
            if limit is not None and len(added) == limit:
                break
            seen += 1
            if i in busy:
                continue
            cur = db.execute("INSERT INTO queries(idx, model_version, strategy, state, created_at, guess, "
                             "confidence) VALUES (?, ?, ?, 'open', ?, ?, ?)", (i, version, strategy, now, gi, ci))
            added.append(int(cur.lastrowid))
            busy.add(i)
        return added, seen

    def candidates(self, *, exclude_skipped: bool = True) -> np.ndarray:
        """The points a refill may choose from: those no new query may ask about (``_busy_sql``)
        left out, skipped ones only when ``exclude_skipped``."""
        mask = np.ones(self.n_points, dtype=bool)
        taken = [r[0] for r in self._read(_busy_sql(exclude_skipped))]
        mask[np.asarray(taken, dtype=np.int64)] = False
        return np.flatnonzero(mask)

    # ------------------------------------------------------------------ the reserve (schema version 3)
    def set_reserve(self, indices, model_version: int, strategies: Sequence[str], guesses=None,
                    confidences=None, *, low: int, refill: int, count_note: str | None = None) -> int:
        """Replace the reserve with ``indices``, in the order they are to become queries.

        The ClientApp writes it with every model it gets (fedal/async_labeling.py,
        ``PeopleSite.write_reserve``): the points its workers would pick next, after the open
        queries, each with the measure (``strategies``) that picks it and the model's guess and
        confidence; ``model_version`` is the tag their queries will carry. ``low``/``refill`` are
        the site's ``query-pool-low``/``query-pool-refill``, which ``promote_reserve`` obeys (kept
        with the reserve, so the labeling page needs no settings of its own). ``count_note``: the
        note (``note``) that counts the site's refills; each promotion adds one. The old reserve,
        ranked by an older model, is dropped in the same transaction. Returns the entries written."""
        idx, g, c = self._check_points("set_reserve", indices, model_version, guesses, confidences)
        tags = [str(t) for t in strategies]
        if len(tags) != len(idx):
            raise StoreError(f"set_reserve: {len(idx)} points need as many strategies (got {len(tags)})")
        for name, v in (("low", low), ("refill", refill)):
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise StoreError(f"set_reserve: {name} = {v!r} must be a count >= 0")
        settings = {"reserve:low": str(int(low)), "reserve:refill": str(int(refill)),
                    "reserve:set_at": repr(self._clock())}
        with self._tx() as db:
            db.execute("DELETE FROM reserve")
            db.executemany("INSERT INTO reserve(pos, idx, model_version, strategy, guess, confidence) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           [(k, i, int(model_version), t, gi, ci)
                            for k, (i, t, gi, ci) in enumerate(zip(idx.tolist(), tags, g, c))])
            db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", sorted(settings.items()))
            db.execute("DELETE FROM meta WHERE key = 'reserve:count_note'")
            if count_note:
                db.execute("INSERT INTO meta(key, value) VALUES ('reserve:count_note', ?)", (str(count_note),))
        return len(idx)

    def clear_reserve(self) -> int:
        """Drop the reserve (at the end of a run: nothing may be promoted after it). Returns how
        many entries it held."""
        with self._tx() as db:
            return db.execute("DELETE FROM reserve").rowcount

    def reserve(self) -> list[ReserveEntry]:
        """The reserve, in promotion order."""
        return [ReserveEntry(*r) for r in self._read(
            "SELECT pos, idx, model_version, strategy, guess, confidence FROM reserve ORDER BY pos")]

    def promote_reserve(self) -> list[int]:
        """Between the ClientApp's messages: when fewer than the reserve's ``low`` queries are
        open and budget is left, turn up to ``refill`` reserve entries into open queries, in
        reserve order, in ONE transaction (so concurrent callers, other processes and the
        ClientApp never add a point twice). Entries whose point is meanwhile labeled, in an open
        query, skipped or chosen by a pending acquisition are dropped unasked; at most as many
        are opened as the budget can still pay beyond the open queries. Nothing is promoted once
        the budget is spent (open queries are withdrawn then, as ``next_query`` does), or when the
        store has no budget or no reserve. Returns the ids of the queries added."""
        now = self._clock()
        with self._tx() as db:
            conf = dict(db.execute("SELECT key, value FROM meta WHERE key IN "
                                   "('reserve:low', 'reserve:refill', 'reserve:count_note')").fetchall())
            if "reserve:low" not in conf or "reserve:refill" not in conf:
                return []
            if self._withdraw_if_spent(db, now) or self._spent(db):
                return []
            budget = self._budget(db)
            if budget is None:
                return []
            paid = db.execute("SELECT count(*) FROM labels").fetchone()[0]
            n_open = db.execute("SELECT count(*) FROM queries WHERE state = 'open'").fetchone()[0]
            if n_open >= int(conf["reserve:low"]):
                return []
            n = min(int(conf["reserve:refill"]), budget - paid - n_open)
            if n <= 0:
                return []
            rows = db.execute("SELECT pos, idx, model_version, strategy, guess, confidence FROM reserve "
                              "ORDER BY pos").fetchall()
            added, seen = self._open_queries(db, [r[1:] for r in rows], self._busy(db, skipped=True), now, n)
            db.executemany("DELETE FROM reserve WHERE pos = ?", [(r[0],) for r in rows[:seen]])
            note = conf.get("reserve:count_note")
            if added and note:  # a promotion is one of the site's refills (its workers' turn order)
                k = f"note:{note}"
                row = db.execute("SELECT value FROM meta WHERE key = ?", (k,)).fetchone()
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                           (k, str(int(row[0] if row and str(row[0]).isdigit() else 0) + 1)))
            return added

    _QUERY_COLS = ("q.id, q.idx, q.model_version, q.strategy, q.state, q.created_at, q.guess, q.confidence, "
                   "q.claimed_by, q.lease_until, q.closed_by, q.closed_at, "
                   "CASE WHEN q.state = 'labeled' THEN l.label END")
    _QUERY_FROM = "queries q LEFT JOIN labels l ON l.idx = q.idx"

    @staticmethod
    def _query(row) -> Query:
        return Query(*row)

    def query(self, query_id: int) -> Query | None:
        rows = self._read(f"SELECT {self._QUERY_COLS} FROM {self._QUERY_FROM} WHERE q.id = ?", (int(query_id),))
        return self._query(rows[0]) if rows else None

    def queries(self, state: str | None = None) -> list[Query]:
        """The query pool (one state, or all), oldest first."""
        if state is not None and state not in QUERY_STATES:
            raise StoreError(f"query state {state!r} is not one of {QUERY_STATES}")
        where, args = ("WHERE q.state = ?", (state,)) if state else ("", ())
        return [self._query(r) for r in
                self._read(f"SELECT {self._QUERY_COLS} FROM {self._QUERY_FROM} {where} ORDER BY q.id", args)]

    def withdraw_open(self, *, older_than: int | None = None, reason: str = "withdrawn") -> int:
        """Retire open queries unpaid (all, or those chosen by a model version < ``older_than``,
        e.g. before a refill with a fresher model). Returns how many."""
        now = self._clock()
        where, args = ("", ()) if older_than is None else (" AND model_version < ?", (int(older_than),))
        with self._tx() as db:
            return db.execute("UPDATE queries SET state = 'withdrawn', closed_by = ?, closed_at = ?, "
                              f"claimed_by = NULL, lease_until = NULL WHERE state = 'open'{where}",
                              (str(reason), now, *args)).rowcount
