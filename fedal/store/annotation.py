"""What annotators do in a site store: claim the next query under a lease, pay it with a
label (once: the query moves to 'labeled' and the label row is inserted in ONE transaction),
skip it, undo their last label, and the progress counts a labeling page shows. The labeling
page (fedal/annotate/app.py) and the simulated annotators (fedal/annotate/annotators.py) act
through here; paid-label code (``fedal.store.labels``) is apart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal.store.database import DEFAULT_LEASE_S, BudgetSpent, QueryClosed, StoreError
from fedal.store.queries import Query


@dataclass(frozen=True)
class Submitted:
    """The outcome of ``submit_label``."""

    query_id: int
    index: int
    label: int
    paid_now: bool  # False: the query was already paid with this label; nothing was paid again


@dataclass(frozen=True)
class Progress:
    """The site's labeling progress, read in one snapshot."""

    budget: int | None  # total labels this site may pay (None: no limit set)
    labeled: int  # every paid label (acquisitions and queries)
    remaining: int | None  # budget - labeled
    open: int  # open queries (claimed or not)
    claimed: int  # open queries under a live lease
    labeled_queries: int
    withdrawn: int
    skipped: int
    by_annotator: int | None = None  # labels paid through queries by the annotator asked about

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


class Annotation:
    """Annotators' actions and progress (a ``fedal.store.PoolStore`` job)."""

    def next_query(self, annotator: str, *, lease_s: float = DEFAULT_LEASE_S) -> Query | None:
        """Claim the next open query for ``annotator`` (None when none is free).

        The query this annotator already holds comes back first (a reloaded page shows the same
        point), its lease renewed. Otherwise the first open query nobody holds (or whose lease
        ran out), newest model version first, then in the order it was added."""
        annotator = self._annotator(annotator)
        now = self._clock()
        with self._tx() as db:
            if self._withdraw_if_spent(db, now) or self._spent(db):
                return None
            row = db.execute("SELECT id FROM queries WHERE state = 'open' AND claimed_by = ? AND lease_until > ? "
                             "ORDER BY id LIMIT 1", (annotator, now)).fetchone()
            if row is None:
                row = db.execute("SELECT id FROM queries WHERE state = 'open' AND (claimed_by IS NULL OR "
                                 "lease_until <= ?) ORDER BY model_version DESC, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE queries SET claimed_by = ?, lease_until = ? WHERE id = ?",
                       (annotator, now + float(lease_s), row[0]))
            return self._query(db.execute(f"SELECT {self._QUERY_COLS} FROM {self._QUERY_FROM} WHERE q.id = ?",
                                          (row[0],)).fetchone())

    @staticmethod
    def _annotator(annotator: str) -> str:
        name = str(annotator)
        if not name or len(name) > 200:
            raise StoreError(f"annotator name {annotator!r} must have 1-200 characters")
        return name

    def submit_label(self, query_id: int, label: int, annotator: str) -> Submitted:
        """Pay query ``query_id`` with ``label``, at most once.

        The query moves to 'labeled' and the label row is inserted in one transaction. Submitting
        the same answer again returns it with ``paid_now=False``; another answer to a labeled query,
        or any answer to a withdrawn or skipped one, raises ``QueryClosed``; a spent budget raises
        ``BudgetSpent`` (and withdraws what is open). Nothing is paid in either case."""
        annotator = self._annotator(annotator)
        if isinstance(label, (bool, np.bool_)) or int(label) != label or label < 0:
            raise StoreError(f"label {label!r} must be a class id >= 0")
        label, qid, now = int(label), int(query_id), self._clock()
        spent = False
        with self._tx() as db:
            row = db.execute("SELECT idx, model_version, strategy, state, closed_by FROM queries WHERE id = ?",
                             (qid,)).fetchone()
            if row is None:
                raise StoreError(f"query {qid} does not exist in {self.path}")
            idx, version, strategy, state, closed_by = row
            if state == "labeled":
                paid = db.execute("SELECT label FROM labels WHERE idx = ?", (idx,)).fetchone()[0]
                if paid == label:
                    return Submitted(qid, idx, label, paid_now=False)
                raise QueryClosed(f"query {qid} (point {idx}) is already labeled {paid} by {closed_by}; "
                                  "undo that label first to change it")
            if state != "open":
                raise QueryClosed(f"query {qid} (point {idx}) was {state}" +
                                  (f" ({closed_by})" if closed_by else "") + "; it is not paid")
            if self._spent(db):
                self._withdraw_if_spent(db, now)
                spent = True
            else:
                db.execute("INSERT INTO labels(idx, label, al_round, strategy, acquired_at) VALUES (?, ?, ?, ?, ?)",
                           (idx, label, version, strategy, now))
                db.execute("UPDATE queries SET state = 'labeled', closed_by = ?, closed_at = ?, claimed_by = NULL, "
                           "lease_until = NULL WHERE id = ?", (annotator, now, qid))
                self._withdraw_if_spent(db, now)
        if spent:  # raised after the commit, so that the withdrawals stay
            raise BudgetSpent(f"the label budget of {self.path} is spent; query {qid} (point {idx}) was withdrawn, "
                              "not paid")
        return Submitted(qid, idx, label, paid_now=True)

    def skip(self, query_id: int, annotator: str) -> Query:
        """Close an open query unpaid (the annotator cannot tell). Skipping it again is a no-op."""
        annotator = self._annotator(annotator)
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT idx, state FROM queries WHERE id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise StoreError(f"query {query_id} does not exist in {self.path}")
            if row[1] == "open":
                db.execute("UPDATE queries SET state = 'skipped', closed_by = ?, closed_at = ?, claimed_by = NULL, "
                           "lease_until = NULL WHERE id = ?", (annotator, now, int(query_id)))
            elif row[1] != "skipped":
                raise QueryClosed(f"query {query_id} (point {row[0]}) is {row[1]}; only an open query can be skipped")
        return self.query(query_id)

    # the last label an annotator paid through a query: what undo_last un-pays
    _LAST_PAID = ("SELECT q.id, q.idx FROM queries q JOIN labels l ON l.idx = q.idx "
                  "WHERE q.state = 'labeled' AND q.closed_by = ? ORDER BY l.pos DESC LIMIT 1")

    def last_paid(self, annotator: str) -> Query | None:
        """The query whose label ``undo_last(annotator)`` would un-pay now (None: nothing to undo);
        a labeling page names it on its Undo button."""
        rows = self._read(self._LAST_PAID, (self._annotator(annotator),))
        return self.query(rows[0][0]) if rows else None

    def undo_last(self, annotator: str, *, lease_s: float = DEFAULT_LEASE_S) -> Query | None:
        """Un-pay the last label ``annotator`` paid through a query (None if there is none).

        In one transaction the label row (and its stored logits) is deleted and the query is
        open again, claimed by the same annotator, so it is the next one they see. The budget
        counts paid labels, so the unit comes back; queries withdrawn when it was spent stay
        withdrawn, and the query the annotator held meanwhile is released to others. Called
        again, it undoes the label before."""
        annotator = self._annotator(annotator)
        now = self._clock()
        with self._tx() as db:
            row = db.execute(self._LAST_PAID, (annotator,)).fetchone()
            if row is None:
                return None
            qid, idx = row
            db.execute("DELETE FROM logits WHERE idx = ?", (idx,))
            db.execute("DELETE FROM labels WHERE idx = ?", (idx,))
            # an annotator works on one query at a time: the one they held is free for others again
            db.execute("UPDATE queries SET claimed_by = NULL, lease_until = NULL WHERE state = 'open' "
                       "AND claimed_by = ?", (annotator,))
            db.execute("UPDATE queries SET state = 'open', closed_by = NULL, closed_at = NULL, claimed_by = ?, "
                       "lease_until = ? WHERE id = ?", (annotator, now + float(lease_s), qid))
        return self.query(qid)

    def progress(self, annotator: str | None = None) -> Progress:
        """Counts against the budget, in one snapshot."""
        now = self._clock()
        with self._mutex:
            self._db.execute("BEGIN")
            try:
                db = self._db
                budget = self._budget(db)
                labeled = db.execute("SELECT count(*) FROM labels").fetchone()[0]
                counts = dict(db.execute("SELECT state, count(*) FROM queries GROUP BY state").fetchall())
                claimed = db.execute("SELECT count(*) FROM queries WHERE state = 'open' AND claimed_by IS NOT NULL "
                                     "AND lease_until > ?", (now,)).fetchone()[0]
                mine = None if annotator is None else db.execute(
                    "SELECT count(*) FROM queries WHERE state = 'labeled' AND closed_by = ?", (str(annotator),)
                ).fetchone()[0]
            finally:
                self._db.execute("COMMIT")
        return Progress(budget=budget, labeled=labeled, remaining=None if budget is None else budget - labeled,
                        open=counts.get("open", 0), claimed=claimed, labeled_queries=counts.get("labeled", 0),
                        withdrawn=counts.get("withdrawn", 0), skipped=counts.get("skipped", 0), by_annotator=mine)
