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

Asynchronous labeling (issue #14, SPEC §6): beside the labeled pool the store keeps a *query
pool*, the points chosen for labeling, each tagged with the model version and strategy that chose
it, and optionally the model's guess and confidence at query time (a labeling page shows them
without a model). Annotators (people on the labeling page, simulated ones) take queries and
return labels while training and selection go on:

- ``add_queries`` fills the pool (a client refills it with its latest model when it runs low;
  ``candidates`` are the points it may choose from); ``next_query(annotator)`` claims the next
  open query under a lease, so two annotators are never shown the same point while the lease
  holds; ``submit_label`` pays it; ``skip``, ``undo_last`` and ``withdraw_open`` close, reopen and
  retire queries; ``progress`` counts everything against the budget.
- Budgets stay exact: a query is paid once, when its label is committed, in ONE transaction that
  moves the query to 'labeled' and inserts the label row (a partial unique index allows one
  labeled query per point, and the labels table one label per point). A second submit of the same
  query returns the committed label without paying. The transaction that spends the last unit
  of the budget withdraws every query still open; withdrawn queries are never paid.
- The training step reads "whatever is labeled now" with ``labeled_arrays``/``pools``: a label
  paid through a query carries the query's model version as its AL round.
- The *reserve* (schema version 3) lets the pool be refilled between a client's messages without
  a model in the process that refills: the client writes, with each model it gets, the points
  its workers would pick next, ranked and tagged (``set_reserve``); the labeling page calls
  ``promote_reserve``, which opens the next of them when the pool runs low, under the same rules
  as ``add_queries`` (never a point twice, nothing once the budget is spent) and never more than
  the budget can still pay.

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

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 30_000
DEFAULT_LEASE_S = 600.0  # how long a claimed query stays reserved for its annotator
QUERY_STATES = ("open", "labeled", "withdrawn", "skipped")

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


# Version 2 (issue #14): the query pool. Added to a version-1 file by ``_migrate`` (from 1); a fresh
# file runs both scripts, so fresh and migrated files have the same tables.
_SCHEMA_V2 = """
-- the query pool: one row per point asked for. state: 'open' (waiting for or being labeled, a
-- live claim is claimed_by + lease_until), 'labeled' (paid: its label is the labels row of idx),
-- 'withdrawn' (retired unpaid: the budget was spent, a fresher model replaced it, or an
-- acquisition paid the point), 'skipped' (an annotator could not label it, unpaid)
CREATE TABLE IF NOT EXISTS queries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    idx           INTEGER NOT NULL,
    model_version INTEGER NOT NULL,
    strategy      TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('open', 'labeled', 'withdrawn', 'skipped')),
    created_at    REAL    NOT NULL,
    guess         INTEGER,
    confidence    REAL,
    claimed_by    TEXT,
    lease_until   REAL,
    closed_by     TEXT,
    closed_at     REAL
);
-- at most one open and at most one labeled query per point, whatever the writers do
CREATE UNIQUE INDEX IF NOT EXISTS queries_one_open ON queries(idx) WHERE state = 'open';
CREATE UNIQUE INDEX IF NOT EXISTS queries_one_labeled ON queries(idx) WHERE state = 'labeled';
CREATE INDEX IF NOT EXISTS queries_by_state ON queries(state, model_version, id)
"""


# Version 3: the reserve. Added to a version-2 file by ``_migrate`` (from 2; after the step from 1 for a
# version-1 file); a fresh file runs all three scripts.
_SCHEMA_V3 = """
-- the reserve: the next points the site's workers would pick after its open queries, ranked by
-- the latest model at the ClientApp's last message, in the order later refills would take them
-- (pos). The labeling page turns them into open queries between messages (promote_reserve). Its
-- settings (query-pool-low, query-pool-refill) are meta keys 'reserve:*'.
CREATE TABLE IF NOT EXISTS reserve (
    pos           INTEGER PRIMARY KEY,
    idx           INTEGER NOT NULL UNIQUE,
    model_version INTEGER NOT NULL,
    strategy      TEXT    NOT NULL,
    guess         INTEGER,
    confidence    REAL
)
"""


def _statements(script: str) -> list[str]:
    # statement by statement: executescript would commit the open transaction first. Comment
    # lines go first, so a ';' in a comment cannot split a statement.
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [st for st in code.split(";") if st.strip()]


