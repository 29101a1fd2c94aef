"""A site's durable pool store (paid labels in a SQLite database on the client machine) and the
stores a client worker keeps its pools in. ``from fedal.store import PoolStore, StoreError,
site_store_path`` is the API; the package splits it by job (``fedal.store.pool_store`` lists
them; the guarantees are in ``fedal.store.database``'s docstring)."""

from fedal.store.annotation import Progress, Submitted
from fedal.store.backends import (ClientPoolStore, DurablePoolStore, MemoryPoolStore, node_pool_store,
                                  node_state_dir)
from fedal.store.database import (BUSY_TIMEOUT_MS, DEFAULT_LEASE_S, QUERY_STATES, SCHEMA_VERSION, _SCHEMA,
                                  _SCHEMA_V2, _SCHEMA_V3, BudgetSpent, QueryClosed, StoreError, _statements)
from fedal.store.labels import Acquisition
from fedal.store.pool_store import PoolStore, site_store_path
from fedal.store.queries import Query, ReserveEntry

__all__ = [
    "BUSY_TIMEOUT_MS", "DEFAULT_LEASE_S", "QUERY_STATES", "SCHEMA_VERSION", "Acquisition", "BudgetSpent",
    "ClientPoolStore", "DurablePoolStore", "MemoryPoolStore", "PoolStore", "Progress", "Query", "QueryClosed",
    "ReserveEntry", "StoreError", "Submitted", "node_pool_store", "node_state_dir", "site_store_path",
    "_SCHEMA", "_SCHEMA_V2", "_SCHEMA_V3", "_statements",
]
