"""Client-selection rules of the federated-learning literature, on fedal's client signals
(docs/method.md, "Client selection beyond the paper"). Pure numpy/scipy.

Each rule was written for choosing clients to *train*; fedal uses it to choose the clients that
spend labeling effort, on what its probe already sends: the pairwise distances q between the
clients' pseudo-parameter updates (Eq. 5), their mean entropies g and their unlabeled pool sizes
|U|. Every function returns clients (indices into the arrays it is given) in pick order; ties go
to the lower index, and any randomness comes from the caller's generator.

- ``facility_location_greedy`` — DivFL (Balakrishnan et al., "Diverse Client Selection for
  Federated Learning via Submodular Maximization", ICLR 2022): a batch S that represents every
  client, F(S) = Σ_y max_{z∈S} sim(y, z); DivFL's similarity is between gradients, ours between
  pseudo-updates.
- ``cluster_draw`` — clustered sampling (Fraboni et al., "Clustered Sampling: Low-Variance and
  Improved Representativity for Clients Selection in Federated Learning", ICML 2021): clients
  grouped by the similarity of their updates, one client drawn per group.
- ``power_of_choice`` — Cho et al., "Towards Understanding Biased Client Selection in Federated
  Learning", AISTATS 2022: d candidates drawn ∝ data size, the V with the highest loss kept; the
  loss of a client without labels is unknown, so its mean entropy stands in for it.
- ``kcenter_greedy`` — the k-center greedy of core-set active learning (Sener & Savarese, ICLR
  2018) one level up: clients as points, q as the metric.
"""

from __future__ import annotations

import numpy as np

from fedal.diffusion import TIE_RTOL


def _first_max(values: np.ndarray, available: np.ndarray) -> int:
    cand = np.flatnonzero(available)
    vals = values[cand]
    best = vals.max()
    return int(cand[np.argmax(vals >= best - TIE_RTOL * max(1.0, abs(best)))])


def _check_square(d: np.ndarray, name: str) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} must be finite")
    return d


def _mask(eligible, n: int) -> np.ndarray:
    return np.ones(n, bool) if eligible is None else np.asarray(eligible, bool).copy()


def similarity(q: np.ndarray) -> np.ndarray:
    """sim(z, y) = exp(−q²/σ²) with σ² the mean of q² over all pairs z < y (Eq. 9's Gaussian, over
    every pair: facility location has no graph). All q = 0 gives sim ≡ 1."""
    q = _check_square(q, "q")
    n = len(q)
    s2 = float(np.sum(np.triu(q, 1) ** 2) / (n * (n - 1) / 2)) if n > 1 else 0.0
    return np.ones_like(q) if s2 <= 0 else np.exp(-(q**2) / s2)


def facility_location(sim: np.ndarray, picks, weights=None) -> float:
    """F(S) = Σ_y w_y max_{z∈S} sim(y, z) (0 for an empty S); w ≡ 1 unless ``weights`` are given."""
    picks = list(picks)
    if not picks:
        return 0.0
    cover = np.max(sim[:, picks], axis=1)
    return float(cover.sum() if weights is None else (np.asarray(weights, dtype=np.float64) * cover).sum())


def facility_location_greedy(sim, n: int, eligible=None, weights=None, covered=None) -> tuple[np.ndarray, np.ndarray]:
    """DivFL's greedy: ``n`` eligible clients, each maximising F's marginal gain
    Σ_y w_y max(0, sim(y, z) − best_y) given the best similarity best_y each client already has
    to the batch. Every client counts in F (ineligible ones must still be represented); only
    eligible ones are picked. Returns (order, gains).

    ``weights``: None (DivFL: every client counts once), an array w ≥ 0 (a weighted facility
    location, still submodular, so the greedy keeps its 1 − 1/e bound), or a function of the
    picks so far returning w, re-read before every pick (balanced DivFL,
    ``fedal.selection.rules``: the weights follow the classes the batch is expected to fill).

    ``covered``: how far each client is already in the set before this batch, c_l ∈ [0, 1] (a mask:
    cumulative DivFL's clients that hold labels from earlier rounds; a share: how much of each
    client's data is labeled). Every client y then starts at best_y = max_l c_l·sim(y, l), and the
    greedy maximises F(covered ∪ S) − F(covered), so a batch goes where earlier rounds have not
    been; covered clients stay pickable (gain ≥ 0)."""
    sim = _check_square(sim, "sim")
    available = _mask(eligible, len(sim))
    if not 0 <= n <= int(available.sum()):
        raise ValueError(f"n = {n} is invalid; valid: 0..{int(available.sum())} (the eligible clients)")
    before = np.zeros(len(sim)) if covered is None else np.asarray(covered, dtype=np.float64)
    if before.shape != (len(sim),) or not np.all((before >= 0) & (before <= 1)):
        raise ValueError(f"covered must be {len(sim)} numbers in [0, 1] (or a mask); got shape {before.shape}")
    best = (sim * before[None, :]).max(axis=1)
    order, gains = np.empty(n, np.int64), np.empty(n)
    for i in range(n):
        missing = np.maximum(sim - best[:, None], 0.0)
        if weights is None:
            gain = missing.sum(axis=0)
        else:
            w = np.asarray(weights(order[:i]) if callable(weights) else weights, dtype=np.float64)
            if w.shape != (len(sim),) or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"weights must be {len(sim)} finite numbers >= 0; got shape {w.shape}")
            gain = w @ missing
        z = _first_max(gain, available)
        order[i], gains[i] = z, gain[z]
        available[z] = False
        best = np.maximum(best, sim[:, z])
    return order, gains


