"""Decoded data cached on a SuperNode's disk, so that each ClientApp process (Flower starts one
per message) maps ready arrays instead of importing data set loaders and decoding again.

``<state-dir>/cache/<kind>-<key>/`` holds ``x.npy``, ``y.npy`` (when there are labels) and
``meta.json``; arrays are opened with ``mmap_mode="c"``: pages are read on first touch, writable
copies on write, nothing written back. A cache entry is written to a temporary folder and
renamed into place, so a reader sees a whole entry or none; a damaged entry is rebuilt.

- A site's data (``fedal.data.site``) is keyed by the path and the size and modification time
  of every file under it: a changed file changes the key. The fingerprint the pool store checks
  is stored with the entry.
- A benchmark partition (simulation-style SuperNodes) is keyed by everything that decides it:
  data set, data root, partitioner and its parameters, seed, number of partitions and id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _read(entry: Path):
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        x = np.asarray(np.load(entry / "x.npy", mmap_mode="c", allow_pickle=False))
        y = np.asarray(np.load(entry / "y.npy", allow_pickle=False)) if meta.get("has_y") else None
        if len(x) != meta["n"] or (y is not None and y.shape != (len(x),)):
            return None
        return x, y, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(entry: Path, x: np.ndarray, y: np.ndarray | None, meta: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "x.npy", np.ascontiguousarray(x), allow_pickle=False)
        if y is not None:
            np.save(tmp / "y.npy", np.asarray(y, dtype=np.int64), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({**meta, "version": CACHE_VERSION, "n": int(len(x)),
                                                   "has_y": y is not None}))
        if entry.exists():  # a damaged entry (or a concurrent writer's): replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process renamed its copy first: keep that one
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stat_signature(path: Path) -> list:
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    sig = [str(path)]
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            sig.append([p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return sig


def cached_site_data(data_path: str | Path, client_id: str, cache_dir: Path):
    """``fedal.data.site.load_site_data(data_path, client_id)``, from the cache when the files
    are unchanged."""
    from fedal.data.site import SiteData, SiteDataError, check_client_id, load_site_data

    client_id = check_client_id(client_id)
    path = Path(data_path).expanduser()
    if not path.exists():
        raise SiteDataError(f"data-path {path} does not exist; give an .npz file or an image folder")
    entry = cache_dir / f"site-{_key(_stat_signature(path))}"
    hit = _read(entry)
    if hit is not None:
        x, y, meta = hit
        names = tuple(meta["class_names"]) if meta.get("class_names") is not None else None
        files = tuple(meta["files"]) if meta.get("files") is not None else None
        shape = tuple(meta["shape"]) if meta.get("shape") is not None else None
        return SiteData(path, x, y, names, meta["fingerprint"], client_id, files, shape)
    site = load_site_data(path, client_id)
    _write(entry, site.x, site.y, {"fingerprint": site.fingerprint, "path": str(path.resolve()),
                                   "class_names": list(site.class_names) if site.class_names else None,
                                   "files": list(site.files) if site.files else None,
                                   "shape": list(site.shape) if site.shape else None})
    return site


def cached_partition(cache_dir: Path, cfg, partition_id: int, num_partitions: int):
    """(x, y, number of classes) of partition ``partition_id`` of the run's data set."""
    key = {"dataset": cfg.dataset, "data-root": str(Path(cfg.data_root).resolve()) if cfg.data_root else "",
           "partition": cfg.partition, "dirichlet-alpha": cfg.dirichlet_alpha,
           "shard-class-fraction": cfg.shard_class_fraction, "seed": cfg.seed,
           "num-partitions": num_partitions, "partition-id": partition_id}
    entry = cache_dir / f"partition-{_key(key)}"
    hit = _read(entry)
    if hit is not None:
        x, y, meta = hit
        return x, y, int(meta["num_classes"])
    from fedal.data import client_data, load_dataset

    x, y = client_data(cfg, partition_id, num_partitions)
    num_classes = load_dataset(cfg.dataset, cfg.data_root).num_classes
    _write(entry, x, y, {"key": key, "num_classes": int(num_classes)})
    return x, y, num_classes
