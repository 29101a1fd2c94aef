"""A site's durable pool store: paid labels in a SQLite database on the client machine.

Deployment semantics (issue #13): a label is *paid* once it is committed here, and it is
committed before the reply that reports it leaves the client. A restarted client (a SuperNode
restart, a crash, ``kill -9``) reopens the database and resumes with every paid label. No label
is paid twice: an AL round's acquisition is recorded under its round number, and asking for the
same round again returns what was committed instead of asking the oracle again.

How the guarantees are obtained:

- SQLite in WAL mode with ``synchronous=FULL``: a COMMIT returns only after the write-ahead log
  is on disk, and a process killed at any instant leaves either the whole last transaction or
  none of it. All labels of one acquisition are written in ONE transaction.
- ``BEGIN IMMEDIATE`` for every write and a busy timeout, because several processes may open
  the same file (the ClientApp, a labeling page, a report script).
- An acquisition of round r runs under an exclusive file lock (``<db>.lock``, ``flock``), held
  while the oracle is asked. Holding the SQLite write lock instead would block every other
  writer for as long as a human annotator takes, and would time out waiting processes; the file
  lock only serialises acquisitions, and the OS drops it when its holder dies, even by SIGKILL.
  A second process asking for the same round waits, then finds it committed and returns it.
- The chosen points of round r are committed (as a *pending* choice) before the oracle is
  asked. If the process dies while the oracle works, the retry asks about the same points
  instead of running the point strategy again; an oracle that remembers its answers (a
  labeling page, a labeling service with request ids) is then not paid twice for them either.
  An answer that reached this process but not the database is lost with the process: only the
  committed label counts as paid.

The store refuses, with an error naming the file and the way out, any database that belongs to
another experiment, client or data set, and any file that is corrupt. It never silently starts
empty over a file that may hold paid labels. The file must live on a local disk: SQLite's WAL
and ``flock`` are not reliable on network file systems.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fedal.pools import PoolError, Pools

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- one row per paid label, pos keeps the order in which labels were paid (Pools.labeled order)
CREATE TABLE IF NOT EXISTS labels (
    pos         INTEGER PRIMARY KEY AUTOINCREMENT,
    idx         INTEGER NOT NULL UNIQUE,
    label       INTEGER NOT NULL,
    al_round    INTEGER NOT NULL,
    strategy    TEXT    NOT NULL,
    acquired_at REAL    NOT NULL
);
-- the model's logits at labeling time, for the continual-training modes, as float64 bytes
CREATE TABLE IF NOT EXISTS logits (
    idx    INTEGER PRIMARY KEY,
    width  INTEGER NOT NULL,
    values_f64 BLOB NOT NULL
);
-- one row per AL round this client acquired in: 'pending' (points chosen, oracle not yet
-- answered) or 'committed' (labels stored in the same transaction that set this state)
CREATE TABLE IF NOT EXISTS acquisitions (
    al_round     INTEGER PRIMARY KEY,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'committed')),
    strategy     TEXT    NOT NULL,
    n_points     INTEGER NOT NULL,
    chosen_at    REAL    NOT NULL,
    committed_at REAL
);
-- the points chosen for a pending acquisition, in the order the strategy returned them
CREATE TABLE IF NOT EXISTS chosen (
    al_round INTEGER NOT NULL,
    pos      INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    PRIMARY KEY (al_round, pos)
);
"""


class StoreError(PoolError):
    """The pool store cannot be used as asked (foreign or corrupt file, invalid acquisition)."""


@dataclass(frozen=True)
class Acquisition:
    """The outcome of one AL round's acquisition on this client."""

    al_round: int
    indices: np.ndarray  # int64, in the order the point strategy chose them
    labels: np.ndarray  # int64, the oracle's answers
    paid_now: bool  # False: the round was already committed and nothing was asked or paid


