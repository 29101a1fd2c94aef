"""The client geometry every client-graph strategy starts from (docs/method.md, "Client graph"):
the clients' pseudo-parameter updates m_t reduced to coordinates with the same distances, and the
pairwise distances q of Eq. 5. Pure numpy."""

from __future__ import annotations

import numpy as np


def isometric_coordinates(embeddings: np.ndarray) -> np.ndarray:
    """Coordinates of M points of R^d (d ≫ M) in an orthonormal basis of their span: (M, T, ≤M).

    Pseudo-parameter updates have d ≈ 10^5 coordinates but only M ≈ 100 clients; distances
    (and norms) among the points depend only on their Gram matrix G_t = X_t X_tᵀ, so with
    G_t = V Λ Vᵀ the rows of V Λ^{1/2} are points with the same Gram matrix, hence the same
    distances, and the client graph is built exactly, up to rounding, on vectors of length M.
    One M×M Gram product and eigendecomposition per recorded round: a BLAS product, ~30× faster
    than a QR of the d×M matrix at M = 100, d = 1.5·10^5, and as accurate (1e-11 on distances).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    m, t, d = x.shape
    if d <= m:
        return x
    out = np.empty((m, t, m))
    for e in range(t):
        w, v = np.linalg.eigh(x[:, e, :] @ x[:, e, :].T)
        # eigenvalues at rounding level belong to directions the points do not span (a zero
        # update, duplicates): zero them; and a zero row must come back exactly 0, not as a
        # rounding-level vector that normalisation would blow up to unit length
        w[w <= 1e-12 * max(float(w.max()), 0.0)] = 0.0
        out[:, e, :] = v * np.sqrt(w)
        out[~np.any(x[:, e, :] != 0, axis=1), e, :] = 0.0  # m_t = 0 stays exactly 0
    return out


def q_matrix(coords: np.ndarray) -> np.ndarray:
    """q(z, y) = mean over recorded rounds t of ‖m_t(z) − m_t(y)‖ (Eq. 5) for all pairs: (M, M).

    ``coords`` (M, T, d) as the graph sees them (rows normalised). For diagnostics only: the
    graph itself never forms this matrix (fedal.graph screens neighbours blockwise)."""
    x = np.asarray(coords, dtype=np.float64)
    q = np.zeros((x.shape[0], x.shape[0]))
    for t in range(x.shape[1]):
        sq = np.einsum("ij,ij->i", x[:, t], x[:, t])
        q += np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x[:, t] @ x[:, t].T, 0.0))
    q /= x.shape[1]
    np.fill_diagonal(q, 0.0)
    return q
