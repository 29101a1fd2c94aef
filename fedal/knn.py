"""Exact k-nearest-neighbour search with canonical ties: the screening engine under the client graph
(docs/method.md, "Client graph"; paper Eq. 5, 13).

Pure numpy. Memory is O(n·K) plus one block of fixed size: the search visits all n² pairs, but in
row blocks bounded by ``BLOCK_BYTES``, so no n×n matrix is ever held. ``fedal.graph`` builds the
mutual kNN graph, weights and Laplacian on top of ``knn``.

Exact kNN with canonical ties
-----------------------------
docs/method.md, "Client graph" breaks distance ties by the lower index. Floating point makes "equal distance" fragile
(two mathematically equal distances computed in different orders can differ in the last bit), so
the distance that defines the graph is canonical:

* q(z, y) is computed by difference, mean over t of ‖m_t(z) − m_t(y)‖ in float64 (Eq. 5, docs/method.md, "Client graph").
  It is exactly symmetric (x − y is the exact negation of y − x).
* Two distances are tied when they agree after rounding to a grid of ``2^-36 × scale`` (``scale``
  bounds every distance of the point set), i.e. ~1e-11 relative: far above float64 noise, far
  below any real difference. Neighbours are ordered by (rounded q, index).

Computing q by difference for all n² pairs would be too slow, so the search screens with a fast
float32 Gram-matrix key and refines: the screened candidates near the K-th get their canonical q; a
rigorous bound on the float32 error (``fedal.knn_screen._Screen.error``) then proves, row by row, that nobody
outside the candidates can enter or tie the K best. Rows where the proof fails (dense tie groups,
duplicate points) are redone in float64 with every point inside the error band as a candidate.
The result is the exact mutual kNN graph under the canonical distance, whatever the data.

For T = 1 the screen key is the symmetric float32 ‖a − b‖², so only the tiles I ≤ J of the key
matrix are computed (half the GEMM) and each serves both its rows and, transposed, its columns
(``_screen_symmetric``): per-row thresholds start from a column sample and tighten as tiles come
in, and a scalar prefilter keeps the per-tile survivor search to one compare pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal.knn_screen import _Screen, _screen_rows, _screen_symmetric, _SymScreen

# Row-block budget for the n×(block) screening matrix (float32): bounds peak memory of the
# search independently of n. The all-pairs σ scale of fedal.graph reads its blocks through
# distance_row_blocks, so this one knob bounds both.
BLOCK_BYTES = 64 * 2**20
# Tie grid: distances equal after rounding to scale·2^-36 are ties (broken by lower index).
_TIE_GRID = 2.0**-36


def pair_distances(x: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Canonical q(i, j) = mean over t of ‖x_t(i) − x_t(j)‖ (Eq. 5), by difference in float64.

    By difference rather than through a Gram matrix: exact symmetry and no cancellation, so that
    ties and the Gaussian weights do not depend on which side of a pair was computed."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        diff = x[i[s:s + chunk]] - x[j[s:s + chunk]]
        out[s:s + chunk] = np.sqrt(np.einsum("ptd,ptd->pt", diff, diff)).mean(axis=1)
    return out


def _distance_scale(x: np.ndarray) -> float:
    """An upper bound on every q: 2·max‖x_t − c_t‖ (triangle inequality around the centroid)."""
    c = x.mean(axis=0, keepdims=True)
    r = np.linalg.norm(x - c, axis=2).max(axis=0).mean()
    return float(2.0 * r) if r > 0 else 1.0


# --------------------------------------------------------------------------------------------
# exact kNN (canonical ties)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KNN:
    """K nearest neighbours of every node, ordered by (rounded q, index); q canonical."""

    index: np.ndarray  # (n, K) int64
    distance: np.ndarray  # (n, K) float64
    fallback_rows: int  # rows whose float32 screen could not prove the answer (redone in float64)


def _tie_key(q: np.ndarray, quantum: float) -> np.ndarray:
    return np.rint(q / quantum)


def _canonical_topk(rows, cols, q, n_rows, k, quantum, rows_present=None):
    """Keep per row the k best candidate pairs by (rounded q, col). Rows not in ``rows_present``
    (if given) have no candidates and get placeholder output (-1, inf)."""
    order = np.lexsort((cols, _tie_key(q, quantum), rows))
    rows, cols, q = rows[order], cols[order], q[order]
    idx = np.full((n_rows, k), -1, np.int64)
    dist = np.full((n_rows, k), np.inf)
    present = np.arange(n_rows) if rows_present is None else np.flatnonzero(rows_present)
    if len(present):
        starts = np.searchsorted(rows, present)
        take = starts[:, None] + np.arange(k)[None, :]
        idx[present], dist[present] = cols[take], q[take]
    return idx, dist


def knn(x: np.ndarray, k: int, *, block_rows: int | None = None) -> KNN:
    """Exact K nearest neighbours (self excluded) of every row of x, (n, d) or (n, T, d).

    K is clamped to n − 1 (a node cannot have more neighbours than there are other nodes)."""
    x = x if x.ndim == 3 else x[:, None, :]
    n = x.shape[0]
    k = min(int(k), n - 1)
    if k <= 0:
        return KNN(np.zeros((n, 0), np.int64), np.zeros((n, 0)), 0)
    quantum = _distance_scale(x) * _TIE_GRID
    m = min(n - 1, 2 * k)  # screened candidates per row: K plus a margin for the proof below
    cap = 8 * m + 64  # more candidates than this means a big tie group: left to the float64 redo
    if x.shape[1] == 1:
        screen = _SymScreen(x)
        if block_rows is None:  # a float32 tile, its mask and temporaries within BLOCK_BYTES
            block_rows = int(np.clip(np.sqrt(BLOCK_BYTES / 12), 64, 2048))
        blocks = _screen_symmetric(screen, m, cap, block_rows)
    else:
        screen = _Screen(x)
        if block_rows is None:
            block_rows = int(np.clip(BLOCK_BYTES // (16 * n), 16, 4096))  # float64 keys + a temporary
        blocks = _screen_rows(screen, m, cap, block_rows)
    index = np.empty((n, k), np.int64)
    dist = np.empty((n, k))
    failed = []
    for rows, br, bc, ck, thr, over in blocks:
        b = len(rows)
        # Refine only what can matter: candidates whose key is within 4ε of the K-th smallest
        # candidate key (the rest are provably farther than the K-th neighbour). The proof
        # below then uses this tighter threshold.
        o = np.lexsort((ck, br))
        br, bc, ck = br[o], bc[o], ck[o]
        present = np.flatnonzero(~over)
        kth = np.full(b, np.inf)
        kth[present] = ck[np.searchsorted(br, present) + k - 1]
        thr = np.minimum(thr, kth + 4.0 * screen.error(rows))
        keep = ck <= thr[br]
        br, bc = br[keep], bc[keep]
        counts = np.bincount(br, minlength=b)
        q = pair_distances(x, rows[br], bc)
        idx_k, q_k = _canonical_topk(br, bc, q, b, k, quantum, rows_present=~over)
        index[rows], dist[rows] = idx_k, q_k
        # Proof that the screen missed nobody: every pair not refined has key > thr, hence
        # canonical q ≥ lower; it must land strictly past the K-th neighbour's tie class, or it
        # could tie it and win on index. Rows where every other node is a candidate need no proof.
        lower = screen.lower_distance(rows, thr)
        bad = over | ((_tie_key(lower, quantum) <= _tie_key(q_k[:, -1], quantum)) & (counts < n - 1))
        failed.append(rows[bad])
    failed = np.concatenate(failed) if failed else np.zeros(0, np.int64)
    if len(failed):
        idx_f, q_f = _knn_band(x, failed, k, quantum)
        index[failed], dist[failed] = idx_f, q_f
    return KNN(index, dist, int(len(failed)))


def _knn_band(x: np.ndarray, rows: np.ndarray, k: int, quantum: float, block_rows: int = 64):
    """Float64 redo for rows the float32 screen could not settle: take every point whose float64
    distance is within the error band of the K-th smallest (all members of a tie group, however
    many), then order them canonically. Slow only for rows with huge tie groups."""
    screen = _Screen(x, float64=True)
    n = x.shape[0]
    out_i, out_q = [], []
    for s in range(0, len(rows), block_rows):
        r = rows[s:s + block_rows]
        keys = screen.keys(r)  # a float64 screen computes q itself (see _Screen)
        err = screen.error(r)
        keys[np.arange(len(r)), r] = np.inf
        kth = np.partition(keys, k - 1, axis=1)[:, k - 1]
        br, bc = np.divmod(np.flatnonzero(keys <= (kth + 2.0 * err + 2.0 * quantum)[:, None]), n)
        q = pair_distances(x, r[br], bc)
        idx_k, q_k = _canonical_topk(br, bc, q, len(r), k, quantum)
        out_i.append(idx_k)
        out_q.append(q_k)
    return np.concatenate(out_i), np.concatenate(out_q)


def distance_row_blocks(x: np.ndarray):
    """Canonical q from every node to all n nodes (self included, 0), in row blocks within
    ``BLOCK_BYTES``: an (rows, n) float64 array per block, rows in order. For the all-pairs σ scale
    with T > 1, where q is a mean of norms and has no closed-form pair sum."""
    n = x.shape[0]
    screen = _Screen(x, float64=True)
    block = max(1, BLOCK_BYTES // (8 * n * x.shape[1]))
    for s in range(0, n, block):
        yield screen.keys(slice(s, min(n, s + block)))
