"""A simulator-only yardstick for client selection (docs/method.md, "The class-mix oracle").

Every client rule fedal can deploy sees the clients through what they send (g, |U|, sketches of
pseudo-updates). Whether choosing clients *could* pay off in a setting is a separate question:
give a rule the one thing the deployable rules try to infer, each client's true class counts over
its unlabeled pool, and see whether its picks beat random clients behind the same point strategy.
If even this oracle does not, no rule that steers by class mix can, and the setting's gains (or
losses) belong to the point step.

``oracle-balance`` runs ``fedal.class_balance.balance_greedy`` on the true counts: each pick the
client whose expected acquisition makes the labeled set's class counts most even. Its deployable
twin, ``mix-balance`` (``fedal.selection.rules``), runs the same greedy on what clients may send
(their predicted class mix over U_z and the labeled set's class counts), so the distance between
the two is the price of not seeing the labels. The counts come from the in-process simulator only
(``fedal.selection.base.ClientStats.true_unlabeled``).
"""

from __future__ import annotations

import numpy as np

from fedal.class_balance import balance_order
from fedal.selection.base import ClientStats, register
from fedal.selection.rules import MixBalanceParams  # W, as mix balance reads it


@register("oracle-balance", probes=False, simulator_only=True,
          params=lambda cfg: MixBalanceParams(cfg.points_per_client))
def oracle_balance_order(stats: ClientStats, rng: np.random.Generator, params: MixBalanceParams,
                         n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """The class-mix oracle (simulator only): ``balance_greedy`` on the clients' true counts."""
    if stats.true_unlabeled is None or stats.true_labeled is None:
        raise ValueError("client-strategy 'oracle-balance' reads the clients' true class counts, which only the "
                         "in-process simulator gives (python -m simulations.compare SUITE --engine inprocess)")
    order, after = balance_order(stats.true_unlabeled, np.asarray(stats.true_labeled).sum(0), stats.n_unlabeled,
                                 params.points_per_client, n, stats.eligible)
    if diagnostics is not None:
        diagnostics["oracle_entropy"] = [round(float(v), 6) for v in after]
    return order
