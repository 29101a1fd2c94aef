"""A site store's labeled pool: the views training reads (labels, logits, ``Pools``) and the
acquisition of an AL round's labels, paid at most once: chosen points committed as pending
before the oracle is asked, all labels in ONE transaction, under an exclusive file lock per
store (the module docstring of ``fedal.store.database`` says why)."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from fedal.pools import Pools
from fedal.store.database import BudgetSpent, StoreError


@dataclass(frozen=True)
class Acquisition:
    """The outcome of one AL round's acquisition on this client."""

    al_round: int
    indices: np.ndarray  # int64, in the order the point strategy chose them
    labels: np.ndarray  # int64, the oracle's answers
    paid_now: bool  # False: the round was already committed and nothing was asked or paid


class Labels:
    """The labeled pool and its acquisitions (a ``fedal.store.PoolStore`` job)."""

    # ------------------------------------------------------------------ views
    def labeled_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._read("SELECT idx, label FROM labels ORDER BY pos")
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    @property
    def n_labeled(self) -> int:
        return int(self._read("SELECT count(*) FROM labels")[0][0])

    @property
    def n_unlabeled(self) -> int:
        return self.n_points - self.n_labeled

    def logits(self) -> dict[int, list[float]]:
        return {int(i): np.frombuffer(blob, dtype="<f8").tolist()
                for i, _w, blob in self._read("SELECT idx, width, values_f64 FROM logits ORDER BY idx")}

    def pools_dict(self) -> dict:
        """The pools in ``Pools.to_dict`` form, read in one consistent snapshot."""
        with self._mutex:
            self._db.execute("BEGIN")  # a read transaction: labels and logits from the same commit
            try:
                rows = self._db.execute("SELECT idx, label, al_round FROM labels ORDER BY pos").fetchall()
                lrows = self._db.execute("SELECT idx, values_f64 FROM logits ORDER BY idx").fetchall()
            finally:
                self._db.execute("COMMIT")
        return {"size": self.n_points, "labeled": [r[0] for r in rows], "labels": [r[1] for r in rows],
                "acquired_round": [r[2] for r in rows], "logit-index": [r[0] for r in lrows],
                "logits": [v for _, blob in lrows for v in np.frombuffer(blob, dtype="<f8").tolist()]}

    def pools(self) -> Pools:
        """A ``fedal.pools.Pools`` snapshot (changes to it are not written back)."""
        return Pools.from_dict(self.pools_dict())

    def acquisition(self, al_round: int) -> Acquisition | None:
        """Round ``al_round``'s committed acquisition, or None."""
        state = self._read("SELECT state FROM acquisitions WHERE al_round = ?", (int(al_round),))
        if not state or state[0][0] != "committed":
            return None
        # labels paid through queries carry their model version as AL round: not this acquisition's
        rows = self._read("SELECT idx, label FROM labels WHERE al_round = ? AND idx NOT IN "
                          "(SELECT idx FROM queries WHERE state = 'labeled') ORDER BY pos", (int(al_round),))
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return Acquisition(int(al_round), arr[:, 0].copy(), arr[:, 1].copy(), paid_now=False)

    def pending(self, al_round: int) -> np.ndarray | None:
        """The points chosen for round ``al_round`` whose labels are not committed yet, or None."""
        state = self._read("SELECT state FROM acquisitions WHERE al_round = ?", (int(al_round),))
        if not state or state[0][0] != "pending":
            return None
        rows = self._read("SELECT idx FROM chosen WHERE al_round = ? ORDER BY pos", (int(al_round),))
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    # ------------------------------------------------------------------ updates
    def acquire(self, al_round: int, choose_fn: Callable[[Pools], Sequence[int]],
                label_fn: Callable[[np.ndarray], Sequence[int]], *, strategy: str = "") -> Acquisition:
        """Round ``al_round``'s labels, paid at most once.

        If the round is committed, returns its indices and labels without calling anything.
        Otherwise ``choose_fn(pools)`` picks the points (skipped when a crashed attempt already
        chose them), ``label_fn(indices)`` returns their labels, and all labels are committed in
        one transaction before this returns.
        """
        r = int(al_round)
        if r < 0:
            raise StoreError(f"al_round = {al_round} must be >= 0")
        done = self.acquisition(r)
        if done is not None:  # fast path without the lock: committed rounds never change
            return done
        with self._acquire_lock(r):
            done = self.acquisition(r)  # another process may have finished it while we waited
            if done is not None:
                return done
            chosen = self.pending(r)
            if chosen is None:
                chosen = self._validate_choice(choose_fn(self.pools()), r)
                with self._tx() as db:
                    db.execute("INSERT INTO acquisitions(al_round, state, strategy, n_points, chosen_at) "
                               "VALUES (?, 'pending', ?, ?, ?)", (r, str(strategy), len(chosen), self._clock()))
                    db.executemany("INSERT INTO chosen(al_round, pos, idx) VALUES (?, ?, ?)",
                                   [(r, k, int(i)) for k, i in enumerate(chosen)])
            else:
                strategy = self._read("SELECT strategy FROM acquisitions WHERE al_round = ?", (r,))[0][0]
            labels = self._validate_labels(label_fn(chosen.copy()), chosen, r)
            now = self._clock()
            with self._tx() as db:  # every label of the batch, or none of them
                self._check_batch_fits(db, chosen, r)
                db.executemany("INSERT INTO labels(idx, label, al_round, strategy, acquired_at) VALUES (?, ?, ?, ?, ?)",
                               [(int(i), int(v), r, str(strategy), now) for i, v in zip(chosen, labels)])
                db.execute("DELETE FROM chosen WHERE al_round = ?", (r,))
                db.execute("UPDATE acquisitions SET state = 'committed', committed_at = ? WHERE al_round = ?",
                           (now, r))
                # a point paid here is no longer a question: its open query (if any) is retired
                db.executemany("UPDATE queries SET state = 'withdrawn', closed_by = 'acquisition', closed_at = ?, "
                               "claimed_by = NULL, lease_until = NULL WHERE state = 'open' AND idx = ?",
                               [(now, int(i)) for i in chosen])
                self._withdraw_if_spent(db, now)
            return Acquisition(r, chosen, labels, paid_now=True)

    def _validate_choice(self, chosen, r: int) -> np.ndarray:
        arr = np.asarray(chosen)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise StoreError(f"AL round {r}: the point strategy returned {arr.dtype} indices; integers expected")
        idx = arr.astype(np.int64).ravel()
        if len(np.unique(idx)) != len(idx):
            raise StoreError(f"AL round {r}: the point strategy chose the same index twice")
        bad = idx[(idx < 0) | (idx >= self.n_points)]
        if len(bad):
            raise StoreError(f"AL round {r}: chosen indices outside 0..{self.n_points - 1}: {bad[:10].tolist()}")
        labeled, _ = self.labeled_arrays()
        again = np.intersect1d(idx, labeled)
        if len(again):
            raise StoreError(f"AL round {r}: chosen indices are already labeled (a label would be paid twice): "
                             f"{again[:10].tolist()}")
        budget = self.budget
        if budget is not None and len(labeled) + len(idx) > budget:
            raise BudgetSpent(f"AL round {r}: {len(idx)} more labels would exceed the budget of {budget} "
                              f"({len(labeled)} paid)")
        return idx

    def _check_batch_fits(self, db: sqlite3.Connection, chosen: np.ndarray, r: int) -> None:
        """Inside the commit: labelers working on queries may have paid points or budget since
        the points were chosen; refuse instead of paying a point twice or over the budget."""
        ids = [int(i) for i in chosen]
        paid = [i for i in ids if db.execute("SELECT 1 FROM labels WHERE idx = ?", (i,)).fetchone()]
        if paid:
            raise StoreError(f"AL round {r}: points {paid[:10]} were labeled through the query pool after "
                             "they were chosen; the round stays pending (a label would be paid twice)")
        budget = self._budget(db)
        n = db.execute("SELECT count(*) FROM labels").fetchone()[0]
        if budget is not None and n + len(ids) > budget:
            raise BudgetSpent(f"AL round {r}: {len(ids)} more labels would exceed the budget of {budget} "
                              f"({n} paid); the round stays pending")

    @staticmethod
    def _validate_labels(labels, chosen: np.ndarray, r: int) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.shape != chosen.shape:
            raise StoreError(f"AL round {r}: the oracle returned {arr.shape} labels for {len(chosen)} points")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise StoreError(f"AL round {r}: the oracle returned {arr.dtype} labels; integer class ids expected")
        return arr.astype(np.int64)

    def set_logits(self, indices, logits) -> None:
        """Store (or replace) the logits of labeled points, in one transaction."""
        idx = [int(i) for i in np.asarray(indices).ravel()]
        vals = np.asarray(logits, dtype="<f8")
        if vals.ndim != 2 or len(vals) != len(idx):
            raise StoreError(f"set_logits: {len(idx)} indices need a 2-D array with {len(idx)} rows, "
                             f"got shape {vals.shape}")
        with self._tx() as db:
            labeled = {r[0] for r in db.execute("SELECT idx FROM labels")}
            missing = sorted(set(idx) - labeled)
            if missing:
                raise StoreError(f"logits are stored only for labeled points; not labeled: {missing[:10]}")
            db.executemany("INSERT OR REPLACE INTO logits(idx, width, values_f64) VALUES (?, ?, ?)",
                           [(i, vals.shape[1], row.tobytes()) for i, row in zip(idx, vals)])

    # ------------------------------------------------------------------ the acquisition lock
    @contextmanager
    def _acquire_lock(self, r: int) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = None if self.lock_timeout is None else time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                if deadline is not None and time.monotonic() > deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise StoreError(f"pool store {self.path}: another process ({holder}) has been acquiring "
                                     f"for {self.lock_timeout} s; AL round {r} was not acquired")
                time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, AL round {r}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
