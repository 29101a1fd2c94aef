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

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from fedal.pools import PoolError

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


class StoreError(PoolError):
    """The pool store cannot be used as asked (foreign or corrupt file, invalid acquisition)."""


class QueryClosed(StoreError):
    """The query was labeled with another answer, withdrawn or skipped: nothing was paid."""


class BudgetSpent(StoreError):
    """The site's label budget is spent: nothing was paid, and open queries were withdrawn."""


def _keep_hint(n_labels: int | None) -> str:
    held = "it may hold paid labels" if n_labels is None else f"it holds {n_labels} paid labels"
    return (f"{held}: do not delete it; restore it (with its -wal file) from a backup, or give "
            "this client a new state directory to start a new experiment")


class Database:
    """The file of a site's pool store: the connection, its transactions, the schema and its
    migrations, and the identity check (``fedal.store.PoolStore`` adds the jobs).

    ``Database(path, experiment_id, client_id, n_points, data_fingerprint)`` creates the file
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

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
