"""Mutual-kNN graphs, Gaussian weights, anisotropy and Laplacians (docs/method.md, "Client graph", "Local batch"; paper Eq. 5–10, 13).

Pure numpy/scipy. The exact kNN search with canonical ties (Eq. 5 distances, ties broken by the
lower index) lives in ``fedal.knn``; this module turns its answer into the sparse mutual kNN edge
list, the σ scales, the weights, L^γ and P = I − δL. Inputs are checked with
``fedal.validation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedal.knn import KNN, distance_row_blocks, knn
from fedal.validation import check_int, check_points, check_vector  # noqa: F401 (used below)

LAPLACIANS = ("unnormalized", "rw", "sym")
SIGMA_SCOPES = ("edges", "all")


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------
def normalize_embeddings(embeddings) -> np.ndarray:
    """(M, d) or (M, T, d) → (M, T, d) with every m_t(z) scaled to unit norm.

    docs/method.md, "Pseudo-updates" sends m_t = d_t/‖d_t‖; normalising again here makes the graph independent of how a
    caller scaled them. Zero vectors (‖d_t‖ = 0) stay zero, as docs/method.md, "Pseudo-updates" prescribes."""
    x = check_points(embeddings, "embeddings", allow_epochs=True)
    norms = np.linalg.norm(x, axis=2, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)



# --------------------------------------------------------------------------------------------
# graph
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edges:
    """Undirected edges i < j (sorted) with their canonical distance q; n nodes in total."""

    n: int
    i: np.ndarray
    j: np.ndarray
    q: np.ndarray

    def __len__(self) -> int:
        return len(self.i)


def mutual_knn(x: np.ndarray, k: int, **kw) -> Edges:
    """Mutual kNN graph (Eq. 13, docs/method.md, "Client graph"): edge z–y iff each is among the other's K nearest.

    Nodes with no mutual neighbour stay isolated (docs/method.md, "Client graph": they get zero impact by design)."""
    x = x if x.ndim == 3 else x[:, None, :]
    return _mutual_from_knn(knn(x, k, **kw), x.shape[0])


def sigma_w2(x: np.ndarray, edges: Edges, scope: str) -> float:
    """σ_w² of Eq. 9 (docs/method.md, "Client graph"): mean q² over the graph's edges, or over all pairs z < y.

    "all" for T = 1 uses Σ_{z<y}‖x_z − x_y‖² = n·Σ‖x_z‖² − ‖Σx_z‖² (no pair loop); for T > 1, where
    q is a mean of norms, the pairs are visited in row blocks (O(n²) time, O(block·n) memory)."""
    if scope == "edges":
        return float(np.mean(edges.q**2)) if len(edges) else 0.0
    n = x.shape[0]
    if n < 2:
        return 0.0
    pairs = n * (n - 1) / 2
    if x.shape[1] == 1:
        xc = x[:, 0, :] - x[:, 0, :].mean(axis=0)
        return float(max(n * np.sum(xc * xc) - np.sum(xc.sum(axis=0) ** 2), 0.0) / pairs)
    total = 0.0
    for qb in distance_row_blocks(x):
        total += float(np.sum(qb**2))
    return total / 2.0 / pairs  # every pair counted twice, self pairs are 0


def gaussian_weights(q: np.ndarray, s2: float) -> np.ndarray:
    """ŵ = exp(−q²/σ_w²) on edges (Eq. 9). With σ_w² = 0 every edge has q = 0 (duplicates), and
    the weight is the q → 0 limit, 1."""
    if s2 <= 0:
        return np.ones_like(q)
    return np.exp(-(q**2) / s2)


def anisotropy(delta_g: np.ndarray, edges: Edges, rho: float, scope: str) -> tuple[np.ndarray, float]:
    """γ on edges (Eq. 10) and σ_γ² = mean((δ_g(z) − δ_g(y))²)/ρ over the scope (docs/method.md, "Client graph").

    ρ = 0 or a zero mean means γ ≡ 1 (σ_γ² reported as inf). Written as exp(−ρ·Δ²/mean) so that
    ρ = 0 needs no division by zero."""
    diff2 = (delta_g[edges.i] - delta_g[edges.j]) ** 2
    if scope == "edges":
        mean = float(diff2.mean()) if len(edges) else 0.0
    else:
        n = len(delta_g)
        dc = delta_g - delta_g.mean()
        mean = float(n * np.sum(dc * dc) / (n * (n - 1) / 2)) if n > 1 else 0.0
    if rho == 0 or mean <= 0:
        return np.ones(len(edges)), float("inf")
    return np.exp(-rho * diff2 / mean), mean / rho


def laplacian(edges: Edges, w: np.ndarray, kind: str = "unnormalized") -> sp.csr_matrix:
    """L^γ = D^γ − W^γ with D the column sums (Eq. 6–7); "rw"/"sym" are the normalised ablations.

    Normalised variants: D⁻¹L and D^{-1/2}LD^{-1/2}, with D⁻¹ taken as 0 on isolated nodes so
    that they stay still (row of zeros) instead of leaking mass (I − D⁻¹W would put 1 there)."""
    if kind not in LAPLACIANS:
        raise ValueError(f"laplacian must be one of {LAPLACIANS}; got {kind!r}")
    n = edges.n
    W = sp.coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([edges.i, edges.j]), np.concatenate([edges.j, edges.i]))),
        shape=(n, n),
    ).tocsr()
    deg = np.asarray(W.sum(axis=0)).ravel()  # column sums (Eq. 6)
    L = (sp.diags(deg) - W).tocsr()
    if kind == "unnormalized":
        return L
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    if kind == "rw":
        return (sp.diags(inv) @ L).tocsr()
    s = np.sqrt(inv)
    return (sp.diags(s) @ L @ sp.diags(s)).tocsr()


def diffusion_operator(L: sp.csr_matrix, delta) -> sp.csr_matrix:
    """P = I − δL (Eq. 8), after checking that δ is in the stable range for this graph.

    Rule: 0 < δ ≤ 1/max_z L_zz. For the unnormalised Laplacian L_zz is the weighted degree, and
    δ·max degree ≤ 1 is exactly when P is entrywise non-negative; together with 1ᵀP = 1ᵀ (column
    sums) P is then column-stochastic, a contraction in ℓ1 that moves mass without creating
    negative entropy. (The spectral condition δ < 2/λ_max is weaker and permits oscillating,
    sign-changing values.) Normalised Laplacians have L_zz = 1, so δ ≤ 1. A graph without edges
    has L = 0 and any δ > 0 is stable. Weights are ≤ 1, so K = 7 gives degree ≤ 7 and δ = 0.1
    is always in range."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)) or not np.isfinite(delta):
        raise ValueError(f"delta must be a finite number in (0, 1/max weighted degree]; got {delta!r}")
    dmax = float(L.diagonal().max()) if L.shape[0] else 0.0
    hi = 1.0 / dmax if dmax > 0 else np.inf
    if not (0 < delta <= hi * (1 + 1e-12)):
        raise ValueError(
            f"delta={delta!r} is outside the stable range (0, {hi:.6g}] = (0, 1/max weighted degree "
            f"{dmax:.6g}] for this graph: P = I − δL must stay non-negative"
        )
    n = L.shape[0]
    return (sp.identity(n, format="csr") - float(delta) * L).tocsr()


