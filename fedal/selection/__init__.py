"""Client selection: which clients spend labeling effort in an AL round (docs/method.md,
"Impact, score, greedy", "Client selection beyond the paper").

    from fedal import selection
    entry = selection.get("diffusion")          # what it reads: entry.probes, entry.needs_…
    params = entry.params(cfg)                  # its own parameters (a frozen dataclass)
    plan = selection.plan_round("diffusion", stats, rng, params, per_client=W, clients=V)

The registry lives in ``base``; a strategy module registers its ordering functions on import,
so every one is imported here (``paper``: the paper's strategies and fedal's balanced
diffusion; ``rules``: coverage and the selectors of the federated-learning literature;
``oracle``: a simulator-only yardstick that reads the clients' true class counts). Pure
numpy: no torch, no Flower.
"""

from .base import (
    GRAPH_KEYS,
    PROBE_KEYS,
    ClientStats,
    ClientStrategy,
    NoParams,
    allocate_budget,
    available,
    get,
    order_clients,
    plan_round,
    register,
    unregister,
)
from . import paper, rules, oracle  # noqa: E402,F401  (registration, in the order users see them)
from .paper import (  # noqa: E402
    CLIENT_GRAPH_KEYS,
    Q_RECORD_MAX_NODES,
    ClientGeometry,
    DiffusionParams,
    GraphParams,
    class_deficit_weights,
    diffusion_params,
    graph_diagnostics,
)
from .rules import BalancedDivFLParams, ClusteredParams, CoverageParams, CumulativeParams, MixBalanceParams, PowDParams  # noqa: E402

__all__ = [
    "CLIENT_GRAPH_KEYS", "GRAPH_KEYS", "PROBE_KEYS", "Q_RECORD_MAX_NODES", "ClientGeometry", "ClientStats",
    "BalancedDivFLParams", "ClientStrategy", "ClusteredParams", "CoverageParams", "CumulativeParams", "DiffusionParams", "GraphParams", "MixBalanceParams",
    "NoParams", "PowDParams",
    "allocate_budget", "available", "class_deficit_weights", "diffusion_params", "get", "graph_diagnostics",
    "order_clients", "plan_round", "register", "unregister",
]
