"""Where a client worker keeps its pools between messages: one ``ClientPoolStore`` protocol and
its two backends, the node's memory (simulation: Flower's ``context.state``) and the site's
SQLite store (``fedal.store.PoolStore``, a state dir's). The worker
(``fedal.client.ClientWorker``) talks to the protocol only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from fedal.pools import Pools
from fedal.store.database import StoreError
from fedal.store.labels import Acquisition
from fedal.store.pool_store import PoolStore, site_store_path


class ClientPoolStore(Protocol):
    """Where a client keeps its pools between messages. ``save`` must be atomic: the pools hold
    paid labels, and a crash mid-write must leave the previous state readable."""

    def load(self) -> Pools | None:
        """The stored pools, or None when nothing is stored yet."""

    def save(self, pools: Pools) -> None:
        """Store ``pools`` (what training recorded in them: the continual modes' logits)."""

    def acquire(self, al_round: int, choose_fn: Callable[[Pools], Sequence[int]],
                label_fn: Callable[[np.ndarray], Sequence[int]], *, strategy: str, pools: Pools) -> Acquisition:
        """AL round ``al_round``'s labels, paid at most once: ``choose_fn(pools)`` picks the
        points, ``label_fn(indices)`` labels them; a round already paid returns its points and
        labels without asking either again (the server resends when a reply is lost).
        ``pools``: the caller's current pools."""

    @property
    def database(self) -> PoolStore | None:
        """The site's SQLite store, where its labeling page and query pool live (None in memory)."""


class MemoryPoolStore:
    """Pools kept as a dict in a mapping owned by the caller (Flower: the node's
    ``context.state``, fedal/client_app.py)."""

    database = None

    def __init__(self, records: dict | None = None, key: str = "fedal.pools", wrap=dict):
        self.records = {} if records is None else records
        self.key = key
        self.wrap = wrap  # how a dict is stored in ``records`` (Flower wants a ConfigRecord)

    def load(self) -> Pools | None:
        if self.key not in self.records:
            return None
        return Pools.from_dict(dict(self.records[self.key]))

    def save(self, pools: Pools) -> None:
        # one assignment of a freshly built record: a reader sees the old pools or the new ones
        self.records[self.key] = self.wrap(pools.to_dict())

    def acquire(self, al_round, choose_fn, label_fn, *, strategy: str = "", pools: Pools) -> Acquisition:
        if al_round in pools.acquired_round:
            # a retried message of a round this client already paid for: the same points, not paid
            # again (no client is asked twice in a round otherwise: top-ups go to clients not asked yet)
            paid = np.asarray(pools.acquired_round) == al_round
            return Acquisition(al_round, np.asarray(pools.labeled, dtype=np.int64)[paid],
                               np.asarray(pools.labels, dtype=np.int64)[paid], paid_now=False)
        chosen = choose_fn(pools)
        labels = label_fn(chosen)
        pools.add(chosen, labels, al_round)
        self.save(pools)
        return Acquisition(al_round, chosen, labels, paid_now=True)


class DurablePoolStore:
    """The ``ClientPoolStore`` protocol over the site's SQLite store (``fedal.store.PoolStore``).

    Labels enter it only through ``acquire`` (one transaction per AL round, committed before
    the reply that reports them, idempotent per round); ``save`` writes the stored logits of the
    continual modes and refuses pools whose labels differ from the committed ones."""

    def __init__(self, db: PoolStore):
        self.db = db

    @property
    def database(self) -> PoolStore:
        return self.db

    def load(self) -> Pools:
        return self.db.pools()

    def save(self, pools: Pools) -> None:
        stored = self.db.pools_dict()
        committed = dict(zip(stored["labeled"], stored["labels"]))
        # labels paid since these pools were read (on the labeling page, while this client
        # trained) are no conflict; a label these pools hold that the store does not is one
        if any(committed.get(int(i)) != int(v) for i, v in zip(pools.labeled, pools.labels)):
            raise StoreError(f"pool store {self.db.path}: labels are committed only by an acquisition or a "
                             "labeling page; these pools hold labels the store does not")
        old = dict(zip(stored["logit-index"], _chunks(stored["logits"], len(stored["logit-index"]))))
        changed = sorted(i for i, row in pools.logits.items() if old.get(int(i)) != list(row))
        if changed:
            self.db.set_logits(changed, np.asarray([pools.logits[i] for i in changed], dtype=np.float64))

    def acquire(self, al_round, choose_fn, label_fn, *, strategy: str = "", pools: Pools | None = None) -> Acquisition:
        # the round's choice and labels are committed in the store before this returns, and a
        # retried or resumed round returns them without paying again; the store reads its own
        # pools under its lock (``pools`` is not used)
        return self.db.acquire(al_round, choose_fn, label_fn, strategy=strategy)


def _chunks(flat: list, n: int) -> list[list]:
    if n == 0:
        return []
    w = len(flat) // n
    return [list(flat[k * w:(k + 1) * w]) for k in range(n)]


_OPEN_STORES: dict[tuple, DurablePoolStore] = {}


def node_state_dir(node_config: dict) -> Path | None:
    """The node's state directory: node config ``state-dir``, else ``FEDAL_STATE_DIR`` (else None)."""
    d = str(node_config.get("state-dir", "") or os.environ.get("FEDAL_STATE_DIR", ""))
    return Path(d).expanduser() if d else None


def node_pool_store(data, state_dir: Path | None) -> DurablePoolStore | None:
    """The durable pools of a client (``data``: its ``fedal.client_data.ClientData``):
    ``<state-dir>/pools/<experiment id>/<client id>.sqlite`` (None without a state dir). One
    open connection per file and process."""
    if state_dir is None:
        return None
    exp = data.cfg.experiment
    path = site_store_path(state_dir, exp, data.client_id)  # the labeling page opens the same file
    key = (str(path.resolve()), exp, data.client_id, len(data.x), data.fingerprint)
    if key not in _OPEN_STORES:
        _OPEN_STORES[key] = DurablePoolStore(PoolStore(path, exp, data.client_id, len(data.x), data.fingerprint))
    return _OPEN_STORES[key]