@dataclass(frozen=True)
class DiffusionGraph:
    """Everything a selection round needs from the graph (docs/method.md, "Client graph"): the Laplacian L^γ, the
    diffusion operator P and the scales that produced them (reported, useful for diagnostics)."""

    edges: Edges
    weights: np.ndarray  # W^γ on edges
    L: sp.csr_matrix
    P: sp.csr_matrix
    sigma_w2: float
    sigma_gamma2: float
    laplacian: str
    knn_fallback_rows: int = 0

    @property
    def mass_preserving(self) -> bool:
        """1ᵀL = 0 only for the unnormalised Laplacian (docs/method.md, "Impact, score, greedy" closed form relies on it)."""
        return self.laplacian == "unnormalized"


def build_graph(
    x: np.ndarray,
    *,
    k: int,
    delta,
    delta_g: np.ndarray | None = None,
    rho: float = 0.0,
    sigma_scope: str = "edges",
    laplacian_kind: str = "unnormalized",
    block_rows: int | None = None,
    without_edges: np.ndarray | None = None,
) -> DiffusionGraph:
    """Mutual kNN + Gaussian weights + anisotropy + Laplacian + P for points x (n, T, d).

    ``without_edges`` (boolean, n): nodes that stay in the graph but get no edge and take no part
    in the kNN or in the σ scales. A client whose pseudo-update is 0 at every recorded round has no
    direction; as a point at the origin it would sit at distance 1 from every unit vector, nearer
    than live clients are to each other (≈ √2 apart when nearly orthogonal), and become everyone's
    neighbour (docs/method.md, "Client graph").

    Callers validate inputs; this checks only the choices (scope, kind, delta)."""
    if sigma_scope not in SIGMA_SCOPES:
        raise ValueError(f"sigma_scope must be one of {SIGMA_SCOPES}; got {sigma_scope!r}")
    if laplacian_kind not in LAPLACIANS:
        raise ValueError(f"laplacian must be one of {LAPLACIANS}; got {laplacian_kind!r}")
    x = x if x.ndim == 3 else x[:, None, :]
    if without_edges is not None and np.any(without_edges):
        live = np.flatnonzero(~np.asarray(without_edges, dtype=bool))
        sub = build_graph(x[live], k=k, delta=delta, delta_g=None if delta_g is None else delta_g[live],
                          rho=rho, sigma_scope=sigma_scope, laplacian_kind=laplacian_kind,
                          block_rows=block_rows)
        # the live subgraph's edges in the full graph's numbering (live is sorted, so i < j holds)
        edges = Edges(x.shape[0], live[sub.edges.i], live[sub.edges.j], sub.edges.q)
        L = laplacian(edges, sub.weights, laplacian_kind)
        return DiffusionGraph(edges, sub.weights, L, diffusion_operator(L, delta), sub.sigma_w2,
                              sub.sigma_gamma2, laplacian_kind, sub.knn_fallback_rows)
    nn_kw = {} if block_rows is None else {"block_rows": block_rows}
    knn_res = knn(x, k, **nn_kw)
    edges = _mutual_from_knn(knn_res, x.shape[0])
    s2 = sigma_w2(x, edges, sigma_scope)
    w = gaussian_weights(edges.q, s2)
    sg2 = float("inf")
    if delta_g is not None:
        gamma, sg2 = anisotropy(delta_g, edges, rho, sigma_scope)
        w = w * gamma
    L = laplacian(edges, w, laplacian_kind)
    P = diffusion_operator(L, delta)
    return DiffusionGraph(edges, w, L, P, s2, sg2, laplacian_kind, knn_res.fallback_rows)


def _mutual_from_knn(nn: KNN, n: int) -> Edges:
    kk = nn.index.shape[1]
    src = np.repeat(np.arange(n, dtype=np.int64), kk)
    dst = nn.index.ravel()
    code = np.minimum(src, dst) * n + np.maximum(src, dst)
    order = np.argsort(code, kind="stable")
    code, qs = code[order], nn.distance.ravel()[order]
    twice = np.flatnonzero(code[1:] == code[:-1])  # listed from both ends
    code, q = code[twice], qs[twice]
    return Edges(n, code // n, code % n, q)
