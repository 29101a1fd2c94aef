"""The site's pool store, ``PoolStore``: one SQLite file per client of an experiment, at
``site_store_path``, split by job into ``Database`` (the file, its schema, migrations and
identity, ``fedal.store.database``), ``Labels`` (the labeled pool and paid acquisitions),
``Budget`` (budget, grants, notes), ``QueryPool`` (query pool and reserve) and ``Annotation``
(annotators' actions and progress). Paid-label code changes rarely, annotation code often: a
change to the labeling page touches ``fedal.store.annotation``, not the code that guards paid
labels."""

from __future__ import annotations

import os
from pathlib import Path

from fedal.store.annotation import Annotation
from fedal.store.budget import Budget
from fedal.store.database import Database, StoreError
from fedal.store.labels import Labels
from fedal.store.queries import QueryPool


class PoolStore(Annotation, QueryPool, Budget, Labels, Database):
    """The durable labeled/unlabeled pools of one client of one experiment, with its budget and
    query pool (schema version 3; the rules: ``fedal.store.database``'s docstring).

    ``PoolStore(path, experiment_id, client_id, n_points, data_fingerprint)`` creates the file
    if absent, otherwise checks that it belongs to exactly this experiment, client and data.
    """


def site_store_path(state_dir: str | os.PathLike, experiment_id: str, client_id: str) -> Path:
    """Where a site's pool store lives: ``<state-dir>/pools/<experiment id>/<client id>.sqlite``.

    The one definition of the path: the ClientApp (``fedal.store.node_pool_store``) and the
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