def kcenter_greedy(dist, first: int, n: int, eligible=None) -> np.ndarray:
    """k-center greedy: ``first``, then repeatedly the eligible client farthest from the batch
    (max over z of min_{s∈S} dist(z, s)). Distances to ineligible clients do not matter: only
    eligible ones are candidates."""
    dist = _check_square(dist, "dist")
    available = _mask(eligible, len(dist))
    if not 0 <= n <= int(available.sum()):
        raise ValueError(f"n = {n} is invalid; valid: 0..{int(available.sum())} (the eligible clients)")
    if n == 0:
        return np.zeros(0, np.int64)
    if not available[first]:
        raise ValueError(f"the first pick {first} is not eligible")
    order = [int(first)]
    available[first] = False
    nearest = dist[:, first].copy()
    while len(order) < n:
        z = _first_max(nearest, available)
        order.append(z)
        available[z] = False
        nearest = np.minimum(nearest, dist[:, z])
    return np.asarray(order, np.int64)


def cluster_labels(q, groups: int) -> np.ndarray:
    """Agglomerative clustering of the clients on q (average linkage: q is a mean of distances
    over the recorded rounds, not a Euclidean embedding Ward would need) into ``groups`` groups;
    labels 0..groups−1. Fewer clients than groups: one group per client."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    q = _check_square(q, "q")
    n = len(q)
    if groups < 1:
        raise ValueError(f"groups = {groups} is invalid; valid: an integer >= 1")
    if n <= groups:
        return np.arange(n)
    sym = (q + q.T) / 2.0
    np.fill_diagonal(sym, 0.0)
    tree = linkage(squareform(sym, checks=False), method="average")
    return fcluster(tree, t=groups, criterion="maxclust") - 1


def cluster_draw(labels, weights, rng: np.random.Generator, eligible=None) -> np.ndarray:
    """Clustered sampling's draw: in each pass one client per group, drawn ∝ ``weights`` (|U_z|)
    within its group, groups in random order; passes repeat until every eligible client is
    ordered (the later passes only serve top-ups). Returns the order."""
    labels = np.asarray(labels)
    w = np.asarray(weights, dtype=np.float64)
    left = _mask(eligible, len(labels)) & (w > 0)
    order: list[int] = []
    while left.any():
        groups = np.unique(labels[left])
        for c in rng.permutation(groups):
            members = np.flatnonzero(left & (labels == c))
            z = int(rng.choice(members, p=w[members] / w[members].sum()))
            order.append(z)
            left[z] = False
    return np.asarray(order, np.int64)


def power_of_choice(g, sizes, d: int, rng: np.random.Generator, eligible=None) -> tuple[np.ndarray, np.ndarray]:
    """Power-of-choice: d candidates drawn without replacement ∝ ``sizes`` (|U_z|) among eligible
    clients, ordered by g (highest first, ties → lower index). Returns (candidates in order, the
    other eligible clients by g): the caller takes its V from the first and falls back on the
    second only when the candidates run out of points."""
    g = np.asarray(g, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    elig = np.flatnonzero(_mask(eligible, len(g)) & (w > 0))
    if d < 1:
        raise ValueError(f"d = {d} is invalid; valid: an integer >= 1")
    d = min(d, len(elig))
    cand = rng.choice(elig, size=d, replace=False, p=w[elig] / w[elig].sum()) if d else elig[:0]

    def by_g(ix: np.ndarray) -> np.ndarray:
        ix = np.sort(ix)
        return ix[np.argsort(-g[ix], kind="stable")]

    return by_g(cand), by_g(np.setdiff1d(elig, cand))
