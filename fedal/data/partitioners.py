"""A partitioner flwr-datasets does not have: every client the same size, class mix ~ Dir(α).

flwr-datasets' ``DirichletPartitioner`` draws, per *class*, how that class's points spread over the
clients; client sizes then follow the class draws (11 to 3,425 points per client on MNIST-1D at
α = 0.1, a quarter of them below the paper's W = 200). The paper's setting gives every client the
same amount of data and skews only its class mix, which is what ``partition = "dirichlet-equal"``
does (docs/method.md, "The paper's training regime"):

- each client z but the last gets s = ⌊N/M⌋ points, its class mix p_z ~ Dir(α·1);
- its class counts are drawn from p_z *without replacement* from what is left of each class: a
  multinomial draw over the classes that still hold points (p_z renormalised over them), capped at
  what each holds, repeated for the shortfall until the client has s points;
- the last client takes every point left.

Classes run short only towards the end (every client asks N/C points of each class in
expectation), so the last clients' mixes lean towards the classes left. Points within a class are
taken in a random order. Deterministic under ``seed``.
"""

from __future__ import annotations

import numpy as np
from flwr_datasets.partitioner import Partitioner


def dirichlet_equal_indices(labels, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices into ``labels`` for each client (see the module docstring)."""
    y = np.asarray(labels)
    if num_partitions < 1 or num_partitions > len(y):
        raise ValueError(f"num_partitions = {num_partitions} is invalid; valid: 1..{len(y)} (the points)")
    if not alpha > 0:
        raise ValueError(f"alpha = {alpha!r} is invalid; valid: a number > 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    taken = np.zeros(len(classes), dtype=np.int64)  # points already given out, per class
    size = len(y) // num_partitions
    parts: list[np.ndarray] = []
    for _ in range(num_partitions - 1):
        p = rng.dirichlet(np.full(len(classes), float(alpha)))
        counts = np.zeros(len(classes), dtype=np.int64)
        need = size
        while need > 0:
            room = np.array([len(pool) for pool in pools]) - taken - counts
            w = np.where(room > 0, p, 0.0)
            # α ≪ 1 puts (numerically) all of p on a few classes; once those are used up the rest
            # of the client comes from the classes left, in proportion to what they hold
            w = w / w.sum() if w.sum() > 0 else room / room.sum()
            draw = np.minimum(rng.multinomial(need, w), room)
            counts += draw
            need -= int(draw.sum())
        parts.append(np.concatenate([pool[t:t + k] for pool, t, k in zip(pools, taken, counts)]))
        taken += counts
    parts.append(np.concatenate([pool[t:] for pool, t in zip(pools, taken)]))
    return [np.sort(p).astype(np.int64) for p in parts]


class EqualSizeDirichletPartitioner(Partitioner):
    """flwr-datasets' interface over ``dirichlet_equal_indices`` (partitions built on first use)."""

    def __init__(self, num_partitions: int, partition_by: str, alpha: float, seed: int = 42):
        super().__init__()
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._alpha = alpha
        self._seed = seed
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def load_partition(self, partition_id: int):
        if self._indices is None:
            self._indices = dirichlet_equal_indices(self.dataset[self._partition_by], self._num_partitions,
                                                    self._alpha, self._seed)
        return self.dataset.select(self._indices[partition_id])
