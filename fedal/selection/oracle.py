"""A simulator-only yardstick for client selection (docs/method.md, "The class-mix oracle").

Every client rule fedal can deploy sees the clients through what they send (g, |U|, sketches of
pseudo-updates). Whether choosing clients *could* pay off in a setting is a separate question:
give a rule the one thing the deployable rules try to infer, each client's true class counts over
its unlabeled pool, and see whether its picks beat random clients behind the same point strategy.
If even this oracle does not, no rule that steers by class mix can, and the setting's gains (or
losses) belong to the point step.

``oracle-balance`` picks greedily the client whose expected acquisition makes the labeled set's
class counts most even (highest entropy of labeled + acquired so far in the batch). "Expected":
a client asked for k points adds k · (its unlabeled class mix), which is what random points give;
other point strategies skew it, and the oracle does not model them. Pure numpy; the counts come
from the in-process simulator only (``fedal.selection.base.ClientStats.true_unlabeled``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal.selection.base import ClientStats, register


@dataclass(frozen=True)
class OracleParams:
    points_per_client: int = 200  # W: what one pick adds (min(W, |U_z|) points)


def _entropy(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of non-negative ``counts`` (a row of zeros: 0)."""
    tot = counts.sum(-1, keepdims=True)
    p = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(-1)


def balance_greedy(unlabeled: np.ndarray, labeled: np.ndarray, take: np.ndarray, n: int,
                   eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The greedy batch that makes the expected labeled set most even.

    ``unlabeled``: (M, C) class counts over each client's U; ``labeled``: (C,) class counts of the
    labeled set; ``take``: (M,) points a pick would label; ``n``: picks. Pick i maximises the
    entropy of ``labeled`` + the expected acquisitions of picks 1..i (ties: the lower index).
    Returns the picks in order and the entropy after each (nats)."""
    unlabeled = np.asarray(unlabeled, dtype=np.float64)
    m = unlabeled.shape[0]
    size = unlabeled.sum(1)
    take = np.minimum(np.asarray(take, dtype=np.float64), size)
    mix = np.divide(unlabeled, size[:, None], out=np.zeros_like(unlabeled), where=size[:, None] > 0)
    gain = mix * take[:, None]  # (M, C): what a pick adds, in expectation under random points
    ok = (size > 0) if eligible is None else (np.asarray(eligible, bool) & (size > 0))
    h = np.asarray(labeled, dtype=np.float64).copy()
    order, after = [], []
    for _ in range(min(int(n), int(ok.sum()))):
        ent = np.where(ok, _entropy(h[None, :] + gain), -np.inf)
        z = int(np.argmax(ent))
        order.append(z)
        after.append(float(ent[z]))
        h += gain[z]
        ok[z] = False
    return np.asarray(order, dtype=np.int64), np.asarray(after)


@register("oracle-balance", probes=False, simulator_only=True,
          params=lambda cfg: OracleParams(cfg.points_per_client))
def oracle_balance_order(stats: ClientStats, rng: np.random.Generator, params: OracleParams,
                         n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """The class-mix oracle (simulator only): ``balance_greedy`` on the clients' true counts."""
    if stats.true_unlabeled is None or stats.true_labeled is None:
        raise ValueError("client-strategy 'oracle-balance' reads the clients' true class counts, which only the "
                         "in-process simulator gives (python -m simulations.compare SUITE --engine inprocess)")
    elig = stats.eligible
    n = int(elig.sum()) if n is None else n
    take = np.minimum(params.points_per_client, stats.n_unlabeled)
    order, after = balance_greedy(stats.true_unlabeled, np.asarray(stats.true_labeled).sum(0), take, n, elig)
    if diagnostics is not None:
        diagnostics["oracle_entropy"] = [round(float(v), 6) for v in after[:n]]
    return order
