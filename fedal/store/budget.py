"""A site store's label budget, its grants (once per key: a resent message grants nothing
twice) and the small notes a client keeps with its pools across processes. The transaction
that spends the last unit of the budget withdraws every open query (``_withdraw_if_spent``)."""

from __future__ import annotations

import sqlite3

from fedal.store.database import StoreError


class Budget:
    """The budget, grants and notes (a ``fedal.store.PoolStore`` job)."""

    @staticmethod
    def _budget(db: sqlite3.Connection) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = 'budget'").fetchone()
        return None if row is None else int(row[0])

    @property
    def budget(self) -> int | None:
        """The total number of labels this site may pay (acquisitions and queries); None: no limit."""
        rows = self._read("SELECT value FROM meta WHERE key = 'budget'")
        return int(rows[0][0]) if rows else None

    def set_budget(self, total: int | None) -> None:
        """Set (or, with None, remove) the site's total label budget. It may grow at any time,
        never below what is already paid; set equal to it, the open queries are withdrawn."""
        with self._tx() as db:
            if total is None:
                db.execute("DELETE FROM meta WHERE key = 'budget'")
                return
            if isinstance(total, bool) or int(total) != total or total < 0:
                raise StoreError(f"budget = {total!r} must be a count >= 0")
            paid = db.execute("SELECT count(*) FROM labels").fetchone()[0]
            if int(total) < paid:
                raise StoreError(f"budget = {total} is below the {paid} labels already paid; a budget "
                                 "cannot un-pay labels")
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('budget', ?)", (str(int(total)),))
            self._withdraw_if_spent(db, self._clock())

    def grant(self, key: str, n: int) -> int:
        """Raise the budget by ``n`` labels, at most to one label per point, once per ``key``.

        Returns the labels granted: a grant repeated under the same key (a message the server
        resent, a ClientApp process that died after the commit) grants nothing more and returns
        what the first one granted. A store without a budget starts from what is paid. The grant
        and its record are one transaction, so no process can see one without the other."""
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise StoreError(f"grant = {n!r} must be a count >= 0")
        note = f"grant:{key}"
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (note,)).fetchone()
            if row is not None:
                return int(row[0])
            paid = db.execute("SELECT count(*) FROM labels").fetchone()[0]
            total = self._budget(db)
            total = paid if total is None else total
            add = max(0, min(int(n), self.n_points - total))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('budget', ?)", (str(total + add),))
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (note, str(add)))
            self._withdraw_if_spent(db, self._clock())
            return add

    def granted_under(self, prefix: str) -> int:
        """The labels granted under keys starting with ``prefix`` (``grant``): with a run token
        as the prefix, what that run granted this site (a resumed asynchronous run checks it
        against its checkpoint, strategies/async_policy.py)."""
        note = f"grant:{prefix}"
        rows = self._read("SELECT value FROM meta WHERE substr(key, 1, ?) = ?", (len(note), note))
        return sum(int(v) for (v,) in rows)

    def note(self, key: str, value: str | None = None) -> str | None:
        """A small value a client keeps with its pools across processes (``value`` given: set it;
        returns the value stored). Names start with ``note:`` in the meta table, apart from the
        store's own keys."""
        k = f"note:{key}"
        if value is None:
            rows = self._read("SELECT value FROM meta WHERE key = ?", (k,))
            return rows[0][0] if rows else None
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, str(value)))
        return str(value)

    def _withdraw_if_spent(self, db: sqlite3.Connection, now: float) -> int:
        budget = self._budget(db)
        if budget is None or db.execute("SELECT count(*) FROM labels").fetchone()[0] < budget:
            return 0
        return db.execute("UPDATE queries SET state = 'withdrawn', closed_by = 'budget', closed_at = ?, "
                          "claimed_by = NULL, lease_until = NULL WHERE state = 'open'", (now,)).rowcount

    def _spent(self, db: sqlite3.Connection) -> bool:
        budget = self._budget(db)
        return budget is not None and db.execute("SELECT count(*) FROM labels").fetchone()[0] >= budget
