"""``freeze-backbone``: extract backbone features once per client, cache them on disk.

With a frozen backbone every AL round trains, probes and selects with the head only
(``FedALModel(Identity(out_dim), num_classes)``), so the backbone's features of a client's images
are a pure function of (backbone weights, input transform, images). They are computed once and
stored as ``.npy`` under the client's cache folder; the key hashes exactly those inputs (plus the
dataset name and the partition id, for readability and against accidental collisions), so a new
weights file, another normalisation or a different partition gives a different key and a fresh
extraction, never stale features.

Files per entry: ``<sha256>.npy`` (the array) and ``<sha256>.json`` (the key, shape, dtype and a
BLAKE2b digest of the array bytes). Both are written to a temporary file and renamed (atomic on
POSIX), the ``.json`` last, so it marks a complete entry. A file that is truncated, fails its digest
or does not match its key is reported with a :class:`FeatureCacheWarning` and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from fedal.atomic import write_atomic as _atomic_write

from fedal.devices import resolve_device

# Bump when the way features are computed changes (e.g. pooling, dtype): invalidates old caches.
FEATURE_FORMAT = 1


class FeatureCacheWarning(UserWarning):
    """A cache entry was unusable (corrupted, incomplete) and is being recomputed."""


# --------------------------------------------------------------------------- fingerprints

def _blake(chunks) -> str:
    h = hashlib.blake2b(digest_size=20)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def array_fingerprint(x: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (BLAKE2b: ~1 GB/s, so 150 MB of CIFAR in ~0.2 s)."""
    a = np.ascontiguousarray(x)
    return _blake([a.dtype.str.encode(), repr(a.shape).encode(), memoryview(a).cast("B")])


def _file_digest(path: str) -> str:
    def chunks():
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                yield block
    return _blake(chunks())


_file_memo: dict[tuple, str] = {}


def file_fingerprint(path: str | os.PathLike) -> str:
    """Digest of a file's contents, memoised per process on (path, size, mtime): a ClientApp
    asks for it every round, and hashing a 100 MB ResNet-50 file each time would be waste."""
    real = os.path.realpath(path)
    st = os.stat(real)
    memo_key = (real, st.st_size, st.st_mtime_ns)
    if memo_key not in _file_memo:
        _file_memo[memo_key] = _file_digest(real)
    return _file_memo[memo_key]


def state_dict_fingerprint(module_or_state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Digest of every parameter and buffer (name, dtype, shape, values), device-independent.

    This identifies randomly initialised backbones too, whose features depend on the seed.
    """
    sd = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state

    def chunks():
        for k in sorted(sd):
            t = sd[k].detach().cpu().contiguous()
            yield f"{k}|{t.dtype}|{tuple(t.shape)}|".encode()
            if t.numel():  # raw bytes of any dtype (bfloat16 has no numpy equivalent)
                yield memoryview(t.reshape(-1).view(torch.uint8).numpy())
    return _blake(chunks())


def backbone_identity(name: str, *, weights_path: str | os.PathLike | None = None,
                      backbone: nn.Module | None = None, transform: Any = None,
                      prefix: str | None = None) -> dict:
    """What the features depend on, on the model side.

    With a weights file, its content fingerprint (no model needs to be built to know the key);
    without one, the fingerprint of the backbone's parameters and buffers (a random
    initialisation is identified by its values, not by a seed). The transform's ``identity()``
    (mean, std, size) is part of it: other normalisation → other features.
    """
    ident: dict[str, Any] = {"backbone": name, "format": FEATURE_FORMAT}
    if weights_path:
        ident["weights_file"] = file_fingerprint(weights_path)
        if prefix is not None:
            ident["prefix"] = prefix
    elif backbone is not None:
        ident["state"] = state_dict_fingerprint(backbone)
    else:
        raise ValueError("backbone_identity needs weights_path or the backbone itself (a randomly "
                         "initialised backbone is identified by its parameters)")
    if transform is not None:
        ident["transform"] = transform.identity() if hasattr(transform, "identity") else repr(transform)
    return ident


def feature_key(backbone_id: Mapping, x: np.ndarray, *, dataset: str, partition: int | str) -> dict:
    """Cache key of the features of images ``x`` (one client's partition) under a backbone."""
    return {"model": dict(backbone_id), "dataset": dataset, "partition": partition,
            "data": array_fingerprint(x), "n": int(len(x))}


# --------------------------------------------------------------------------- extraction

def extract_features(backbone: nn.Module, x_uint8: np.ndarray, *, batch_size: int = 256,
                     device: str | torch.device = "cpu",
                     transform: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Features of uint8 images ``(N, H, W, C)`` → float32 ``(N, out_dim)``.

    Runs in eval mode (BatchNorm uses its running statistics) under ``torch.inference_mode``;
    the backbone's train/eval mode is restored afterwards. The backbone is moved to ``device``
    in place (as ``Module.to`` does). Each batch travels to the device as uint8 (4× less traffic
    than float) and ``transform`` runs there.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    dev = resolve_device(device) if isinstance(device, str) else device
    x_uint8 = np.asarray(x_uint8)
    if x_uint8.dtype != np.uint8:
        raise TypeError(f"extract_features expects uint8 images; got {x_uint8.dtype}")
    out_dim = int(backbone.out_dim)
    out = np.empty((len(x_uint8), out_dim), dtype=np.float32)
    was_training = backbone.training
    backbone.to(dev).eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(x_uint8), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x_uint8[s:s + batch_size]))
                xb = xb.to(dev, non_blocking=dev.type == "cuda")
                f = backbone(transform(xb))
                if f.dim() != 2 or f.shape[1] != out_dim:
                    raise ValueError(f"backbone returned shape {tuple(f.shape)}; expected (batch, {out_dim})")
                out[s:s + len(xb)] = f.float().cpu().numpy()
    finally:
        backbone.train(was_training)
    return out


