"""The screening engine of ``fedal.knn``: a fast float32 key per pair, rigorous bounds on its
error, and the candidates that may hold each row's K nearest (the canonical refinement in
``fedal.knn`` then proves them); ``_screen_symmetric`` serves T = 1 from half the Gram matrix."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

# Columns are screened in groups of this many; see _screen_candidates.
_GROUP = 32
# Most tiles of the symmetric screen computed at once (threads, one BLAS thread each).
_MAX_TILE_WORKERS = 2


class _Screen:
    """Fast approximate ordering keys for the kNN search, with a rigorous error bound.

    T = 1 (float32): key(a, b) = ‖b‖² − 2a·b = ‖a − b‖² − ‖a‖² (monotone in the distance for a
    fixed row a), one float32 GEMM on centred, augmented vectors [a, 1]·[−2b, ‖b‖²]. Centring
    (distances are translation invariant) shrinks the norms and hence the float32 error.
    T > 1, or ``float64=True``: the key is q itself (a mean of square roots is not monotone in
    one Gram matrix), in float64 because the square root would amplify a float32 error to
    ~sqrt(1e-7). ``error`` and ``lower_distance`` are in the units of the key.
    """

    def __init__(self, x: np.ndarray, float64: bool = False):
        self.n, self.T, self.d = x.shape
        xc = x - x.mean(axis=0, keepdims=True)
        self.sq = np.einsum("ntd,ntd->nt", xc, xc)  # ‖x_t − c_t‖², float64
        self.radius = np.sqrt(self.sq.max(axis=0))  # R_t
        self.single = self.T == 1 and not float64
        dtype = np.float32 if self.single else np.float64
        self.dtype = dtype
        self.u = float(np.finfo(dtype).eps) / 2  # unit roundoff
        ones = np.ones((self.n, self.T, 1))
        self.lhs = np.concatenate([xc, ones], axis=2).astype(dtype)  # (n, T, d+1)
        rhs = np.concatenate([-2.0 * xc, self.sq[:, :, None]], axis=2)  # (n, T, d+1)
        self.rhs_t = [np.ascontiguousarray(rhs[:, t, :].T.astype(dtype)) for t in range(self.T)]

    def keys(self, rows: slice | np.ndarray) -> np.ndarray:
        """(b, n) screening keys for a block of rows."""
        lhs = self.lhs[rows]
        if self.single:
            return lhs[:, 0, :] @ self.rhs_t[0]
        q = np.zeros((lhs.shape[0], self.n), dtype=self.dtype)
        sq_rows = self.sq[rows]
        for t in range(self.T):
            k2 = lhs[:, t, :] @ self.rhs_t[t]
            k2 += sq_rows[:, t, None]
            np.maximum(k2, 0.0, out=k2)
            q += np.sqrt(k2, out=k2)
        q /= self.T
        return q

    def error(self, rows) -> np.ndarray:
        """Per-row bound on |computed key − exact key| for every column.

        Standard dot-product bound γ_{d+1}·Σ|a_i b_i| plus the rounding of the inputs to the
        working precision: |Δ(‖b‖² − 2a·b)| ≤ (d+4)·u·(2‖a‖R + R²), with a factor 2 of safety.
        For T > 1, a squared-distance error e moves a square root by at most sqrt(e)."""
        a = np.sqrt(self.sq[rows])  # (b, T)
        e2 = 2.0 * (self.d + 4) * self.u * (2.0 * a * self.radius + self.radius**2)
        if self.single:
            return e2[:, 0]
        return np.sqrt(e2).mean(axis=1) + 1e-15 * (a + self.radius).mean(axis=1)

    def lower_distance(self, rows, key_threshold: np.ndarray) -> np.ndarray:
        """A lower bound on the canonical q of every point whose computed key ≥ key_threshold."""
        exact_key = key_threshold - self.error(rows)
        if self.single:
            q = np.sqrt(np.maximum(exact_key + self.sq[rows][:, 0], 0.0))
        else:
            q = np.maximum(exact_key, 0.0)
        return q * (1.0 - 1e-12)  # float64 rounding of the canonical difference formula


def _screen_candidates(keys: np.ndarray, m: int, cap: int):
    """Candidate pairs (row, col) holding every key ≤ a per-row threshold t ≥ the m-th smallest.

    Returns (rows, cols, candidate keys, t, over): ``over`` marks rows with more than ``cap`` candidates (big tie
    groups), whose pairs are dropped and left to the float64 redo.

    A partition of all n keys per row, or even one compare-and-collect pass over the block, costs
    as much as the GEMM that made the keys. Instead the columns are split into G groups (column j
    in group j mod G, so the group minima are a vectorised elementwise min over 32 contiguous
    slices) and t is the m-th smallest group minimum: those m minima are m keys ≤ t, so the m
    smallest keys are all ≤ t, and every key ≤ t lies in a group whose minimum is ≤ t. Only those
    groups (normally m of them) are gathered and compared."""
    b, n = keys.shape
    if n <= 4 * _GROUP * m:  # small n: plain partition and compare
        t = np.partition(keys, m - 1, axis=1)[:, m - 1]
        rows, cols = np.divmod(np.flatnonzero(keys <= t[:, None]), n)
    else:
        G = n // _GROUP
        mins = keys[:, : G * _GROUP].reshape(b, _GROUP, G).min(axis=1)
        if G * _GROUP < n:  # the last n mod 32 columns are groups of their own (no padded copy)
            mins = np.concatenate([mins, keys[:, G * _GROUP:]], axis=1)
        t = np.partition(mins, m - 1, axis=1)[:, m - 1]
        grow, grp = np.divmod(np.flatnonzero(mins <= t[:, None]), mins.shape[1])
        single = grp >= G
        cols = np.concatenate([
            (grp[~single, None] + G * np.arange(_GROUP)[None, :]).ravel(),
            grp[single] - G + G * _GROUP,
        ])
        rows = np.concatenate([np.repeat(grow[~single], _GROUP), grow[single]])
        hit = keys.ravel()[rows * n + cols] <= t[rows]
        rows, cols = rows[hit], cols[hit]
    counts = np.bincount(rows, minlength=b)
    over = counts > cap
    if over.any():
        keep = ~over[rows]
        rows, cols = rows[keep], cols[keep]
    return rows, cols, keys.ravel()[rows * n + cols], t, over


class _SymScreen:
    """Symmetric float32 screen for T = 1: key(a, b) = ‖a − b‖² = ‖a‖² + ‖b‖² − 2a·b, one float32
    GEMM on centred, augmented vectors [a, ‖a‖², 1]·[−2b, 1, ‖b‖²]. The key is symmetric in
    (a, b) and its error bound depends on the larger norm only through R, so one computed tile
    (I, J) serves both the rows of I (against the columns J) and the rows of J (against I):
    the search computes only the tiles with I ≤ J, half the GEMM work of a row-by-row screen."""

    def __init__(self, x: np.ndarray):
        self.n, _, self.d = x.shape
        xc = x[:, 0, :] - x[:, 0, :].mean(axis=0, keepdims=True)
        self.sq = np.einsum("nd,nd->n", xc, xc)  # float64
        self.radius = float(np.sqrt(self.sq.max()))
        self.u = float(np.finfo(np.float32).eps) / 2
        d = self.d
        self.lhs = np.empty((self.n, d + 2), np.float32)  # [a, ‖a‖², 1]
        self.lhs[:, :d], self.lhs[:, d], self.lhs[:, d + 1] = xc, self.sq, 1.0
        self.rhs_t = np.empty((d + 2, self.n), np.float32)  # [−2b, 1, ‖b‖²]ᵀ
        self.rhs_t[:d], self.rhs_t[d], self.rhs_t[d + 1] = xc.T, 1.0, self.sq
        self.rhs_t[:d] *= -2.0  # exact in float32: the same as rounding −2b

    def error(self, rows) -> np.ndarray:
        """Per-row bound on |computed key − ‖a − b‖²| for every column b.

        The dot product of d+2 terms has Σ|terms| ≤ 2‖a‖‖b‖ + ‖a‖² + ‖b‖² = (‖a‖ + ‖b‖)² ≤
        (‖a‖ + R)², so γ_{d+2} plus the float32 rounding of the inputs gives
        (d+4)·u·(‖a‖ + R)²; a factor 2 of safety and d+6 for the summation of the centring."""
        a = np.sqrt(self.sq[rows])
        return 2.0 * (self.d + 6) * self.u * (a + self.radius) ** 2

    def lower_distance(self, rows, key_threshold: np.ndarray) -> np.ndarray:
        """A lower bound on the canonical q of every point whose computed key ≥ key_threshold."""
        q = np.sqrt(np.maximum(key_threshold - self.error(rows), 0.0))
        return q * (1.0 - 1e-12)


def _ordered_bits(v: np.ndarray) -> np.ndarray:
    """float32 → uint64 whose unsigned order is the float order (finite values)."""
    b = v.view(np.uint32)
    return np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint64)


def _tighten(parts, m, b, tau):
    """Merge a row block's collected (row, col, key) parts and tighten its per-row thresholds
    τ (in place) to the m-th smallest collected key; drop the keys above. Every row has at
    least m collected keys, all ≤ its old τ. Returns the merged, pruned part."""
    r = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts])
    # one sort of (row, key) packed in a uint64 instead of a two-key lexsort
    packed = np.sort((r.astype(np.uint64) << np.uint64(32)) | _ordered_bits(v))
    counts = np.bincount(r, minlength=b)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    full = np.flatnonzero(counts >= m)
    bits = (packed[starts[full] + m - 1] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    bits = np.where(bits & np.uint32(0x80000000), bits & np.uint32(0x7FFFFFFF), ~bits)
    tau[full] = np.minimum(tau[full], bits.view(np.float32))
    keep = v <= tau[r]
    return [(r[keep], c[keep], v[keep])]


def _screen_symmetric(screen: "_SymScreen", m: int, cap: int, B: int):
    """Yield, per row block [s, e), the candidate pairs of _screen_candidates (every key ≤ a
    per-row threshold t that is ≥ the m-th smallest key of the row, self excluded) computing only
    the tiles I ≤ J of the key matrix.

    Each row starts with an upper bound τ on its m-th smallest key taken from a strided column
    sample (plus twice the error bound, since a tile may compute the same key differently). A
    tile keeps only keys ≤ τ of its rows (and, transposed, of its columns' rows); τ tightens to
    the m-th smallest key collected so far. Keys are never dropped if ≤ the final τ: collected
    keys are ≤ τ at their time and τ only decreases; keys not collected were > τ at their time."""
    n = screen.n
    nb = -(-n // B)
    tau0 = np.empty(n, np.float32)
    s_cols = np.unique(np.linspace(0, n - 1, min(n, 1024)).astype(np.int64))
    for s in range(0, n, B):
        e = min(n, s + B)
        kk = screen.lhs[s:e] @ screen.rhs_t[:, s_cols]
        rr, cc = np.nonzero(s_cols[None, :] == np.arange(s, e)[:, None])
        kk[rr, cc] = np.inf
        th = np.partition(kk, m - 1, axis=1)[:, m - 1].astype(np.float64)
        tau0[s:e] = (th + 2.0 * screen.error(slice(s, e))) * (1 + 1e-6)
    # Tiles are taken in the order of the first τ, so that a tile's rows (and columns) have
    # similar thresholds and the scalar prefilter below stays tight on unevenly dense data.
    perm = np.argsort(tau0, kind="stable")
    tau = tau0[perm]
    lhs = screen.lhs[perm]
    rhs_t = np.ascontiguousarray(screen.rhs_t[:, perm])
    screen.lhs = screen.rhs_t = None  # only the permuted copies are used from here on
    def tile(I, J):
        """Survivors of tile (I, J): [(block, rows in block, columns, keys)] for both sides."""
        s, e, s2, e2 = I * B, min(n, (I + 1) * B), J * B, min(n, (J + 1) * B)
        w = e2 - s2
        kt = lhs[s:e] @ rhs_t[:, s2:e2]
        if J == I:
            kt[np.arange(e - s), np.arange(e - s)] = np.inf  # self is not a neighbour
        # τ may be read while the consumer tightens it: any value read is one τ held at some
        # time, ≥ the final one, so the comparison can only keep more, never lose a key.
        ta, tb = tau[s:e].copy(), tau[s2:e2].copy()
        # One scalar compare against the largest τ of the tile's rows and columns finds a
        # (normally tiny) superset of both sides' survivors; the exact per-row tests then run
        # on that superset only. A dense superset (widely spread τ) uses two broadcasts.
        mask = kt <= max(ta.max(), tb.max())
        if np.count_nonzero(mask) <= kt.size // 16:
            flat = np.flatnonzero(mask)
            del mask
            v = kt.ravel()[flat]
            r, c = np.divmod(flat, w)
            hit = v <= ta[r]
            found = [(I, r[hit], c[hit] + s2, v[hit])]
            if J > I:
                hit = v <= tb[c]
                found.append((J, c[hit], r[hit] + s, v[hit]))
        else:
            del mask
            flat = np.flatnonzero(kt <= ta[:, None])
            r, c = np.divmod(flat, w)
            found = [(I, r, c + s2, kt.ravel()[flat])]
            if J > I:
                flat = np.flatnonzero(kt <= tb[None, :])
                r, c = np.divmod(flat, w)
                found.append((J, c, r + s, kt.ravel()[flat]))
        return found

    parts = [[] for _ in range(nb)]
    sizes = np.zeros(nb, np.int64)
    budget = 4 * m * B
    tiles = iter([(I, J) for I in range(nb) for J in range(I, nb)])
    with _tile_runner(tile, tiles) as results:
        for I in range(nb):
            s, e = I * B, min(n, (I + 1) * B)
            for J in range(I, nb):
                for blk, fr, fc, fv in next(results):
                    if len(fr):
                        lo = blk * B
                        parts[blk].append((fr, fc, fv))
                        sizes[blk] += len(fr)
                        if sizes[blk] > budget:
                            parts[blk] = _tighten(parts[blk], m, min(n, lo + B) - lo, tau[lo:lo + B])
                            sizes[blk] = len(parts[blk][0][0])
            yield _finish_block(parts, I, s, e, m, cap, tau, perm)


def _finish_block(parts, I, s, e, m, cap, tau, perm):
    """Row block I is complete: its candidates (every key ≤ its final τ), rows in original order."""
    b = e - s
    (r, c, v), = _tighten(parts[I], m, b, tau[s:e])
    parts[I] = None
    t = tau[s:e].astype(np.float64)
    counts = np.bincount(r, minlength=b)
    over = counts > cap
    if over.any():
        keep = ~over[r]
        r, c, v = r[keep], c[keep], v[keep]
    return perm[s:e], r, perm[c], v.astype(np.float64), t, over


@contextmanager
def _tile_runner(fn, tasks, batch: int = 8, reprobe: int = 32):
    """Iterator over fn(*task) for the tasks, in order, with BLAS on one thread per GEMM.

    The key GEMMs are small (one tile), and on a shared, loaded machine a multithreaded BLAS
    made them far slower than one thread (threads wait for each other inside every call). So
    the BLAS is held to one thread and, where it was allowed w ≥ 2 (and threadpoolctl is
    available), tiles run two at a time in a thread pool instead: independent tiles never wait
    for each other. Whether the pool actually beats one thread depends on how busy the cores
    are, so batches of tiles are timed both ways now and then and the faster way is used."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # pragma: no cover - keep BLAS as configured, run inline
        yield (fn(*t) for t in tasks)
        return
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    workers = max(1, min(blas + [_MAX_TILE_WORKERS]))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        def run_batch(chunk, pooled):
            if pooled:
                return [f.result() for f in [pool.submit(fn, *t) for t in chunk]]
            return [fn(*t) for t in chunk]

        def run():
            tasks_left = list(tasks)
            pooled, rate, k = False, {}, 0
            while tasks_left:
                chunk, tasks_left = tasks_left[:batch], tasks_left[batch:]
                if workers > 1 and k % reprobe < 2:  # probe: one batch each way
                    mode = k % reprobe == 1
                else:
                    mode = pooled
                t0 = time.perf_counter()
                out = run_batch(chunk, mode)
                if workers > 1 and k % reprobe < 2:
                    rate[mode] = (time.perf_counter() - t0) / len(chunk)
                    if len(rate) == 2:
                        pooled = rate[True] < 0.8 * rate[False]  # clear wins only: timings are noisy
                k += 1
                yield from out
        yield run()


def _screen_rows(screen: _Screen, m: int, cap: int, block_rows: int):
    """Row-by-row screen (T > 1): yield per row block the candidates of _screen_candidates."""
    n = screen.n
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        keys = screen.keys(slice(s, e))
        keys[np.arange(e - s), np.arange(s, e)] = np.inf  # self is not a neighbour
        br, bc, ck, thr, over = _screen_candidates(keys, m, cap)
        del keys  # free this block before the next GEMM allocates its own
        yield np.arange(s, e), br, bc, ck, thr, over
