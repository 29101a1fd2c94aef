"""A client's labeled and unlabeled pools (docs/method.md, "Protocol").

The labeled pool L_z is the set of local indices an oracle has labeled, with the labels it
returned (and, for the continual-training modes, the model's logits at labeling time). The
unlabeled pool is the complement. Paid labels are precious: ``add`` refuses to label an index
twice, and the pool can be persisted atomically to a file (deployment: ``context.state`` lives
only in SuperNode memory and is lost on restart) and restored from it, with corruption detected.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedal.atomic import write_atomic


class PoolError(ValueError):
    """Invalid pool operation or state (double labeling, out-of-range index, corrupt file)."""


@dataclass
class Pools:
    size: int
    labeled: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    acquired_round: list[int] = field(default_factory=list)  # AL round each label was paid in
    # continual modes (DER/SD, seeds/002): the stored logits z' of labeled points, by local index;
    # they never leave the client
    logits: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.labeled) == len(self.labels) == len(self.acquired_round)):
            raise PoolError("labeled, labels and acquired_round must have equal lengths")
        if len(set(self.labeled)) != len(self.labeled):
            raise PoolError("the labeled pool holds an index twice")
        if self.labeled and not (0 <= min(self.labeled) and max(self.labeled) < self.size):
            raise PoolError(f"a labeled index lies outside 0..{self.size - 1}")

    # ------------------------------------------------------------------ views
    @property
    def labeled_mask(self) -> np.ndarray:
        m = np.zeros(self.size, dtype=bool)
        m[self.labeled] = True
        return m

    @property
    def unlabeled(self) -> np.ndarray:
        return np.flatnonzero(~self.labeled_mask)

    @property
    def n_labeled(self) -> int:
        return len(self.labeled)

    @property
    def n_unlabeled(self) -> int:
        return self.size - len(self.labeled)

    def labeled_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.labeled, dtype=np.int64), np.asarray(self.labels, dtype=np.int64)

    def as_of(self, al_round: int) -> "Pools":
        """A copy holding only the labels paid in AL rounds up to ``al_round``: the pools as an
        uninterrupted run saw them then. A run that crashed after an acquisition but before its
        checkpoint, and repeats that AL round on resume, finds the next round's labels already
        here (docs/method.md, "Failures and resume"). Read it; save the pools themselves."""
        keep = [i for i, r in enumerate(self.acquired_round) if r <= al_round]
        if len(keep) == len(self.labeled):
            return self
        idx = [self.labeled[i] for i in keep]
        return Pools(self.size, idx, [self.labels[i] for i in keep], [self.acquired_round[i] for i in keep],
                     {i: self.logits[i] for i in idx if i in self.logits})

    # ------------------------------------------------------------------ updates
    def add(self, indices, labels, al_round: int) -> None:
        idx = [int(i) for i in np.asarray(indices).ravel()]
        lab = [int(v) for v in np.asarray(labels).ravel()]
        if len(idx) != len(lab):
            raise PoolError(f"{len(idx)} indices but {len(lab)} labels")
        if len(set(idx)) != len(idx):
            raise PoolError("the same index appears twice in one acquisition")
        already = set(idx) & set(self.labeled)
        if already:
            raise PoolError(f"indices already labeled (a label would be paid twice): {sorted(already)[:10]}")
        bad = [i for i in idx if not 0 <= i < self.size]
        if bad:
            raise PoolError(f"indices outside 0..{self.size - 1}: {bad[:10]}")
        self.labeled += idx
        self.labels += lab
        self.acquired_round += [int(al_round)] * len(idx)

    # ------------------------------------------------------------------ (de)serialisation
    def set_logits(self, indices, logits) -> None:
        missing = set(int(i) for i in indices) - set(self.labeled)
        if missing:
            raise PoolError(f"logits are stored only for labeled points; not labeled: {sorted(missing)[:10]}")
        for i, row in zip(indices, np.asarray(logits, dtype=np.float64)):
            self.logits[int(i)] = [float(v) for v in row]

    def to_dict(self) -> dict:
        keys = sorted(self.logits)
        return {"size": self.size, "labeled": list(self.labeled), "labels": list(self.labels),
                "acquired_round": list(self.acquired_round), "logit-index": keys,
                "logits": [v for k in keys for v in self.logits[k]]}

    @classmethod
    def from_dict(cls, d: dict) -> "Pools":
        try:
            keys = [int(k) for k in d.get("logit-index", [])]
            flat = [float(v) for v in d.get("logits", [])]
            width = len(flat) // len(keys) if keys else 0
            if keys and width * len(keys) != len(flat):
                raise PoolError("stored logits do not divide evenly among their indices")
            logits = {k: flat[i * width:(i + 1) * width] for i, k in enumerate(keys)}
            return cls(int(d["size"]), [int(i) for i in d["labeled"]], [int(v) for v in d["labels"]],
                       [int(r) for r in d["acquired_round"]], logits)
        except (KeyError, TypeError) as e:
            raise PoolError(f"pool state is missing or malformed ({e!r})") from None

    def save(self, path: str | Path) -> None:
        """Atomic, checksummed write: a crash mid-write leaves the previous file intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.to_dict(), sort_keys=True)
        payload = json.dumps({"crc32": zlib.crc32(body.encode()), "pools": json.loads(body)})
        write_atomic(path, payload)

    @classmethod
    def load(cls, path: str | Path) -> "Pools":
        path = Path(path)
        try:
            outer = json.loads(path.read_text())
            body = json.dumps(outer["pools"], sort_keys=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PoolError(f"pool file {path} is unreadable or corrupt ({e.__class__.__name__}); "
                            "it holds paid labels: restore it from a backup rather than delete it") from None
        if zlib.crc32(body.encode()) != outer.get("crc32"):
            raise PoolError(f"pool file {path} fails its checksum; it holds paid labels: restore it "
                            "from a backup rather than delete it")
        return cls.from_dict(outer["pools"])
