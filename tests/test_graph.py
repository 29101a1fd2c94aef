"""Mutual kNN graph, weights, anisotropy and Laplacians (docs/method.md, "Client graph", "Local batch")."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from fedal import graph as G
from fedal import knn as KN


def brute_knn(x, k):
    """Reference: every distance by difference, order by (tie class, index)."""
    x = x if x.ndim == 3 else x[:, None, :]
    n = x.shape[0]
    quantum = KN._distance_scale(x) * KN._TIE_GRID
    idx, dist = [], []
    for s in range(0, n, 64):
        diff = x[s:s + 64, None] - x[None]  # (b, n, T, d)
        d = np.sqrt(np.einsum("bntd,bntd->bnt", diff, diff)).mean(axis=2)
        for r, z in enumerate(range(s, min(n, s + 64))):
            d[r, z] = np.inf
            o = np.lexsort((np.arange(n), np.rint(d[r] / quantum)))[:k]
            idx.append(o)
            dist.append(d[r, o])
    return np.array(idx), np.array(dist)


def test_normalize_embeddings_unit_rows_and_zero_rows_stay_zero():
    e = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    x = G.normalize_embeddings(e)
    assert x.shape == (3, 1, 2)
    np.testing.assert_allclose(x[:, 0], [[0.6, 0.8], [0, 0], [0, -1]])
    e3 = np.random.default_rng(0).standard_normal((4, 3, 5))
    e3[1, 2] = 0
    n3 = np.linalg.norm(G.normalize_embeddings(e3), axis=2)
    np.testing.assert_allclose(n3[np.arange(4) != 1], 1.0)
    assert n3[1, 2] == 0 and np.allclose(n3[1, :2], 1)


@pytest.mark.parametrize("shape", [(300, 16), (250, 3, 8), (200, 2), (40, 64)])
def test_knn_is_exact(shape):
    x = G.normalize_embeddings(np.random.default_rng(1).standard_normal(shape))
    r = KN.knn(x, 7)
    idx, dist = brute_knn(x, 7)
    np.testing.assert_array_equal(r.index, idx)
    np.testing.assert_array_equal(r.distance, dist)


def test_knn_exact_with_large_screening_blocks_and_group_trick():
    # n > 4·32·(3K) so that the grouped threshold (not a plain partition) screens the columns
    x = G.normalize_embeddings(np.random.default_rng(2).standard_normal((1500, 32)))
    r = KN.knn(x, 3, block_rows=256)
    idx, _ = brute_knn(x, 3)
    np.testing.assert_array_equal(r.index, idx)
    assert r.fallback_rows == 0


def test_knn_ties_break_to_lower_index():
    # node 0 at the origin, nodes 1..4 at distance 1, nodes 5, 6 farther: with K = 2 node 0 must
    # take 1 and 2 among the four tied ones
    x = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [3, 3], [-3, 3]], float)
    r = KN.knn(x, 2)
    assert list(r.index[0]) == [1, 2]
    # a duplicate is nearer than anyone, and duplicates tie among themselves
    x = np.array([[0.0, 0], [5, 5], [0, 0], [0, 0], [1, 0]])
    assert list(KN.knn(x, 2).index[0]) == [2, 3]


def test_knn_huge_tie_groups_fall_back_to_float64_and_stay_exact():
    # ±e_i in 150 dimensions: every pair is at √2 (or 2 for opposite pairs), the origin is at 1
    # from all of them. The float32 screen cannot order these, so the rows go to the float64 band.
    d = 150
    x = np.vstack([np.zeros(d), np.eye(d), -np.eye(d)])
    r = KN.knn(x, 7)
    idx, dist = brute_knn(x, 7)
    assert r.fallback_rows > 0
    np.testing.assert_array_equal(r.index, idx)
    np.testing.assert_array_equal(r.distance, dist)
    assert list(r.index[0]) == list(range(1, 8))  # origin: the lowest indices among 300 ties


@pytest.mark.parametrize("shape", [(200, 8), (150, 2, 6)])
def test_float64_redo_is_exact_on_its_own(shape):
    # the redo path normally sees only rows with big tie groups; run it on every row of generic
    # data so that its distances, band and ordering are checked against brute force
    x = G.normalize_embeddings(np.random.default_rng(10).standard_normal(shape))
    quantum = KN._distance_scale(x) * KN._TIE_GRID
    idx, dist = KN._knn_band(x, np.arange(len(x)), 7, quantum, block_rows=37)
    want_i, want_d = brute_knn(x, 7)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)


def test_knn_duplicates_exact():
    base = np.random.default_rng(3).standard_normal((30, 6))
    x = np.repeat(base, 12, axis=0)  # 12 copies each: tie groups larger than K
    r = KN.knn(x, 7)
    idx, _ = brute_knn(x, 7)
    np.testing.assert_array_equal(r.index, idx)


def test_knn_clamps_k_for_small_graphs():
    x = np.random.default_rng(0).standard_normal((4, 3))
    r = KN.knn(x, 7)
    assert r.index.shape == (4, 3)
    assert KN.knn(x[:1], 7).index.shape == (1, 0)


def test_mutual_knn_edges_are_mutual_and_outlier_is_isolated():
    rng = np.random.default_rng(4)
    x = np.vstack([rng.normal(0, 0.1, (30, 3)), [[50.0, 50.0, 50.0]]])
    e = G.mutual_knn(x, 5)
    nn = KN.knn(x, 5).index
    assert np.all(e.i < e.j)
    for i, j in zip(e.i, e.j):
        assert j in nn[i] and i in nn[j]
    # and every mutual pair is an edge
    pairs = set(zip(e.i.tolist(), e.j.tolist()))
    for i in range(len(x)):
        for j in nn[i]:
            if i in nn[j]:
                assert (min(i, j), max(i, j)) in pairs
    assert 30 not in e.i and 30 not in e.j  # the outlier has no mutual neighbour
    np.testing.assert_allclose(e.q, np.linalg.norm(x[e.i] - x[e.j], axis=1))


def test_k_at_least_m_minus_1_gives_the_complete_graph():
    x = np.random.default_rng(5).standard_normal((5, 3))
    assert len(G.mutual_knn(x, 4)) == 10
    assert len(G.mutual_knn(x, 100)) == 10


def test_sigma_w2_edges_and_all_pairs():
    rng = np.random.default_rng(6)
    for shape in [(40, 5), (40, 2, 5)]:
        x = G.normalize_embeddings(rng.standard_normal(shape))
        e = G.mutual_knn(x, 4)
        assert G.sigma_w2(x, e, "edges") == pytest.approx(np.mean(e.q**2))
        n = x.shape[0]
        iu = np.triu_indices(n, 1)
        q = KN.pair_distances(x, iu[0], iu[1])
        assert G.sigma_w2(x, e, "all") == pytest.approx(np.mean(q**2), rel=1e-10)


def test_gaussian_weights_eq9_and_zero_scale_limit():
    q = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(G.gaussian_weights(q, 0.5), np.exp(-(q**2) / 0.5))
    np.testing.assert_array_equal(G.gaussian_weights(np.zeros(3), 0.0), 1.0)


def test_anisotropy_rho_zero_and_first_round_are_isotropic():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 4))
    e = G.mutual_knn(x, 5)
    dg = rng.standard_normal(30)
    gamma, s2 = G.anisotropy(dg, e, 0.0, "edges")
    assert np.all(gamma == 1.0) and s2 == np.inf
    gamma, _ = G.anisotropy(np.zeros(30), e, 0.2, "edges")  # no change in entropy anywhere
    assert np.all(gamma == 1.0)
    gamma, s2 = G.anisotropy(dg, e, 0.2, "edges")
    diff2 = (dg[e.i] - dg[e.j]) ** 2
    assert s2 == pytest.approx(diff2.mean() / 0.2)
    np.testing.assert_allclose(gamma, np.exp(-diff2 / s2))
    _, s2all = G.anisotropy(dg, e, 0.5, "all")
    iu = np.triu_indices(30, 1)
    assert s2all == pytest.approx(np.mean((dg[iu[0]] - dg[iu[1]]) ** 2) / 0.5)


def _graph(n=40, seed=8):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.standard_normal((n, 3)), [[40.0, 0, 0]]])  # last node isolated
    e = G.mutual_knn(x, 5)
    return e, rng.random(len(e)) + 0.1


def test_unnormalized_laplacian_columns_sum_to_zero_and_is_symmetric():
    e, w = _graph()
    L = G.laplacian(e, w)
    np.testing.assert_allclose(np.asarray(L.sum(axis=0)).ravel(), 0, atol=1e-12)
    assert abs(L - L.T).max() == 0
    deg = np.bincount(e.i, w, e.n) + np.bincount(e.j, w, e.n)
    np.testing.assert_allclose(L.diagonal(), deg)
    assert L[-1].nnz == 0  # isolated node: no diffusion


def test_normalized_laplacians():
    e, w = _graph()
    W = sp.coo_matrix((np.r_[w, w], (np.r_[e.i, e.j], np.r_[e.j, e.i])), shape=(e.n, e.n)).toarray()
    deg = W.sum(axis=0)
    Lrw = G.laplacian(e, w, "rw").toarray()
    Lsym = G.laplacian(e, w, "sym").toarray()
    nz = deg > 0
    np.testing.assert_allclose(Lrw[nz], (np.eye(e.n) - W / np.where(nz, deg, 1)[:, None])[nz], atol=1e-12)
    np.testing.assert_allclose(Lrw.sum(axis=1), 0, atol=1e-12)  # rows, not columns
    np.testing.assert_allclose(Lsym, Lsym.T, atol=1e-14)
    s = np.where(nz, 1 / np.sqrt(np.where(nz, deg, 1)), 0)
    np.testing.assert_allclose(Lsym[nz][:, nz], (np.eye(e.n) - s[:, None] * W * s[None, :])[nz][:, nz], atol=1e-12)
    assert not Lrw[-1].any() and not Lsym[-1].any()
    with pytest.raises(ValueError, match="laplacian"):
        G.laplacian(e, w, "normalized")


def test_delta_stable_range():
    e, w = _graph()
    L = G.laplacian(e, w)
    dmax = L.diagonal().max()
    P = G.diffusion_operator(L, 1 / dmax)  # the boundary is allowed: P ≥ 0
    assert P.min() >= -1e-15
    np.testing.assert_allclose(np.asarray(P.sum(axis=0)).ravel(), 1, atol=1e-12)
    for bad in (1.01 / dmax, 0.0, -0.1, np.nan, np.inf, "0.1", True):
        with pytest.raises(ValueError, match="delta"):
            G.diffusion_operator(L, bad)
    with pytest.raises(ValueError, match=r"\(0, "):
        G.diffusion_operator(L, 1.01 / dmax)
    # no edges: L = 0, any positive step is stable
    empty = G.laplacian(G.Edges(3, np.zeros(0, int), np.zeros(0, int), np.zeros(0)), np.zeros(0))
    assert (G.diffusion_operator(empty, 5.0) != sp.identity(3)).nnz == 0
    # normalised Laplacians: L_zz = 1, so δ ≤ 1
    G.diffusion_operator(G.laplacian(e, w, "rw"), 1.0)
    with pytest.raises(ValueError, match="delta"):
        G.diffusion_operator(G.laplacian(e, w, "sym"), 1.5)


def test_knn_memory_is_blockwise_not_n_squared(monkeypatch):
    monkeypatch.setattr(KN, "BLOCK_BYTES", 1 << 21)
    n = 4001
    x = G.normalize_embeddings(np.random.default_rng(9).standard_normal((n, 16)))
    tracemalloc.start()
    G.mutual_knn(x, 7)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 4 / 8, peak  # a dense float32 n×n matrix alone would be 64 MB


def _uneven_clusters(seed):
    # tight clusters, loose clusters, scattered points and exact duplicates: per-row thresholds
    # that differ by orders of magnitude, tie groups larger than K, rows spread over many tiles
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((300, 12)) * 0.01 + 3, rng.standard_normal((300, 12)) * 0.3 - 2,
             rng.standard_normal((400, 12)) * 4, np.repeat(rng.standard_normal((20, 12)), 10, axis=0)]
    x = np.vstack(parts)
    return x[rng.permutation(len(x))]


@pytest.mark.parametrize("block_rows", [37, 64, 256])
def test_symmetric_screen_exact_across_tiles(block_rows):
    # the T = 1 screen computes only tiles I ≤ J and serves the rows of J from the transpose;
    # small tiles make every row collect candidates from many tiles, in both roles, tighten its
    # threshold repeatedly, and take the dense (broadcast) survivor path on uneven data
    x = _uneven_clusters(block_rows)
    r = KN.knn(x, 7, block_rows=block_rows)
    idx, dist = brute_knn(x, 7)
    np.testing.assert_array_equal(r.index, idx)
    np.testing.assert_array_equal(r.distance, dist)


def test_symmetric_screen_tie_groups_across_tiles_fall_back_exactly():
    d = 60
    x = np.vstack([np.zeros(d), np.eye(d), -np.eye(d), np.eye(d)])  # ties and duplicates
    r = KN.knn(x, 7, block_rows=32)
    idx, dist = brute_knn(x, 7)
    assert r.fallback_rows > 0
    np.testing.assert_array_equal(r.index, idx)
    np.testing.assert_array_equal(r.distance, dist)


def test_symmetric_screen_same_result_with_tile_threads():
    # with BLAS allowed two threads the tiles may run two at a time in a thread pool (timed
    # against one thread, batch by batch); force both ways and compare with brute force
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = G.normalize_embeddings(_uneven_clusters(5))
    want = brute_knn(x, 7)
    for limit in (1, 2):
        with threadpoolctl.threadpool_limits(limit, user_api="blas"):
            r = KN.knn(x, 7, block_rows=48)
        np.testing.assert_array_equal(r.index, want[0])
        np.testing.assert_array_equal(r.distance, want[1])
