"""Local-batch selection by diffusion of entropy on the client's point graph (docs/method.md, "Local batch"), the
point-level half of seeds/001's algorithm. The graph, impact and greedy rule live in
fedal.diffusion (shared with client selection, docs/method.md, "Impact, score, greedy"); this module only builds its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal import uncertainty as measures

from .base import LocalView, Strategy, register

_SPACES = ("embedding", "input")


@register("diffusion")
@dataclass(frozen=True)
class LocalDiffusion(Strategy):
    """docs/method.md, "Local batch": nodes L_z ∪ U_z, features = global-model embeddings (space="embedding", default)
    or flattened raw inputs (space="input", the paper's ‖x_i − x_j‖; needs view.inputs); values
    k(x) = global-model entropy on unlabeled nodes and 0 on labeled nodes (their uncertainty is
    resolved); mutual kNN with k neighbours, δ = delta, H = steps; greedy n points by
    fedal.diffusion.select_points. Deterministic: rng is not used.
    Utility = the score s = k/std(k) + v/std(v) (Eq. 12) of each pick when it was made."""

    space: str = "embedding"
    k: int = 7
    delta: float = 0.1
    steps: int = 5

    config_keys = ("local-k", "local-space", "delta", "diffusion-steps")

    @classmethod
    def params_from_config(cls, cfg) -> dict:
        return {"k": cfg.local_k, "delta": cfg.delta, "steps": cfg.diffusion_steps, "space": cfg.local_space}

    def __post_init__(self):
        if self.space not in _SPACES:
            raise ValueError(f"diffusion: space must be one of {_SPACES}; got {self.space!r}")
        for name in ("k", "steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"diffusion: {name} must be a positive integer; got {v!r}")
        if not isinstance(self.delta, (int, float)) or not self.delta > 0:
            raise ValueError(f"diffusion: delta must be a number > 0; got {self.delta!r}")

    def _select(self, view: LocalView, pool, n, rng):
        # Lazy import: fedal.diffusion pulls in scipy.sparse graph code that the other
        # strategies do not need.
        from fedal.diffusion import select_points

        if self.space == "embedding":
            features = view.embeddings
        else:
            if view.inputs is None:
                raise ValueError("diffusion with space='input' needs view.inputs")
            features = np.asarray(view.inputs, dtype=np.float64).reshape(view.n_points, -1)
        values = measures.entropy(view.probs)
        values[view.labeled] = 0.0
        batch = select_points(
            features, values, view.labeled, n=n, k=self.k, delta=self.delta, steps=self.steps,
            return_scores=True,
        )
        return np.asarray(batch.order, dtype=np.int64), np.asarray(batch.chosen_scores)