# --------------------------------------------------------------------------- the cache

def _canonical(key: Mapping) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (Path, os.PathLike)):
            return os.fspath(o)
        raise TypeError(f"feature-cache key values must be JSON-like (str, int, float, bool, None, "
                        f"lists, dicts); got {type(o).__name__}. Fingerprint arrays with "
                        "array_fingerprint() instead of putting them in the key.")
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False, default=default)




class FeatureCache:
    """Disk cache of feature arrays under ``root`` (one folder per client is a good choice)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self.recovered = 0  # unusable entries that were recomputed

    def key_hash(self, key: Mapping) -> str:
        return hashlib.sha256(_canonical(key).encode()).hexdigest()

    def paths(self, key: Mapping) -> tuple[Path, Path]:
        h = self.key_hash(key)
        return self.root / f"{h}.npy", self.root / f"{h}.json"

    def _read(self, key: Mapping, npy: Path, meta: Path) -> np.ndarray | None:
        """The cached array, None on a clean miss; raises ValueError for an unusable entry."""
        if not meta.exists():
            if npy.exists():
                raise ValueError("array file present without its .json (interrupted write)")
            return None
        try:
            info = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable metadata ({e})") from e
        if info.get("key") != json.loads(_canonical(key)):
            raise ValueError("metadata belongs to another key")
        if not npy.exists():
            raise ValueError("array file missing")
        try:
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"unreadable array ({type(e).__name__}: {e})") from e
        if list(arr.shape) != info.get("shape") or arr.dtype.str != info.get("dtype"):
            raise ValueError(f"array is {arr.dtype.str}{list(arr.shape)}, metadata says "
                             f"{info.get('dtype')}{info.get('shape')}")
        if array_fingerprint(arr) != info.get("digest"):
            raise ValueError("array bytes do not match their digest")
        return arr

    def get_or_compute(self, key: Mapping, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The array cached under ``key``, or ``compute()``'s result, stored for next time."""
        npy, meta = self.paths(key)
        try:
            arr = self._read(key, npy, meta)
        except ValueError as e:
            warnings.warn(f"feature cache entry {npy} is unusable ({e}); recomputing", FeatureCacheWarning,
                          stacklevel=2)
            self.recovered += 1
            arr = None
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        arr = np.ascontiguousarray(compute())
        if arr.dtype == object:
            raise TypeError("compute() must return a numeric array, not dtype=object")
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        _atomic_write(npy, buf.getvalue())
        info = {"key": json.loads(_canonical(key)), "shape": list(arr.shape), "dtype": arr.dtype.str,
                "digest": array_fingerprint(arr)}
        _atomic_write(meta, json.dumps(info, indent=1, sort_keys=True).encode())
        return arr


def cached_features(cache: FeatureCache, x_uint8: np.ndarray, *, backbone_name: str,
                    weights: str | os.PathLike | None, transform, dataset: str, partition: int | str,
                    batch_size: int = 256, device: str | torch.device = "cpu", init_seed: int = 0,
                    backbone: nn.Module | None = None) -> np.ndarray:
    """One call for a ClientApp in ``freeze-backbone`` mode: this client's features, extracted at
    most once per (backbone, transform, data). On a hit no backbone is built.

    - ``weights`` given: the key holds the file's content fingerprint; the backbone is built and
      loaded only on a miss.
    - no ``weights``: a random initialisation under ``init_seed`` (every client must freeze the
      *same* network). It is keyed by (name, seed, torch and torchvision versions) — torchvision's
      initialisers are deterministic for a seed within a version — so that a hit does not need
      to build and hash a network (0.2-0.5 s per client and round).
    - ``backbone`` given (already built by the caller): keyed by its parameters and buffers.
    """
    from fedal.backbones import build_backbone

    if backbone is not None and not weights:
        ident = backbone_identity(backbone_name, backbone=backbone, transform=transform)
    elif weights:
        ident = backbone_identity(backbone_name, weights_path=weights, transform=transform)
    else:
        from fedal.compat import import_torchvision

        ident = {"backbone": backbone_name, "format": FEATURE_FORMAT, "init_seed": int(init_seed),
                 "torch": torch.__version__, "torchvision": import_torchvision().__version__,
                 "transform": transform.identity() if hasattr(transform, "identity") else repr(transform)}
    key = feature_key(ident, x_uint8, dataset=dataset, partition=partition)

    def compute() -> np.ndarray:
        net = backbone
        if net is None:
            net = build_backbone(backbone_name, weights or None, seed=None if weights else init_seed)
        return extract_features(net, x_uint8, batch_size=batch_size, device=device, transform=transform)

    return cache.get_or_compute(key, compute)
