"""The server's checkpoint: everything the AL loop needs to continue a run after the last
completed AL round (docs/method.md, "Failures and resume").

One file in the run directory (``fedal.results.CHECKPOINT_FILE``), replaced atomically after
every AL round (``fedal.atomic``): a crash leaves the previous round's checkpoint or this
round's, never half of one. It holds the global weights, the AL state (per-client label counts,
the previous round's client entropies, the labeled set's class counts), the server's random
state (the numpy bit generator's state: the choices after a resume are the ones an uninterrupted
run makes), the rows so far, and the experiment's identity (config hash, seed) so that a resume
with another configuration is refused. A SHA-256 over all of it detects a damaged file.

``extra``: an optional JSON dict of loop-specific state, in the meta (so the digest covers it),
written only when given: the asynchronous loop's (strategies/async_policy.py: run token, run clock,
standing share, last replies). A checkpoint without it (the synchronous loop's, or one written
before it existed) loads with ``extra = None``, byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedal.atomic import write_atomic

FORMAT = 1
_W = "w:"  # prefix of the weight arrays' names in the npz


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or belongs to another experiment."""


@dataclass
class Checkpoint:
    al_round: int  # the last completed AL round
    weights: dict[str, np.ndarray]  # the global model after that round, in the model's key order
    clients: dict[str, tuple[int, int]]  # client id -> (|L|, |U|) after the round's acquisition
    prev_entropy: dict[str, float]
    labeled_per_class: list[int]
    rng_state: dict[str, Any]  # numpy bit_generator.state
    rows: list[dict]
    config_hash: str
    seed: int
    extra: dict[str, Any] | None = None  # loop-specific state (module docstring)


def _digest(meta: bytes, weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta)
    for k, v in weights.items():
        h.update(k.encode())
        h.update(str(v.dtype).encode() + str(v.shape).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def save(path: str | Path, ck: Checkpoint) -> None:
    meta = {"format": FORMAT, "al_round": ck.al_round, "clients": ck.clients,
            "prev_entropy": ck.prev_entropy, "labeled_per_class": ck.labeled_per_class,
            "rng_state": ck.rng_state, "rows": ck.rows, "config_hash": ck.config_hash,
            "seed": ck.seed, "weight_names": list(ck.weights)}
    if ck.extra is not None:  # absent otherwise: a sync checkpoint stays what it was
        meta["extra"] = ck.extra
    meta = json.dumps(meta, sort_keys=True).encode()
    arrays = {f"{_W}{i}": v for i, v in enumerate(ck.weights.values())}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8),
             digest=np.frombuffer(_digest(meta, ck.weights).encode(), dtype=np.uint8), **arrays)
    write_atomic(path, buf.getvalue())


def load(path: str | Path, config_hash: str, seed: int) -> Checkpoint:
    """The checkpoint at ``path``, checked to be intact and to belong to this experiment."""
    path = Path(path)
    fresh = "set resume = false to start the run afresh"
    if not path.exists():
        raise CheckpointError(f"resume = true but there is no checkpoint {path} (the run never completed "
                              f"an AL round, or ran in another run directory); {fresh}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta_bytes = z["meta"].tobytes()
            digest = z["digest"].tobytes().decode()
            meta = json.loads(meta_bytes)
            weights = {name: z[f"{_W}{i}"] for i, name in enumerate(meta["weight_names"])}
    except Exception as e:  # zip, npz, JSON or key errors: all mean the file is not ours or damaged
        raise CheckpointError(f"the checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                              f"delete it and {fresh}") from None
    if _digest(meta_bytes, weights) != digest:
        raise CheckpointError(f"the checkpoint {path} is corrupt (its checksum does not match its "
                              f"content); delete it and {fresh}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"the checkpoint {path} has format {meta.get('format')}, this fedal writes "
                              f"{FORMAT}; {fresh}")
    if meta["config_hash"] != config_hash or meta["seed"] != seed:
        raise CheckpointError(
            f"the checkpoint {path} belongs to another experiment (config hash {meta['config_hash']}, "
            f"seed {meta['seed']}; this run: {config_hash}, seed {seed}); resume with the run config "
            f"that wrote it, or {fresh}")
    return Checkpoint(al_round=int(meta["al_round"]), weights=weights,
                      clients={k: (int(a), int(b)) for k, (a, b) in meta["clients"].items()},
                      prev_entropy={k: float(v) for k, v in meta["prev_entropy"].items()},
                      labeled_per_class=[int(v) for v in meta["labeled_per_class"]],
                      rng_state=meta["rng_state"], rows=meta["rows"], config_hash=meta["config_hash"],
                      seed=int(meta["seed"]), extra=meta.get("extra"))