def site_store_path(state_dir: str | os.PathLike, experiment_id: str, client_id: str) -> Path:
    """Where a site's pool store lives: ``<state-dir>/pools/<experiment id>/<client id>.sqlite``.

    The one definition of the path: the ClientApp (``fedal.client.node_pool_store``) and the
    labeling page (``fedal.annotate.app``) both call it, so started with the same ``state-dir``,
    experiment id and client id they open the same file. Deployed stores already live at this
    layout, so it must not change. Both ids name a folder or file, so each must be 1-64 letters,
    digits, '.', '_' or '-', starting with a letter or digit (``fedal.data.site.CLIENT_ID_PATTERN``);
    anything else is refused rather than mapped to some other name."""
    from fedal.data.site import CLIENT_ID_PATTERN

    for name, value in (("experiment-id", experiment_id), ("client-id", client_id)):
        if not CLIENT_ID_PATTERN.match(str(value)):
            raise StoreError(f"{name} {str(value)!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it names a folder or file of the state-dir)")
    return Path(state_dir).expanduser() / "pools" / str(experiment_id) / f"{client_id}.sqlite"


class StoreError(PoolError):
    """The pool store cannot be used as asked (foreign or corrupt file, invalid acquisition)."""


class QueryClosed(StoreError):
    """The query was labeled with another answer, withdrawn or skipped: nothing was paid."""


