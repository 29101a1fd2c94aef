"""The class-balance greedy shared by fedal's mix-balance client rule and the simulator-only
class-mix oracle (docs/method.md, "Mix balance" and "The class-mix oracle"). Pure numpy.

A batch of clients is picked one at a time: each pick the client whose expected acquisition makes
the labeled set's class counts most even (highest Shannon entropy of labeled + the batch so far).
"Expected": a client asked for k points adds k · (its unlabeled class mix), which is what random
points take; other point strategies skew it, and the greedy does not model them.
"""

from __future__ import annotations

import numpy as np


def entropy(counts: np.ndarray) -> np.ndarray:
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
    size = unlabeled.sum(1)
    take = np.minimum(np.asarray(take, dtype=np.float64), size)
    mix = np.divide(unlabeled, size[:, None], out=np.zeros_like(unlabeled), where=size[:, None] > 0)
    gain = mix * take[:, None]  # (M, C): what a pick adds, in expectation under random points
    ok = (size > 0) if eligible is None else (np.asarray(eligible, bool) & (size > 0))
    h = np.asarray(labeled, dtype=np.float64).copy()
    order, after = [], []
    for _ in range(min(int(n), int(ok.sum()))):
        ent = np.where(ok, entropy(h[None, :] + gain), -np.inf)
        z = int(np.argmax(ent))
        order.append(z)
        after.append(float(ent[z]))
        h += gain[z]
        ok[z] = False
    return np.asarray(order, dtype=np.int64), np.asarray(after)


def balance_order(counts, labeled, n_unlabeled, points_per_client: int, n: int | None,
                  eligible) -> tuple[np.ndarray, np.ndarray]:
    """A client strategy's order by ``balance_greedy``: the first ``n`` eligible clients (None:
    all of them), each pick taking min(W, |U_z|) points (the budget rule's top-up, docs/method.md,
    "Protocol")."""
    eligible = np.asarray(eligible, bool)
    n = int(eligible.sum()) if n is None else n
    take = np.minimum(points_per_client, np.asarray(n_unlabeled))
    return balance_greedy(counts, labeled, take, n, eligible)
