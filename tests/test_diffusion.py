"""Impact, score and greedy selection (docs/method.md, "Impact, score, greedy", "Local batch"): closed form against the literal Algorithm 1."""

import tracemalloc

import numpy as np
import pytest

from fedal import diffusion as D
from fedal import graph as G
from fedal import knn as KN


def random_clients(M=50, d=6, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((M, d))
    g = rng.random(M)
    prev = g + 0.3 * rng.standard_normal(M)
    return emb, g, prev


# --------------------------------------------------------------------------------------------
# closed form = literal Algorithm 1
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("laplacian", ["unnormalized", "rw", "sym"])
@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_closed_form_impact_equals_literal_loop(laplacian, anisotropic, steps):
    for seed in range(3):
        emb, g, prev = random_clients(seed=seed)
        prev = prev if anisotropic else None
        graph, _ = D.client_graph(emb, g, prev, laplacian=laplacian)
        v = D.client_impact(emb, g, prev, laplacian=laplacian, steps=steps)
        v_lit = D.literal_impact(graph.L.toarray(), g, delta=0.1, steps=steps)  # dense L
        np.testing.assert_allclose(v, v_lit, rtol=0, atol=1e-9)


@pytest.mark.parametrize("laplacian", ["unnormalized", "rw", "sym"])
def test_greedy_picks_and_scores_equal_literal_algorithm_1(laplacian):
    emb, g, prev = random_clients(M=60, seed=4)
    elig = np.ones(60, bool)
    elig[::7] = False
    sel = D.select_clients(emb, g, prev, n=12, eligible=elig, laplacian=laplacian)
    graph, _ = D.client_graph(emb, g, prev, laplacian=laplacian)
    lit = D.literal_select_clients(graph.L.toarray(), g, 12, eligible=elig)
    np.testing.assert_array_equal(sel.order, lit.order)
    np.testing.assert_allclose(sel.scores, lit.scores, atol=1e-9)
    np.testing.assert_allclose(sel.impacts, lit.impacts, atol=1e-9)
    np.testing.assert_allclose(sel.chosen_scores, sel.scores[np.arange(12), sel.order])


@pytest.mark.parametrize("scope", ["edges", "all"])
def test_sigma_scope_and_epochs_keep_closed_form_equal_to_literal(scope):
    rng = np.random.default_rng(19)
    emb = rng.standard_normal((45, 2, 6))  # T = 2 late epochs
    g = rng.random(45)
    prev = g + 0.2 * rng.standard_normal(45)
    graph, _ = D.client_graph(emb, g, prev, sigma_scope=scope)
    np.testing.assert_allclose(
        D.client_impact(emb, g, prev, sigma_scope=scope),
        D.literal_impact(graph.L.toarray(), g), atol=1e-9,
    )
    other, _ = D.client_graph(emb, g, prev, sigma_scope="all" if scope == "edges" else "edges")
    assert other.sigma_w2 != graph.sigma_w2


def test_anisotropy_changes_the_graph_and_literal_still_agrees():
    emb, g, prev = random_clients(M=40, seed=5)
    iso, _ = D.client_graph(emb, g, None)
    ani, _ = D.client_graph(emb, g, prev)
    assert np.all(ani.weights <= iso.weights) and np.any(ani.weights < iso.weights)
    assert np.isfinite(ani.sigma_gamma2)


def test_diffusion_preserves_mass_at_every_step():
    emb, g, prev = random_clients(M=80, seed=6)
    for p in (None, prev):
        graph, _ = D.client_graph(emb, g, p)
        x = g.copy()
        for _ in range(5):
            x = graph.P @ x
            assert x.sum() == pytest.approx(g.sum(), rel=1e-13)
        assert graph.P.min() >= 0  # δ in the stable range: values stay non-negative


def test_diag_of_power_matches_dense_power():
    emb, g, prev = random_clients(M=70, seed=7)
    for lap in ("unnormalized", "rw"):
        graph, _ = D.client_graph(emb, g, prev, laplacian=lap)
        Pd = graph.P.toarray()
        for H in range(0, 7):
            want = np.diag(np.linalg.matrix_power(Pd, H))
            np.testing.assert_allclose(D.diag_of_power(graph.P, H, block_rows=16), want, atol=1e-13)


# --------------------------------------------------------------------------------------------
# the behaviour the method exists for (paper Fig. 1 and its Discussion)
# --------------------------------------------------------------------------------------------
def figure1(seed, mirrored):
    """Two dense clusters of 20 clients (around e_0 and e_1) and one isolated client (e_2) with
    the highest entropy 1.1; the others have entropies in [0, 1] (the paper's Discussion)."""
    rng = np.random.default_rng(seed)
    A = np.zeros((20, 8))
    A[:, 0] = 1
    A += 0.1 * rng.standard_normal(A.shape)
    gA = rng.random(20)
    if mirrored:  # cluster B is the mirror image of A (axes 0 and 1 swapped), same entropies
        B, gB = A[:, [1, 0, 2, 3, 4, 5, 6, 7]], gA
    else:
        B = np.zeros((20, 8))
        B[:, 1] = 1
        B += 0.1 * rng.standard_normal(B.shape)
        gB = rng.random(20)
    iso = np.eye(8)[[2]]
    return np.vstack([A, B, iso]), np.concatenate([gA, gB, [1.1]])


def test_isolated_client_has_zero_impact():
    emb, g = figure1(0, mirrored=False)
    graph, _ = D.client_graph(emb, g)
    assert graph.L[40].nnz == 0  # isolated in the mutual kNN graph
    assert D.client_impact(emb, g)[40] == 0.0
    assert D.client_impact(emb, g, prev_entropy=g * 0.9)[40] == 0.0
    # (The normalised ablations do not preserve mass, so Eq. 11 taken literally also counts the
    # mass the other nodes gain or lose by themselves; an isolated node's v is that background.)


@pytest.mark.parametrize("seed", range(20))
def test_figure1_diffusion_never_picks_the_isolated_client_first_entropy_does(seed):
    emb, g = figure1(seed, mirrored=False)
    assert np.argmax(g) == 40  # entropy selection (top mean entropy) picks the outlier ...
    assert D.select_clients(emb, g, n=1, steps=0).order[0] == 40  # ... as does H = 0 (v ≡ 0)
    assert D.select_clients(emb, g, n=1).order[0] != 40  # diffusion does not


@pytest.mark.parametrize("seed", range(10))
def test_figure1_second_pick_comes_from_the_other_cluster(seed):
    # With identical (mirrored) clusters the first pick is tied between A and B (→ A, lower
    # index); zeroing its g lowers the impact of its neighbours only, so B wins the second pick.
    emb, g = figure1(seed, mirrored=True)
    order = D.select_clients(emb, g, n=3).order
    assert order[0] < 20 and 20 <= order[1] < 40
    assert 40 not in order[:2]


# --------------------------------------------------------------------------------------------
# determinism, ties, eligibility, budgets
# --------------------------------------------------------------------------------------------
def test_rho_zero_and_first_round_are_isotropic():
    emb, g, prev = random_clients(seed=8)
    iso, _ = D.client_graph(emb, g, None)
    rho0, _ = D.client_graph(emb, g, prev, rho=0.0)
    same, _ = D.client_graph(emb, g, g.copy())  # δ_g ≡ 0: no previous change anywhere
    np.testing.assert_array_equal(rho0.weights, iso.weights)
    np.testing.assert_array_equal(same.weights, iso.weights)
    np.testing.assert_array_equal(
        D.select_clients(emb, g, prev, n=8, rho=0.0).order, D.select_clients(emb, g, n=8).order
    )


def test_ties_resolve_to_the_lower_index():
    # identical clients: every score ties, so the order is 0, 1, 2, ... (eligible ones only)
    emb = np.ones((10, 4))
    g = np.full(10, 0.5)
    assert list(D.select_clients(emb, g, n=10).order) == list(range(10))
    assert list(D.select_clients(emb, g, n=3, eligible=[7, 2, 9]).order) == [2, 7, 9]
    # a symmetric ring: every client is equivalent, rounding noise must not decide
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.c_[np.cos(t), np.sin(t), np.ones(24)]
    assert D.select_clients(ring, np.full(24, 0.3), n=1, k=2).order[0] == 0


def test_results_are_identical_across_runs():
    emb, g, prev = random_clients(M=300, d=16, seed=9)
    a = D.select_clients(emb, g, prev, n=20)
    b = D.select_clients(emb.copy(), g.copy(), prev.copy(), n=20)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_first_picks_do_not_depend_on_n():
    emb, g, prev = random_clients(M=100, seed=10)
    full = D.select_clients(emb, g, prev, n=30).order
    for n in (0, 1, 5, 17):
        np.testing.assert_array_equal(D.select_clients(emb, g, prev, n=n).order, full[:n])


def test_eligible_mask_or_indices_and_ineligible_clients_still_diffuse():
    emb, g, prev = random_clients(M=60, seed=11)
    idx = np.arange(0, 60, 3)
    mask = np.zeros(60, bool)
    mask[idx] = True
    a = D.select_clients(emb, g, prev, n=len(idx), eligible=mask)
    b = D.select_clients(emb, g, prev, n=len(idx), eligible=idx)
    np.testing.assert_array_equal(a.order, b.order)
    assert set(a.order) == set(idx)
    # the ineligible clients are still in the graph: their entropy moves the eligible impacts
    v_all = D.client_impact(emb, g, prev)
    g2 = g.copy()
    g2[~mask] = 0
    assert not np.allclose(D.client_impact(emb, g2, prev)[mask], v_all[mask])
    with pytest.raises(ValueError, match=r"n = 21 is invalid; valid: an integer in \[0, 20\]"):
        D.select_clients(emb, g, prev, n=21, eligible=idx)


def test_steps_zero_is_entropy_selection():
    emb, g, prev = random_clients(M=40, seed=12)
    order = D.select_clients(emb, g, prev, n=40, steps=0).order
    np.testing.assert_array_equal(order, np.argsort(-g, kind="stable"))


def test_small_graphs_are_handled():
    assert list(D.select_clients(np.ones((1, 3)), [0.7], n=1).order) == [0]
    sel = D.select_clients(np.eye(3), [0.1, 0.9, 0.5], n=3, k=7)  # K ≥ M − 1: complete graph
    assert sorted(sel.order) == [0, 1, 2]
    assert len(D.select_clients(np.eye(3), [0.1, 0.9, 0.5], n=0).order) == 0


def test_embeddings_with_epochs_average_distances_over_t():
    rng = np.random.default_rng(13)
    e = rng.standard_normal((30, 3, 5))
    g = rng.random(30)
    graph, _ = D.client_graph(e, g)
    x = G.normalize_embeddings(e)
    want = np.mean([np.linalg.norm(x[graph.edges.i, t] - x[graph.edges.j, t], axis=1) for t in range(3)], axis=0)
    np.testing.assert_allclose(graph.edges.q, want, rtol=1e-13)
    # T = 1 given as (M, 1, d) is the same as (M, d); the scale of a row does not matter
    e2 = rng.standard_normal((30, 5))
    np.testing.assert_array_equal(
        D.select_clients(e2, g, n=5).order, D.select_clients(3.0 * e2[:, None, :], g, n=5).order
    )


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _bad_client_calls():
    emb, g, prev = random_clients(M=20, seed=14)
    nan = emb.copy()
    nan[3, 1] = np.nan
    gn = g.copy()
    gn[0] = np.nan
    return [
        ("embeddings", dict(embeddings=nan)),
        ("embeddings", dict(embeddings=np.ones(20))),
        ("entropy", dict(entropy=gn)),
        ("entropy", dict(entropy=g[:19])),
        ("prev_entropy", dict(prev_entropy=np.r_[prev[:19], np.inf])),
        ("prev_entropy", dict(prev_entropy=prev[:5])),
        ("n", dict(n=21)),
        ("n", dict(n=-1)),
        ("n", dict(n=2.0)),
        ("n", dict(n=3, eligible=[1, 2])),
        ("eligible", dict(eligible=np.ones(19, bool))),
        ("eligible", dict(eligible=[0, 25])),
        ("k", dict(k=0)),
        ("k", dict(k=2.5)),
        ("delta", dict(delta=2.0)),
        ("delta", dict(delta=0.0)),
        ("delta", dict(delta=np.nan)),
        ("steps", dict(steps=-1)),
        ("rho", dict(rho=-0.1)),
        ("rho", dict(rho=np.nan)),
        ("sigma_scope", dict(sigma_scope="pairs")),
        ("laplacian", dict(laplacian="normalized")),
    ], (emb, g, prev)


@pytest.mark.parametrize("case", range(22))
def test_bad_input_raises_value_error_naming_the_argument(case):
    calls, (emb, g, prev) = _bad_client_calls()
    name, kw = calls[case]
    args = dict(embeddings=emb, entropy=g, prev_entropy=prev, n=3)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        D.select_clients(args.pop("embeddings"), args.pop("entropy"), args.pop("prev_entropy"), **args)


def test_delta_error_states_the_stable_range():
    emb, g, _ = random_clients(M=30, seed=15)
    with pytest.raises(ValueError, match=r"delta=0\.5 is outside the stable range \(0, [0-9.]+\]"):
        D.client_impact(emb, g, delta=0.5)


def test_bad_point_inputs():
    x = np.random.default_rng(16).standard_normal((30, 4))
    k = np.random.default_rng(16).random(30)
    lab = np.zeros(30, bool)
    lab[:25] = True
    for name, call in [
        ("n", lambda: D.select_points(x, k, lab, n=6)),
        ("features", lambda: D.select_points(x[:, :, None], k, lab, n=1)),
        ("features", lambda: D.select_points(np.where(x > 1, np.nan, x), k, lab, n=1)),
        ("entropy", lambda: D.select_points(x, k[:29], lab, n=1)),
        ("labeled", lambda: D.select_points(x, k, lab[:29], n=1)),
        ("k", lambda: D.select_points(x, k, lab, n=1, k=0)),
        ("delta", lambda: D.select_points(x, k, lab, n=1, delta=-1)),
    ]:
        with pytest.raises(ValueError, match=name):
            call()


# --------------------------------------------------------------------------------------------
# local batch (docs/method.md, "Local batch")
# --------------------------------------------------------------------------------------------
def test_select_points_equals_literal_on_its_graph_and_labeled_carry_zero():
    rng = np.random.default_rng(17)
    x = np.vstack([rng.normal(0, 1, (60, 5)), rng.normal(4, 1, (60, 5))])
    k = rng.random(120)
    lab = rng.random(120) < 0.3
    picks = D.select_points(x, k, lab, n=15)
    assert not lab[picks].any() and len(set(picks)) == 15
    graph = G.build_graph(x, k=7, delta=0.1)
    lit = D.literal_select_clients(graph.L.toarray(), np.where(lab, 0, k), 15, eligible=~lab)
    np.testing.assert_array_equal(picks, lit.order)
    # labeled values are ignored (they carry 0), as a mask or as indices
    k2 = np.where(lab, 5.0, k)
    np.testing.assert_array_equal(D.select_points(x, k2, np.flatnonzero(lab), n=15), picks)
    full = D.select_points(x, k, lab, n=15, return_scores=True)
    np.testing.assert_array_equal(full.order, picks)
    assert full.scores.shape == (15, 120)
    np.testing.assert_allclose(full.chosen_scores, full.scores[np.arange(15), picks])


def test_select_points_has_no_n_by_n_matrix(monkeypatch):
    monkeypatch.setattr(KN, "BLOCK_BYTES", 1 << 21)
    n = 4000
    rng = np.random.default_rng(18)
    x = rng.standard_normal((n, 16))
    k = rng.random(n)
    tracemalloc.start()
    D.select_points(x, k, np.zeros(n, bool), n=20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 8 / 8, peak  # a dense float64 n×n matrix alone would be 128 MB


# --------------------------------------------------------------------------------------------
# the benchmark's core cannot rot
# --------------------------------------------------------------------------------------------
def test_benchmark_quick_core_runs_on_small_m():
    from simulations.benchmarks import bench_selection as B

    row = B.compare_with_literal(300, seed=0, dense_sample=5)
    assert row["identical_picks"] and row["literal_s"] > 0 and row["closed_s"] > 0
    assert row["max_score_diff"] < 1e-9 and row["dense_literal_est_s"] > 0
    row = B.time_select_clients(500, seed=0)
    assert row["M"] == 500 and row["seconds"] > 0 and row["peak_mb"] > 0 and row["deterministic"]
    assert B.time_select_points(400, seed=0, n=10)["deterministic"]
