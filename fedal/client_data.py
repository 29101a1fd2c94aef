"""A client's private data: a simulated client's partition of a benchmark data set, or a site's
own files (node config ``data-path``), with its stable client id and the fingerprint its pool
store checks (``fedal.client.ClientWorker`` works on it). ``x`` and ``y`` never leave the
client."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedal.config import Config
from fedal.store.backends import node_state_dir


@dataclass
class ClientData:
    cfg: Config
    partition_id: int
    x: np.ndarray  # private inputs (or their frozen-backbone features): never put into a reply
    y: np.ndarray | None  # private labels, the oracle's answers (None: a site without labels)
    num_classes: int
    input_shape: tuple[int, ...]
    device: torch.device
    # the client's stable name, sent with every reply so the server can follow a client across
    # node ids (a restarted SuperNode may get a new one); a site's node config names it, a
    # simulated client is its partition id
    client_id: str = ""
    fingerprint: str = ""  # hash of the inputs and their order (the pool store checks it)
    source: str = ""  # where the data came from, for error messages

    def __post_init__(self):
        if not self.client_id:
            self.client_id = str(self.partition_id)
        if not self.fingerprint:
            self.fingerprint = data_fingerprint(self.x)
        if not self.source:
            self.source = f"partition {self.partition_id} of {self.cfg.dataset}"


def data_fingerprint(x: np.ndarray) -> str:
    """The identity of a client's inputs and their order in its pool store (``fedal.store``: a
    store refuses other data). Stores on disk hold this SHA-256 form, so it stays as it is; the
    feature cache keys its files by another digest (``fedal.feature_cache.array_fingerprint``)."""
    import hashlib

    h = hashlib.sha256(b"fedal-array-v1\n")
    h.update(f"{x.dtype.str} {x.shape}\n".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return "sha256:" + h.hexdigest()[:32]


@functools.lru_cache(maxsize=256)
def _client_data(run_config_items: tuple, partition_id: int, num_partitions: int,
                 cache: str = "") -> ClientData:
    from fedal.devices import resolve_device

    cfg = Config.from_run_config(dict(run_config_items))
    if cache:
        from fedal.data.cache import cached_partition

        x, y, num_classes = cached_partition(Path(cache), cfg, partition_id, num_partitions)
    else:
        from fedal.data import client_data, load_dataset

        x, y = client_data(cfg, partition_id, num_partitions)
        num_classes = load_dataset(cfg.dataset, cfg.data_root).num_classes
    if cfg.freeze_backbone:
        from fedal.data import model_inputs

        x = model_inputs(cfg, x, partition_id)
    return ClientData(cfg, partition_id, x, y, num_classes, tuple(x.shape[1:]), resolve_device(cfg.device))


def load_client_data(run_config: dict, partition_id: int, num_partitions: int,
                     cache_dir: str | Path | None = None) -> ClientData:
    """A simulated client's private data: partition ``partition_id`` of the run's benchmark data
    set (cached in memory per run config and partition, and, with ``cache_dir``, as .npy files
    there, so that a deployed ClientApp process need not import the data set loaders)."""
    return _client_data(tuple(sorted(run_config.items())), partition_id, num_partitions,
                        str(cache_dir) if cache_dir else "")


class NodeConfigError(ValueError):
    """The SuperNode's node config cannot be used; the message names the key."""


def load_node_data(run_config: dict, node_config: dict) -> ClientData:
    """The data of the client a SuperNode's node config describes.

    - ``data-path`` (a site's own data, ``fedal.data.site``): needs ``client-id`` and
      ``state-dir``; ``partition-id`` is optional (the server's order of clients).
    - otherwise ``partition-id``/``num-partitions`` (simulation, or a benchmark partition).
    With a state dir, decoded data is cached there (``<state-dir>/cache``)."""
    nc = dict(node_config)
    state_dir = node_state_dir(nc)
    if not nc.get("data-path"):
        cache = state_dir / "cache" if state_dir is not None else None
        return load_client_data(run_config, int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1)),
                                cache)
    for key in ("client-id", "state-dir"):
        if not str(nc.get(key, "")).strip():
            raise NodeConfigError(
                f"node config has data-path = {nc['data-path']!r} but no {key}: start the SuperNode with "
                f"--node-config 'data-path=\"...\" client-id=\"<site name>\" state-dir=\"<local folder>\"' "
                f"({'the stable name the server knows this site by' if key == 'client-id' else 'where its paid labels are kept'})")
    return _site_data(tuple(sorted(run_config.items())), str(nc["data-path"]), str(nc["client-id"]),
                      str(Path(str(nc["state-dir"])).expanduser()), nc.get("partition-id"))


@functools.lru_cache(maxsize=16)
def _site_data(run_config_items: tuple, data_path: str, client_id: str, state_dir: str,
               partition_id) -> ClientData:
    from fedal.data.cache import cached_site_data
    from fedal.data.site import check_site_matches
    from fedal.devices import resolve_device

    cfg = Config.from_run_config(dict(run_config_items))
    site = cached_site_data(data_path, client_id, Path(state_dir) / "cache")
    num_classes = check_site_matches(site, cfg.dataset)
    pid = int(partition_id) if partition_id not in (None, "") else site_partition_id(client_id)
    x = site.x
    if cfg.freeze_backbone:
        from fedal.data import model_inputs

        x = model_inputs(cfg, x, f"site-{client_id}")
    return ClientData(cfg, pid, x, site.y, num_classes, tuple(x.shape[1:]), resolve_device(cfg.device),
                      client_id=client_id, fingerprint=site.fingerprint, source=str(site.path))


def site_partition_id(client_id: str) -> int:
    """A site's number in the server's client order when its node config gives no partition-id:
    a stable hash of its client id (distinct sites get distinct numbers but for a 1 in 2^31 chance)."""
    import zlib

    return zlib.crc32(client_id.encode()) & 0x7FFFFFFF
