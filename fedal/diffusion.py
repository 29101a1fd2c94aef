"""Impact, score and greedy selection by diffusion (docs/method.md, "Impact, score, greedy", "Local batch"; paper Eq. 8, 11, 12, Algorithm 1).

One implementation serves both levels:

* client batch (``select_clients``): nodes are clients, features their pseudo-parameter directions
  m_t (docs/method.md, "Pseudo-updates", "Client graph"), values the mean entropies g, anisotropic weights from the entropy change δ_g;
* local batch (``select_points``): nodes are a client's labeled and unlabeled points, features
  their embeddings or inputs, values the point entropies with 0 on labeled points (docs/method.md, "Local batch").

Closed form of the impact (docs/method.md, "Impact, score, greedy"). The literal Eq. 11 diffuses, for every client z, a copy of g
with g_z = 0 and sums the change off z: M·H mat-vecs per greedy step. With 1ᵀL = 0 the diffusion
preserves mass, which gives v = P^H g − g ⊙ diag(P^H): H sparse mat-vecs per step plus diag(P^H)
once per round. The normalised Laplacians of the ablation do not preserve mass; for them the same
algebra with c = (P^H)ᵀ1 gives

    v = (1ᵀg − cᵀg)·1 − g ⊙ (1 − c) + P^H g − g ⊙ diag(P^H),

which reduces to the paper's form when c = 1 and still equals the literal Eq. 11 exactly.

``literal_impact`` / ``literal_select_clients`` are the per-client loops of Algorithm 1, kept as
the reference that tests and the benchmark compare the closed form against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedal.graph import (
    LAPLACIANS,
    SIGMA_SCOPES,
    DiffusionGraph,
    build_graph,
    normalize_embeddings,
)
from fedal.validation import check_choice, check_int, check_number, check_points, check_vector

# Scores within this relative distance of the maximum count as tied (docs/method.md, "Impact, score, greedy": ties → lower
# index). Mathematically equal scores can differ in the last bits because sparse sums run in
# different orders for different nodes; without a tolerance a symmetric configuration would be
# broken by rounding noise instead of by index.
TIE_RTOL = 1e-9
# Row block for diag(P^H): bounds the memory of the sparse power rows (see diag_of_power).
DIAG_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class Selection:
    """A greedy batch.

    order          chosen node indices, in pick order;
    chosen_scores  the score s (Eq. 12) of each pick when it was made (the "utility" behind it);
    scores         (n, N): the whole score vector at each pick, chosen and ineligible nodes
                   included (they are excluded by mask, not by score); None if not recorded;
    impacts        (n, N): the impact vector v (Eq. 11) behind each score vector; None likewise.
    """

    order: np.ndarray
    chosen_scores: np.ndarray
    scores: np.ndarray | None = None
    impacts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.order)


# --------------------------------------------------------------------------------------------
# closed form
# --------------------------------------------------------------------------------------------
def apply_power(P: sp.spmatrix, g: np.ndarray, steps: int) -> np.ndarray:
    """P^H g by H sparse mat-vecs (Eq. 8 applied H times)."""
    for _ in range(steps):
        g = P @ g
    return g


def diag_of_power(P: sp.spmatrix, steps: int, block_rows: int = DIAG_BLOCK_ROWS) -> np.ndarray:
    """diag(P^H) without forming P^H densely (docs/method.md, "Impact, score, greedy").

    diag(P^H)_z = Σ_y (P^a)_{zy} (P^b)_{yz} with a = ⌊H/2⌋, b = H − a, i.e. the row sums of
    P^a[R] ⊙ ((Pᵀ)^b)[R] for a block of rows R. Both factors are built row block by row block
    (P[R] @ P @ …), so memory is O(|R|·(K+1)^b) instead of O(n²): the K-sparse powers stay small
    for H = 5."""
    n = P.shape[0]
    if steps == 0:
        return np.ones(n)
    P = P.tocsr()
    Pt = P.T.tocsr()
    a, b = steps // 2, steps - steps // 2
    out = np.empty(n)
    for s in range(0, n, block_rows):
        rows = slice(s, min(n, s + block_rows))
        right = Pt[rows]
        for _ in range(b - 1):
            right = right @ Pt
        if a == 0:
            out[rows] = right.diagonal(k=s)
            continue
        left = P[rows]
        for _ in range(a - 1):
            left = left @ P
        out[rows] = np.asarray(left.multiply(right).sum(axis=1)).ravel()
    return out


@dataclass(frozen=True)
class _Operator:
    """What the greedy loop needs from P for a round: P itself, H, diag(P^H) and, when P does not
    preserve mass, the column sums c of P^H."""

    P: sp.csr_matrix
    steps: int
    diag: np.ndarray
    colsum: np.ndarray | None

    @classmethod
    def of(cls, graph: DiffusionGraph, steps: int) -> "_Operator":
        P = graph.P
        colsum = None if graph.mass_preserving else apply_power(P.T.tocsr(), np.ones(P.shape[0]), steps)
        return cls(P, steps, diag_of_power(P, steps), colsum)

    def impact(self, g: np.ndarray) -> np.ndarray:
        """Eq. 11 in closed form (docs/method.md, "Impact, score, greedy")."""
        v = apply_power(self.P, g, self.steps) - g * self.diag
        if self.colsum is not None:
            c = self.colsum
            v += (g.sum() - c @ g) - g * (1.0 - c)
        return v


def score(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """s = g/std(g) + v/std(v) (Eq. 12), population std over all nodes; a term whose std is 0
    contributes 0 (docs/method.md, "Impact, score, greedy") instead of NaN."""
    s = np.zeros_like(g)
    for term in (g, v):
        sd = term.std()
        if sd > 0:
            s += term / sd
    return s


def _pick(s: np.ndarray, available: np.ndarray) -> int:
    """Maximiser of s among available nodes; ties (within TIE_RTOL) → the lowest index."""
    cand = np.flatnonzero(available)
    vals = s[cand]
    best = vals.max()
    tol = TIE_RTOL * max(1.0, abs(best))
    return int(cand[np.argmax(vals >= best - tol)])


def _greedy(impact_fn, g: np.ndarray, n: int, eligible: np.ndarray, record: bool = True,
            extra_term=None) -> Selection:
    """Algorithm 1 lines 6–15 (docs/method.md, "Impact, score, greedy"): impact and score from the current g, pick the maximiser
    among eligible, not-yet-chosen nodes, set its g to 0; P fixed within the round. Exclusion of
    chosen nodes is explicit: zeroing g alone would not stop a node with large impact from being
    picked again. ``record=False`` keeps only the score of each pick, not the n×N vectors."""
    g = g.astype(np.float64, copy=True)
    available = eligible.copy()
    order = np.empty(n, np.int64)
    chosen = np.empty(n)
    scores = np.empty((n, len(g))) if record else None
    impacts = np.empty((n, len(g))) if record else None
    for i in range(n):
        v = impact_fn(g)
        s = score(g, v)
        if extra_term is not None:
            b = extra_term(order[:i])
            if b.std() > 0:
                s = s + b / b.std()
        o = _pick(s, available)
        order[i], chosen[i] = o, s[o]
        if record:
            scores[i], impacts[i] = s, v
        available[o] = False
        g[o] = 0.0
    return Selection(order, chosen, scores, impacts)


# --------------------------------------------------------------------------------------------
# literal reference (Algorithm 1 as written; O(M·H) mat-vecs per pick)
# --------------------------------------------------------------------------------------------
def literal_impact(L, g, *, delta: float = 0.1, steps: int = 5, clients=None) -> np.ndarray:
    """Eq. 11 literally: for every z, g_z(1) = g with entry z zeroed, H steps of
    g ← g − δLg (Eq. 8), v_z = Σ_{y≠z} g_z(1)_y − Σ_{y≠z} g_z(H+1)_y. L may be dense or sparse.
    Reference only: M·H mat-vecs. ``clients`` (indices) restricts the loop to those z, for
    timing a sample of it; the result then has one entry per listed client."""
    g = np.asarray(g, dtype=np.float64)
    zs = range(len(g)) if clients is None else clients
    v = np.empty(len(zs))
    for i, z in enumerate(zs):
        gz = g.copy()
        gz[z] = 0.0
        before = gz.sum() - gz[z]
        for _ in range(steps):
            gz = gz - delta * (L @ gz)
        v[i] = before - (gz.sum() - gz[z])
    return v


def literal_select_clients(L, g, n: int, *, eligible=None, delta: float = 0.1, steps: int = 5) -> Selection:
    """Algorithm 1 lines 6–15 with ``literal_impact``: the reference for the closed form."""
    g = np.asarray(g, dtype=np.float64)
    elig = _as_mask(eligible, len(g), "eligible")
    return _greedy(lambda gg: literal_impact(L, gg, delta=delta, steps=steps), g, n, elig)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def _as_mask(value, size: int, name: str) -> np.ndarray:
    """A boolean mask of length ``size`` from None (all), a boolean mask or an index array."""
    if value is None:
        return np.ones(size, dtype=bool)
    a = np.asarray(value)
    if a.dtype == bool:
        if a.shape != (size,):
            raise ValueError(f"{name} as a boolean mask must have shape ({size},); got {a.shape}")
        return a.copy()
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a boolean mask of shape ({size},) or an array of indices in [0, {size - 1}]")
    if a.size and (a.min() < 0 or a.max() >= size):
        raise ValueError(f"{name} indices must be in [0, {size - 1}]; got min {a.min()}, max {a.max()}")
    mask = np.zeros(size, dtype=bool)
    mask[a.astype(np.int64)] = True
    return mask


def _check_choices(sigma_scope, laplacian, rho):
    check_choice(sigma_scope, "sigma_scope", SIGMA_SCOPES)
    check_choice(laplacian, "laplacian", LAPLACIANS)
    check_number(rho, "rho", 0)


def client_graph(
    embeddings,
    entropy,
    prev_entropy=None,
    *,
    k: int = 7,
    rho: float = 0.2,
    delta: float = 0.1,
    sigma_scope: str = "edges",
    laplacian: str = "unnormalized",
) -> tuple[DiffusionGraph, np.ndarray]:
    """Validated client graph of docs/method.md, "Client graph" and the entropy vector g. ``prev_entropy`` None means
    the first AL round: δ_g ≡ 0, so γ ≡ 1 (docs/method.md, "Pseudo-updates"). A client without a previous value should
    be given its current entropy there (δ_g = 0, docs/method.md, "Pseudo-updates"); NaN is rejected as bad input."""
    x = normalize_embeddings(embeddings)
    M = x.shape[0]
    g = check_vector(entropy, "entropy", M)
    k = check_int(k, "k", 1)
    _check_choices(sigma_scope, laplacian, rho)
    delta_g = None
    if prev_entropy is not None:
        delta_g = g - check_vector(prev_entropy, "prev_entropy", M)
    # a client whose update is 0 at every recorded round has no direction: no edges (v = 0)
    no_direction = ~np.any(x != 0, axis=(1, 2))
    graph = build_graph(x, k=k, delta=delta, delta_g=delta_g, rho=float(rho),
                        sigma_scope=sigma_scope, laplacian_kind=laplacian, without_edges=no_direction)
    return graph, g


def client_impact(
    embeddings,
    entropy,
    prev_entropy=None,
    *,
    k: int = 7,
    rho: float = 0.2,
    delta: float = 0.1,
    steps: int = 5,
    sigma_scope: str = "edges",
    laplacian: str = "unnormalized",
) -> np.ndarray:
    """The impact vector v (Eq. 11) of every client for the current g, in closed form."""
    steps = check_int(steps, "steps", 0)
    graph, g = client_graph(embeddings, entropy, prev_entropy, k=k, rho=rho, delta=delta,
                            sigma_scope=sigma_scope, laplacian=laplacian)
    return _Operator.of(graph, steps).impact(g)


def select_clients(
    embeddings,
    entropy,
    prev_entropy=None,
    *,
    n: int,
    eligible=None,
    k: int = 7,
    rho: float = 0.2,
    delta: float = 0.1,
    steps: int = 5,
    sigma_scope: str = "edges",
    laplacian: str = "unnormalized",
) -> Selection:
    """Client batch of n clients by Algorithm 1 (docs/method.md, "Client graph", "Impact, score, greedy").

    embeddings (M, d) or (M, T, d): pseudo-parameter directions m_t (rows normalised here);
    entropy (M,): g; prev_entropy (M,) or None: g of the previous round (δ_g = g − prev);
    eligible: None (all), boolean mask or index array; ineligible clients stay in the graph
    (they diffuse) but are never chosen. The greedy never looks ahead, so the first n picks do
    not depend on n: asking for more extends the same order (a caller can top up a budget).
    K is clamped to M − 1; steps = 0 gives v ≡ 0, i.e. selection by entropy alone."""
    steps = check_int(steps, "steps", 0)
    graph, g = client_graph(embeddings, entropy, prev_entropy, k=k, rho=rho, delta=delta,
                            sigma_scope=sigma_scope, laplacian=laplacian)
    elig = _as_mask(eligible, len(g), "eligible")
    n = check_int(n, "n", 0, int(elig.sum()), "the number of eligible clients")
    return greedy_select(graph, g, n, steps=steps, eligible=elig)


def greedy_select(graph: DiffusionGraph, g, n: int, *, steps: int, eligible=None, extra_term=None,
                  record: bool = True) -> Selection:
    """Algorithm 1 on a built graph. ``extra_term(picked)`` (optional) returns a vector b over the
    nodes given the indices picked so far; the score becomes s + b/std(b) (a further
    standardised term, as Eq. 12 combines g and v)."""
    g = np.asarray(g, dtype=np.float64)
    elig = _as_mask(eligible, len(g), "eligible")
    n = check_int(n, "n", 0, int(elig.sum()), "the number of eligible nodes")
    return _greedy(_Operator.of(graph, check_int(steps, "steps", 0)).impact, g, n, elig,
                   record=record, extra_term=extra_term)


def select_points(
    features,
    entropy,
    labeled,
    *,
    n: int,
    k: int = 7,
    delta: float = 0.1,
    steps: int = 5,
    return_scores: bool = False,
):
    """Local batch of n unlabeled points (docs/method.md, "Local batch"): indices into ``features``.

    features (N, d): embeddings or flattened inputs, used as they are (the paper's ‖x_i − x_j‖);
    entropy (N,): k(x); labeled: boolean mask or index array of labeled nodes, which carry 0
    (their uncertainty is resolved) and are never chosen. Mutual kNN, σ² = mean squared edge
    distance, isotropic unnormalised Laplacian; greedy as for clients. With return_scores=True
    the full ``Selection`` (order, scores, impacts) is returned instead of the indices."""
    x = check_points(features, "features", allow_epochs=False)
    N = x.shape[0]
    values = check_vector(entropy, "entropy", N)
    lab = _as_mask(labeled, N, "labeled")
    k = check_int(k, "k", 1)
    steps = check_int(steps, "steps", 0)
    n = check_int(n, "n", 0, int((~lab).sum()), "the number of unlabeled points")
    values = np.where(lab, 0.0, values)
    graph = build_graph(x, k=k, delta=delta)
    sel = _greedy(_Operator.of(graph, steps).impact, values, n, ~lab, record=return_scores)
    return sel if return_scores else sel.order