def _keep_hint(n_labels: int | None) -> str:
    held = "it may hold paid labels" if n_labels is None else f"it holds {n_labels} paid labels"
    return (f"{held}: do not delete it; restore it (with its -wal file) from a backup, or give "
            "this client a new state directory to start a new experiment")


class PoolStore:
    """The durable labeled/unlabeled pools of one client of one experiment.

    ``PoolStore(path, experiment_id, client_id, n_points, data_fingerprint)`` creates the file
    if absent, otherwise checks that it belongs to exactly this experiment, client and data.
    """

    def __init__(self, path: str | os.PathLike, experiment_id: str, client_id: str, n_points: int,
                 data_fingerprint: str, *, lock_timeout: float | None = None) -> None:
        self.path = Path(path)
        self.identity = {"experiment_id": str(experiment_id), "client_id": str(client_id),
                         "n_points": str(int(n_points)), "data_fingerprint": str(data_fingerprint)}
        for key, value in self.identity.items():
            if not value:
                raise StoreError(f"pool store {self.path}: {key} must not be empty")
        if int(n_points) < 0:
            raise StoreError(f"pool store {self.path}: n_points = {n_points} must be >= 0")
        self.n_points = int(n_points)
        self.lock_timeout = lock_timeout
        self._mutex = threading.Lock()  # one connection; handlers may run on several threads
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_header()
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # journal_mode is a property of the file (kept once set); synchronous is per connection
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"pool store {self.path}: SQLite refused WAL mode ({mode}); "
                                 "put the state directory on a local disk")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._init_or_verify()
        except sqlite3.OperationalError as e:
            self._close_quietly()
            if "locked" not in str(e):
                raise StoreError(f"pool store {self.path} cannot be opened ({e}); {_keep_hint(None)}") from None
            raise StoreError(f"pool store {self.path} stayed locked by another process for "
                             f"{BUSY_TIMEOUT_MS // 1000} s; retry, or stop the process that holds it") from None
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise StoreError(f"pool store {self.path} is damaged or not a readable SQLite database ({e}); "
                             f"{_keep_hint(None)}") from None
        except StoreError:
            self._close_quietly()
            raise

    # ------------------------------------------------------------------ opening
    def _check_header(self) -> None:
        # sqlite3 only notices a foreign file at the first query, with a terse message; a file
        # that is neither empty nor SQLite is most likely a wrong path, so say so plainly
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                head = f.read(16)
            if head != b"SQLite format 3\x00":
                raise StoreError(f"pool store {self.path} is not an SQLite database (its first bytes "
                                 f"are {head[:16]!r}); check the state-dir path; {_keep_hint(None)}")

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so two writers
        never both read-then-write on a stale view."""
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def _init_or_verify(self) -> None:
        with self._tx() as db:
            has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            n_tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if not has_meta and n_tables > 0:
                raise StoreError(f"pool store {self.path} is an SQLite database but not a fedal pool "
                                 "store (no meta table); check the state-dir path")
            if not has_meta:
                # statement by statement: executescript would commit the open transaction first
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                rows = {"schema_version": str(SCHEMA_VERSION), **self.identity,
                        "created_at": repr(time.time())}
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(rows.items()))
                return
        self._verify()

    def _verify(self) -> None:
        p = self.path
        ok = self._read("PRAGMA integrity_check")
        if [r[0] for r in ok] != ["ok"]:
            detail = "; ".join(str(r[0]) for r in ok[:3])
            raise StoreError(f"pool store {p} fails SQLite's integrity check ({detail}); {_keep_hint(None)}")
        meta = dict(self._read("SELECT key, value FROM meta"))
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"pool store {p} has schema version {version!r}; this fedal reads version "
                             f"{SCHEMA_VERSION}: open it with the fedal version that wrote it; it may hold "
                             "paid labels: do not delete it")
        n_labels = self._read("SELECT count(*) FROM labels")[0][0]
        names = {"experiment_id": "experiment", "client_id": "client", "n_points": "number of points",
                 "data_fingerprint": "data fingerprint"}
        shown = (lambda k, v: v if k == "n_points" else repr(v))
        wrong = [f"{names[k]} is {shown(k, meta.get(k))} there but {shown(k, v)} here"
                 for k, v in self.identity.items() if meta.get(k) != v]
        if wrong:
            raise StoreError(
                f"pool store {p} belongs to another experiment, client or data set: {'; '.join(wrong)}. "
                "If this site's data changed, restore the data the labels were paid for; "
                f"{_keep_hint(n_labels)}")
        bad = self._read("SELECT idx FROM labels WHERE idx < 0 OR idx >= ? ORDER BY pos LIMIT 5",
                         (self.n_points,))
        if bad:
            raise StoreError(f"pool store {p} is corrupt: labeled index {bad[0][0]} lies outside "
                             f"0..{self.n_points - 1}; {_keep_hint(n_labels)}")
        dup = self._read("SELECT idx, count(*) FROM labels GROUP BY idx HAVING count(*) > 1 LIMIT 5")
        if dup:
            raise StoreError(f"pool store {p} is corrupt: index {dup[0][0]} is labeled {dup[0][1]} times; "
                             f"{_keep_hint(n_labels)}")
        orphan = self._read("SELECT l.al_round FROM labels l LEFT JOIN acquisitions a ON a.al_round = l.al_round "
                            "WHERE a.state IS NOT 'committed' LIMIT 1")
        if orphan:
            raise StoreError(f"pool store {p} is corrupt: labels of AL round {orphan[0][0]} have no committed "
                             f"acquisition; {_keep_hint(n_labels)}")
        stray = self._read("SELECT c.al_round, c.idx FROM chosen c LEFT JOIN acquisitions a ON a.al_round = c.al_round "
                           "WHERE a.state IS NOT 'pending' OR c.idx < 0 OR c.idx >= ? LIMIT 1", (self.n_points,))
        if stray:
            raise StoreError(f"pool store {p} is corrupt: a chosen point ({stray[0][1]}, AL round {stray[0][0]}) "
                             f"does not belong to a pending acquisition or lies out of range; {_keep_hint(n_labels)}")
        loose = self._read("SELECT g.idx FROM logits g LEFT JOIN labels l ON l.idx = g.idx "
                           "WHERE l.idx IS NULL OR length(g.values_f64) != 8 * g.width LIMIT 1")
        if loose:
            raise StoreError(f"pool store {p} is corrupt: stored logits of point {loose[0][0]} have no label "
                             f"or a wrong size; {_keep_hint(n_labels)}")

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def __enter__(self) -> "PoolStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        rows = self._read("SELECT idx, label FROM labels WHERE al_round = ? ORDER BY pos", (int(al_round),))
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
                               "VALUES (?, 'pending', ?, ?, ?)", (r, str(strategy), len(chosen), time.time()))
                    db.executemany("INSERT INTO chosen(al_round, pos, idx) VALUES (?, ?, ?)",
                                   [(r, k, int(i)) for k, i in enumerate(chosen)])
            else:
                strategy = self._read("SELECT strategy FROM acquisitions WHERE al_round = ?", (r,))[0][0]
            labels = self._validate_labels(label_fn(chosen.copy()), chosen, r)
            now = time.time()
            with self._tx() as db:  # every label of the batch, or none of them
                db.executemany("INSERT INTO labels(idx, label, al_round, strategy, acquired_at) VALUES (?, ?, ?, ?, ?)",
                               [(int(i), int(v), r, str(strategy), now) for i, v in zip(chosen, labels)])
                db.execute("DELETE FROM chosen WHERE al_round = ?", (r,))
                db.execute("UPDATE acquisitions SET state = 'committed', committed_at = ? WHERE al_round = ?",
                           (now, r))
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
        return idx

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
