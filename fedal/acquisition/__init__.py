"""Point (within-client) acquisition strategies behind one interface (docs/method.md, "Local batch", "Baselines and training modes").

    from fedal import acquisition
    strategy = acquisition.get("badge")                 # or get("hybrid", c=10), …
    if strategy.needs_local_model: ...                  # LoGo: train a local-only model first
    batch = strategy.select(view, n=200, rng=np.random.default_rng(seed))
    batch.indices, batch.utilities                      # pick order; score behind each pick

`available()` lists the names. A strategy module registers itself on import, so every module
is imported here.
"""

from .base import (
    LocalView,
    PoolExhausted,
    Selection,
    Strategy,
    available,
    from_config,
    get,
    register,
    strategy_class,
    unregister,
)
from . import ranking, boundary, diversity, logo, local_diffusion  # noqa: E402,F401  (registration)
from .ranking import RankByScore, uncertainty_measures  # noqa: E402

__all__ = [
    "LocalView",
    "PoolExhausted",
    "RankByScore",
    "Selection",
    "Strategy",
    "available",
    "from_config",
    "get",
    "strategy_class",
    "register",
    "uncertainty_measures",
    "unregister",
]
