"""Ranking strategies: random and the classic uncertainty measures of the global model f^r.

Each picks the n unlabeled points with the largest score (ties → lower index), so the pick
order is the ranking and the utilities are the scores themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal import uncertainty as measures

from ._geometry import top_n
from .base import LocalView, Strategy, available, register, strategy_class


class RankByScore(Strategy):
    """Shared ranking: subclasses only say how to score the pool from the model's probabilities
    (as in baal's heuristics). These scores are also the *uncertainty measures* an asynchronous
    site's query workers rank by (``async-workers``, ``uncertainty_measures``)."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _select(self, view: LocalView, pool, n, rng):
        scores = self.score(view.probs[pool])
        order = top_n(scores, n)
        return pool[order], scores[order]


@register("random")
@dataclass(frozen=True)
class RandomSampling(Strategy):
    """Uniformly random points. Utilities are the uniform keys in [0, 1) that ranked them, so
    the draw is reproducible from the rng and inspectable like any other score."""

    def _select(self, view, pool, n, rng):
        keys = rng.random(pool.size)
        order = top_n(keys, n)
        return pool[order], keys[order]


@register("entropy")
@dataclass(frozen=True)
class EntropySampling(RankByScore):
    """Ent (Ahmed et al. 2020 as used in seeds/001): largest predictive entropy −Σ p log p."""

    def score(self, probs):
        return measures.entropy(probs)


@register("margin")
@dataclass(frozen=True)
class MarginSampling(RankByScore):
    """Smallest gap between the two most probable classes. Utility = −(p_(1) − p_(2))."""

    def score(self, probs):
        return measures.margin(probs)


@register("least-confidence")
@dataclass(frozen=True)
class LeastConfidenceSampling(RankByScore):
    """Smallest top probability. Utility = 1 − max_j p_j."""

    def score(self, probs):
        return measures.least_confidence(probs)


def uncertainty_measures() -> tuple[str, ...]:
    """The registered point strategies that rank by a score of the model's probabilities alone
    (``RankByScore``), sorted: the measures an asynchronous site's workers may use
    (``async-workers``; ``fedal.async_labeling``). ``get(name).score(probs)`` is the measure."""
    return tuple(n for n in available() if issubclass(strategy_class(n), RankByScore))