class BudgetSpent(StoreError):
    """The site's label budget is spent: nothing was paid, and open queries were withdrawn."""


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
                 data_fingerprint: str, *, lock_timeout: float | None = None,
                 clock: Callable[[], float] = time.time, durable: bool = True) -> None:
        self.path = Path(path)
        # durable=False (simulations only): synchronous=OFF, no fsync per commit, ~50x faster on a
        # busy disk; a crash of the machine (not of the process) may then lose recent commits
        self.durable = bool(durable)
        # the time stamps and query leases; a simulation passes its simulated clock
        self._clock = clock
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
            self._db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'OFF'}")
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
                for statement in _statements(_SCHEMA) + _statements(_SCHEMA_V2) + _statements(_SCHEMA_V3):
                    db.execute(statement)
                rows = {"schema_version": str(SCHEMA_VERSION), **self.identity,
                        "created_at": repr(self._clock())}
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(rows.items()))
                return
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema_version") == "1":
                self._migrate(db, meta, 1)
                meta["schema_version"] = "2"
            if meta.get("schema_version") == "2":
                self._migrate(db, meta, 2)
        self._verify()

    def _migrate(self, db: sqlite3.Connection, meta: dict, version: int) -> None:
        """Version ``version`` -> ``version`` + 1 inside the opening transaction: add that
        version's tables (2: the query pool's, 3: the reserve's); nothing else is touched. A file
        of another experiment, client or data set is refused before anything is written, and a
        failure rolls everything back, so the file stays a valid store of its version."""
        n_labels = db.execute("SELECT count(*) FROM labels").fetchone()[0]
        wrong = self._identity_mismatch(meta, n_labels)
        if wrong:
            raise StoreError(wrong)
        for statement in _statements({1: _SCHEMA_V2, 2: _SCHEMA_V3}[version]):
            db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                   (f"migrated_from_v{version}_at", repr(self._clock())))

    def _identity_mismatch(self, meta: dict, n_labels: int) -> str | None:
        names = {"experiment_id": "experiment", "client_id": "client", "n_points": "number of points",
                 "data_fingerprint": "data fingerprint"}
        shown = (lambda k, v: v if k == "n_points" else repr(v))
        wrong = [f"{names[k]} is {shown(k, meta.get(k))} there but {shown(k, v)} here"
                 for k, v in self.identity.items() if meta.get(k) != v]
        if not wrong:
            return None
        return (f"pool store {self.path} belongs to another experiment, client or data set: {'; '.join(wrong)}. "
                "If this site's data changed, restore the data the labels were paid for; "
                f"{_keep_hint(n_labels)}")

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
        wrong = self._identity_mismatch(meta, n_labels)
        if wrong:
            raise StoreError(wrong)
        bad = self._read("SELECT idx FROM labels WHERE idx < 0 OR idx >= ? ORDER BY pos LIMIT 5",
                         (self.n_points,))
        if bad:
            raise StoreError(f"pool store {p} is corrupt: labeled index {bad[0][0]} lies outside "
                             f"0..{self.n_points - 1}; {_keep_hint(n_labels)}")
        dup = self._read("SELECT idx, count(*) FROM labels GROUP BY idx HAVING count(*) > 1 LIMIT 5")
        if dup:
            raise StoreError(f"pool store {p} is corrupt: index {dup[0][0]} is labeled {dup[0][1]} times; "
                             f"{_keep_hint(n_labels)}")
        # a label is paid by a committed acquisition of its round, or by a labeled query
        orphan = self._read("SELECT l.al_round FROM labels l LEFT JOIN acquisitions a ON a.al_round = l.al_round "
                            "WHERE a.state IS NOT 'committed' "
                            "AND l.idx NOT IN (SELECT idx FROM queries WHERE state = 'labeled') LIMIT 1")
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
        unpaid = self._read("SELECT q.id, q.idx FROM queries q LEFT JOIN labels l ON l.idx = q.idx "
                            "WHERE q.state = 'labeled' AND l.idx IS NULL LIMIT 1")
        if unpaid:
            raise StoreError(f"pool store {p} is corrupt: query {unpaid[0][0]} is marked labeled but point "
                             f"{unpaid[0][1]} has no label; {_keep_hint(n_labels)}")
        outside = self._read("SELECT id, idx FROM queries WHERE idx < 0 OR idx >= ? LIMIT 1", (self.n_points,))
        if outside:
            raise StoreError(f"pool store {p} is corrupt: query {outside[0][0]} asks about point {outside[0][1]}, "
                             f"outside 0..{self.n_points - 1}; {_keep_hint(n_labels)}")
        astray = self._read("SELECT pos, idx FROM reserve WHERE idx < 0 OR idx >= ? LIMIT 1", (self.n_points,))
        if astray:
            raise StoreError(f"pool store {p} is corrupt: reserve entry {astray[0][0]} names point {astray[0][1]}, "
                             f"outside 0..{self.n_points - 1}; {_keep_hint(n_labels)}")
        budget = meta.get("budget")
        if budget is not None and (not budget.isdigit() or int(budget) < n_labels):
            raise StoreError(f"pool store {p} is corrupt: its budget {budget!r} is not a count of at least the "
                             f"{n_labels} paid labels; {_keep_hint(n_labels)}")

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

    # ------------------------------------------------------------------ the query pool (issue #14)
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
        """Points a new query must not ask about: labeled, in an open query, chosen by a pending
        acquisition, and (``skipped``) skipped by an annotator."""
        states = "('open', 'skipped')" if skipped else "('open')"
        return {r[0] for r in db.execute(f"SELECT idx FROM labels UNION SELECT idx FROM queries WHERE state IN "
                                         f"{states} UNION SELECT idx FROM chosen")}

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
        """The points a refill may choose from: unlabeled, not in an open query nor a pending
        acquisition, and (by default) never skipped by an annotator."""
        busy = "SELECT idx FROM labels UNION SELECT idx FROM queries WHERE state = 'open' UNION SELECT idx FROM chosen"
        if exclude_skipped:
            busy += " UNION SELECT idx FROM queries WHERE state = 'skipped'"
        mask = np.ones(self.n_points, dtype=bool)
        taken = [r[0] for r in self._read(busy)]
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

    def _spent(self, db: sqlite3.Connection) -> bool:
        budget = self._budget(db)
        return budget is not None and db.execute("SELECT count(*) FROM labels").fetchone()[0] >= budget

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

    def withdraw_open(self, *, older_than: int | None = None, reason: str = "withdrawn") -> int:
        """Retire open queries unpaid (all, or those chosen by a model version < ``older_than``,
        e.g. before a refill with a fresher model). Returns how many."""
        now = self._clock()
        where, args = ("", ()) if older_than is None else (" AND model_version < ?", (int(older_than),))
        with self._tx() as db:
            return db.execute("UPDATE queries SET state = 'withdrawn', closed_by = ?, closed_at = ?, "
                              f"claimed_by = NULL, lease_until = NULL WHERE state = 'open'{where}",
                              (str(reason), now, *args)).rowcount

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
