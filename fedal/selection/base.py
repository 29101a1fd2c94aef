"""The client-strategy registry (docs/method.md, "Impact, score, greedy", "Baselines and training
modes") and what every strategy shares: one round's client statistics, the strategy's entry
(what it reads, its parameters) and the budget rule that turns an order of clients into a plan.

Every strategy returns an *ordering* of the eligible clients, best first; ``allocate_budget``
then walks that order to spend exactly V·W labels (docs/method.md, "Protocol", "equal budgets
with top-up"). Asking a strategy for the whole order is cheap (M is the number of clients) and
lets a client that runs out of unlabeled points hand its share to the next-best client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fedal.registry import Registry


@dataclass(frozen=True)
class ClientStats:
    """What clients reported in ``query.probe``: scalars and parameter sketches, no data."""

    entropy: np.ndarray                 # g(C_z): mean entropy over U_z (0 when U_z is empty)
    n_unlabeled: np.ndarray             # |U_z|
    embeddings: np.ndarray | None = None   # (M, T, D) pseudo-parameter updates m_t (rows of
    #                                        clients with |U_z| = 0 are ignored)
    prev_entropy: np.ndarray | None = None  # g^{r-1}; NaN where unknown
    predicted_mix: np.ndarray | None = None  # (M, C) mean softmax over U_z (balanced variant)
    labeled_per_class: np.ndarray | None = None  # (C,) labels paid so far, per class (aggregate)
    n_labeled: np.ndarray | None = None  # |L_z|: labels each client holds (from its acquire replies)
    # simulator only (``ClientStrategy.simulator_only``): each client's true class counts over U_z
    # and over L_z, (M, C), read by the in-process simulator from the clients' own pools
    # (simulations/inprocess.py). No message carries them; a server outside the simulator has none.
    true_unlabeled: np.ndarray | None = None
    true_labeled: np.ndarray | None = None

    @property
    def eligible(self) -> np.ndarray:
        return self.n_unlabeled > 0


@dataclass(frozen=True)
class NoParams:
    """The parameters of a strategy that reads nothing beyond the probe (and |U_z|)."""


@dataclass(frozen=True)
class ClientStrategy:
    """A ``client-strategy``: its ordering function and what it needs, declared once here so
    that the server loop, the clients' probe and the config ask the entry, never the name.

    - ``order(stats, rng, params, n, diagnostics)``: the eligible clients, best first.
    - ``probes``: reads g (mean entropy over U_z) from a probe after training; False: needs only
      |U_z|, which the server tracks from acquire replies (no probe message at all).
    - ``needs_pseudo_updates``: reads the client graph built from pseudo-parameter updates m_t,
      taken after each of the last ⌈T/4⌉ FL rounds.
    - ``needs_predicted_mix``: reads each client's mean prediction over U_z (C numbers).
    - ``needs_label_histogram``: reads the labeled set's class counts, which clients report only
      with ``report-label-histogram = true``.
    - ``config_keys``: run-config keys it reads; keys that no strategy of a run reads stay out of
      the run's hash (``fedal.config.experiment_key``).
    - ``simulator_only``: reads the clients' true class counts (``ClientStats.true_unlabeled``),
      which only the in-process simulator can give; the server loop refuses it anywhere else.
      Such a strategy is a yardstick (how far could client choice go?), never a method to deploy.
    - ``params``: builds the strategy's own parameters (a frozen dataclass) from a
      ``fedal.config.Config``; a strategy that reads none gets ``NoParams``.
    """

    name: str
    order: Callable[..., np.ndarray]
    probes: bool = True
    needs_pseudo_updates: bool = False
    needs_predicted_mix: bool = False
    needs_label_histogram: bool = False
    config_keys: tuple[str, ...] = ()
    simulator_only: bool = False
    params: Callable[[Any], Any] = lambda cfg: NoParams()


_REGISTRY: Registry[ClientStrategy] = Registry("client strategy",
                                                "client-strategy = {name!r} is not valid; valid values: {valid}")


def register(name: str, **declared: Any) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator adding an ordering function to the registry as client strategy ``name``.

    A strategy that reads the predicted mix reads ``predicted-mix`` too (how clients compute it,
    ``fedal.uncertainty.class_mix``): the key joins its ``config_keys`` here, once for all."""
    if declared.get("needs_predicted_mix") and MIX_KEY not in declared.get("config_keys", ()):
        declared = {**declared, "config_keys": (*declared.get("config_keys", ()), MIX_KEY)}

    def add(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        _REGISTRY.add(name, ClientStrategy(name, fn, **declared))
        return fn

    return add


unregister = _REGISTRY.remove
available = _REGISTRY.names  # registered client strategies, in registration order (the order shown to users)
get = _REGISTRY.get


MIX_KEY = "predicted-mix"  # what a needs_predicted_mix strategy's clients send (register adds it)
# what the pseudo-updates m_t depend on (every strategy that reads q) and the client graph
PROBE_KEYS = ("pseudo-optimizer", "pseudo-epochs", "pseudo-lr", "pseudo-params", "sketch-dim")
GRAPH_KEYS = ("knn-k", "rho", "sigma-scope", "laplacian", "delta")


def order_clients(name: str, stats: ClientStats, rng: np.random.Generator, params: Any = NoParams(),
                  n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Eligible clients, best first: at least the first ``n`` (random and entropy always return
    the whole order, which is cheap; diffusion returns exactly ``n`` picks). Strategies with a
    client graph put its diagnostics into ``diagnostics``."""
    return get(name).order(stats, rng, params, n, diagnostics)


def plan_round(name: str, stats: ClientStats, rng: np.random.Generator, params: Any,
               per_client: int, clients: int, diagnostics: dict | None = None) -> list[tuple[int, int]]:
    """Client batch with equal-budget top-up (docs/method.md, "Protocol"): ask the strategy for V clients and, only
    if some of them hold fewer than W points, for more (doubling). The greedy's first n picks do
    not depend on n, so asking again for more extends the same order."""
    n_elig = int(stats.eligible.sum())
    n = min(clients, n_elig)
    while True:
        order = order_clients(name, stats, rng, params, n=n, diagnostics=diagnostics)
        plan = allocate_budget(order, stats.n_unlabeled, per_client, clients)
        if sum(k for _, k in plan) >= per_client * clients or len(order) >= n_elig:
            return plan
        n = min(2 * n, n_elig)


def allocate_budget(order, n_unlabeled, per_client: int, clients: int) -> list[tuple[int, int]]:
    """Walk ``order`` and give each client min(W, |U_z|) until V·W labels are assigned (docs/method.md, "Protocol").

    Returns (client index, number of points) pairs. If the eligible clients together hold less
    than V·W unlabeled points, everything they hold is assigned (the data has run out).
    """
    remaining = per_client * clients
    plan: list[tuple[int, int]] = []
    for z in order:
        if remaining <= 0:
            break
        take = int(min(per_client, n_unlabeled[z], remaining))
        if take > 0:
            plan.append((int(z), take))
            remaining -= take
    return plan
