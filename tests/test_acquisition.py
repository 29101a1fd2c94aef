"""Point acquisition strategies (fedal.acquisition): the shared contract on every registered
strategy, then one small hand-made case per strategy showing the behaviour it exists for."""

import numpy as np
import pytest

from fedal import acquisition as A
from fedal.acquisition.boundary import boundary_distances
from fedal.uncertainty import entropy

ALL_NAMES = [
    "random", "entropy", "margin", "least-confidence", "badge", "hybrid", "logo", "mase",
    "base", "coreset", "diffusion",
]


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def random_view(n=60, n_classes=4, d=5, n_labeled=10, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d))
    w, b = rng.normal(size=(n_classes, d)), rng.normal(size=n_classes)
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    return A.LocalView(
        probs=softmax(emb @ w.T + b),
        embeddings=emb,
        labeled=labeled,
        head_weight=w,
        head_bias=b,
        inputs=rng.normal(size=(n, 2, 3)),
        labels=np.where(labeled, rng.integers(n_classes, size=n), -1),
        local_probs=softmax(rng.normal(size=(n, n_classes))),
        local_embeddings=rng.normal(size=(n, 3)),
    )


def view_from(probs, emb=None, labeled=None, w=None, b=None, **extra):
    probs = np.asarray(probs, dtype=float)
    n, c = probs.shape
    emb = np.zeros((n, 2)) if emb is None else np.asarray(emb, dtype=float)
    return A.LocalView(
        probs=probs,
        embeddings=emb,
        labeled=np.zeros(n, dtype=bool) if labeled is None else np.asarray(labeled),
        head_weight=np.zeros((c, emb.shape[1])) if w is None else w,
        head_bias=np.zeros(c) if b is None else b,
        **extra,
    )


def strategy(name, **params):
    if name == "diffusion":
        pytest.importorskip("fedal.diffusion")
    return A.get(name, **params)


def select(name, view, n, seed=0, **params):
    return strategy(name, **params).select(view, n, np.random.default_rng(seed))


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_strategy():
    assert sorted(A.available()) == sorted(ALL_NAMES)


def test_unknown_name_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown point strategy 'nope'") as err:
        A.get("nope")
    for name in ALL_NAMES:
        assert name in str(err.value)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="bogus.*accepted: c"):
        A.get("hybrid", bogus=1)
    with pytest.raises(ValueError, match="no parameter"):
        A.get("entropy", c=3)
    with pytest.raises(ValueError, match="c must be"):
        A.get("hybrid", c=0.5)
    with pytest.raises(ValueError, match="space"):
        A.get("diffusion", space="pixels")
    with pytest.raises(ValueError, match="without_local_model"):
        A.get("logo", without_local_model="maybe")


def test_only_logo_needs_a_local_model():
    assert {n for n in ALL_NAMES if A.get(n).needs_local_model} == {"logo"}


# --- the contract, on every strategy ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_n_unique_unlabeled_points(name):
    view = random_view()
    sel = select(name, view, 7)
    assert sel.indices.shape == (7,) and sel.utilities.shape == (7,)
    assert np.unique(sel.indices).size == 7
    assert not view.labeled[sel.indices].any()
    assert np.all((sel.indices >= 0) & (sel.indices < view.n_points))
    assert not np.isnan(sel.utilities).any()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_deterministic_under_the_same_seed(name):
    view = random_view(seed=3)
    a, b = select(name, view, 9, seed=42), select(name, view, 9, seed=42)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.utilities, b.utilities)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_whole_pool_then_exhausted(name):
    view = random_view(n=30, n_labeled=12)
    pool = view.pool
    sel = select(name, view, pool.size)
    assert sorted(sel.indices) == list(pool)
    with pytest.raises(A.PoolExhausted, match=f"n={pool.size + 1}.*only {pool.size}") as err:
        select(name, view, pool.size + 1)
    assert isinstance(err.value, ValueError)
    assert (err.value.n, err.value.pool_size) == (pool.size + 1, pool.size)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_holds_on_a_degenerate_pool(name):
    # A fully confident model (one-hot probabilities, so every gradient embedding is 0), one
    # repeated embedding and a zero head (no decision boundary exists): every score ties.
    n = 12
    probs = np.tile([1.0, 0.0, 0.0], (n, 1))
    labeled = np.zeros(n, dtype=bool)
    labeled[[2, 5]] = True
    view = view_from(probs, emb=np.ones((n, 4)), labeled=labeled, inputs=np.ones((n, 3)),
                     local_probs=probs, local_embeddings=np.ones((n, 4)))
    sel = select(name, view, 6)
    assert np.unique(sel.indices).size == 6 and not labeled[sel.indices].any()
    np.testing.assert_array_equal(sel.indices, select(name, view, 6).indices)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_contract_n_must_be_a_positive_integer(name, bad):
    with pytest.raises(ValueError, match=r"n = .* is invalid; valid: an integer in \[1, ∞\]"):
        select(name, random_view(), bad)


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        A.get("random").select(random_view(), 3, 0)


# --- LocalView validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, bad",
    [
        ("probs", np.ones(6)),
        ("probs", -np.ones((6, 3))),
        ("embeddings", np.ones((5, 2))),
        ("labeled", np.zeros(6, dtype=int)),
        ("labeled", np.zeros(5, dtype=bool)),
        ("head_weight", np.ones((2, 2))),
        ("head_bias", np.ones(2)),
        ("inputs", np.ones((5, 4))),
        ("labels", np.zeros(6, dtype=int)),  # unlabeled points must carry -1
        ("labels", np.full(6, -1.0)),
    ],
)
def test_local_view_names_the_bad_field(field, bad):
    good = dict(
        probs=np.full((6, 3), 1 / 3),
        embeddings=np.ones((6, 2)),
        labeled=np.zeros(6, dtype=bool),
        head_weight=np.ones((3, 2)),
        head_bias=np.ones(3),
    )
    with pytest.raises(ValueError, match=field):
        A.LocalView(**{**good, field: bad})


def test_local_view_wants_both_local_arrays_or_neither():
    v = random_view()
    with pytest.raises(ValueError, match="local_probs and local_embeddings"):
        A.LocalView(v.probs, v.embeddings, v.labeled, v.head_weight, v.head_bias,
                    local_probs=v.local_probs)
    with pytest.raises(ValueError, match="local_probs"):
        A.LocalView(v.probs, v.embeddings, v.labeled, v.head_weight, v.head_bias,
                    local_probs=v.local_probs[:, :2], local_embeddings=v.local_embeddings)


# --- uncertainty ranking ----------------------------------------------------------------------

# margins (p1 − p2): 0.85, 0.05, 0.10, 0.01, 0.21 ; 1 − max p: 0.10, 0.50, 0.60, 0.66, 0.40
UNCERTAIN = [[0.9, 0.05, 0.05], [0.5, 0.45, 0.05], [0.4, 0.3, 0.3], [0.34, 0.33, 0.33],
             [0.6, 0.39, 0.01]]


def test_margin_picks_the_points_closest_to_the_boundary():
    sel = select("margin", view_from(UNCERTAIN), 2)
    assert list(sel.indices) == [3, 1]
    np.testing.assert_allclose(sel.utilities, [-0.01, -0.05])


def test_entropy_and_least_confidence_pick_the_most_uncertain():
    for name in ("entropy", "least-confidence"):
        assert list(select(name, view_from(UNCERTAIN), 2).indices) == [3, 2], name
    # the labeled point is skipped, the next most uncertain takes its place
    labeled = np.array([False, False, False, True, False])
    assert list(select("entropy", view_from(UNCERTAIN, labeled=labeled), 2).indices) == [2, 1]
    assert list(select("margin", view_from(UNCERTAIN, labeled=labeled), 2).indices) == [1, 2]


def test_ties_go_to_the_lower_index():
    probs = np.full((6, 2), 0.5)
    for name in ("entropy", "margin", "least-confidence"):
        assert list(select(name, view_from(probs), 3).indices) == [0, 1, 2]


# --- MASE / BASE ------------------------------------------------------------------------------


def test_boundary_distance_is_the_step_that_ties_the_logits():
    rng = np.random.default_rng(1)
    w, b, z = rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=(20, 3))
    dist, y_hat = boundary_distances(z, w, b)
    assert np.all(np.isinf(dist[np.arange(20), y_hat]))
    for i in range(20):
        for c in range(4):
            if c == y_hat[i]:
                continue
            normal = (w[y_hat[i]] - w[c]) / np.linalg.norm(w[y_hat[i]] - w[c])
            moved = z[i] - dist[i, c] * normal
            logits = moved @ w.T + b
            assert logits[y_hat[i]] == pytest.approx(logits[c], abs=1e-9)


def three_class_fan():
    """Head rows at 0°, 120°, 240° (bisectors at 60°, 180°, 300°). Eight points just below 60°
    (predicted 0) and eight just above (predicted 1), at radius 5, crowd the 0–1 boundary;
    three class-2 points sit deep inside their sector at radius 1 (0.87 from any boundary)."""
    angles = np.deg2rad([0, 120, 240])
    w = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    deg = np.r_[60 - np.arange(1, 9), 60 + np.arange(1.5, 9.5), 240, 235, 245]
    radius = np.r_[np.full(16, 5.0), np.ones(3)]
    emb = radius[:, None] * np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], axis=1)
    probs = softmax(emb @ w.T)
    return view_from(probs, emb=emb, w=w, b=np.zeros(3)), np.argmax(emb @ w.T, axis=1)


def test_base_balances_classes_where_mase_and_margin_do_not():
    view, y_hat = three_class_fan()
    assert np.bincount(y_hat).tolist() == [8, 8, 3]
    base = select("base", view, 6)
    assert np.bincount(y_hat[base.indices], minlength=3).tolist() == [2, 2, 2]
    # round-robin order: class 0's turn, class 1's, class 2's, then again
    assert y_hat[base.indices].tolist() == [0, 1, 2, 0, 1, 2]
    for name in ("mase", "margin"):
        picks = select(name, view, 6).indices
        assert np.bincount(y_hat[picks], minlength=3)[2] == 0, name


def test_mase_ranks_by_the_nearest_boundary():
    view, _ = three_class_fan()
    sel = select("mase", view, 4)
    # 59°, 61.5°, 58°, 62.5°: 5·sin of 1°, 1.5°, 2°, 2.5° from the 60° bisector
    assert list(sel.indices) == [0, 8, 1, 9]
    np.testing.assert_allclose(-sel.utilities, 5 * np.sin(np.deg2rad([1, 1.5, 2, 2.5])))


def test_base_quota_when_the_budget_is_below_the_class_count():
    view, y_hat = three_class_fan()
    assert y_hat[select("base", view, 2).indices].tolist() == [0, 1]


def test_base_fills_a_class_with_the_point_nearest_to_becoming_it_whatever_it_is_predicted():
    """DCSDB(z, c) for a point predicted as another class is its distance to c's boundary: at
    class 2's turn, a point predicted 0 just beside the 0–2 boundary (302°, 5·sin 2° = 0.17 away)
    is nearer to class 2 than the point predicted 2 deep inside its sector (0.87 from any
    boundary), so BASE asks about it."""
    angles = np.deg2rad([0, 120, 240])
    w = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    deg, radius = np.array([59, 61.5, 302, 240]), np.array([5.0, 5.0, 5.0, 1.0])
    emb = radius[:, None] * np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], axis=1)
    view = view_from(softmax(emb @ w.T), emb=emb, w=w, b=np.zeros(3))
    assert np.argmax(emb @ w.T, axis=1).tolist() == [0, 1, 0, 2]
    sel = select("base", view, 3)
    assert sel.indices.tolist() == [0, 1, 2]  # class 0's turn, class 1's, class 2's
    np.testing.assert_allclose(-sel.utilities, 5 * np.sin(np.deg2rad([1, 1.5, 2])))


# --- coreset / hybrid -------------------------------------------------------------------------


def test_coreset_picks_the_points_farthest_from_the_labeled_set():
    emb = np.array([[0, 0], [1, 0], [5, 0], [5.1, 0], [0, 4], [-3, 0]], dtype=float)
    labeled = np.array([True, False, False, False, False, False])
    view = view_from(np.full((6, 2), 0.5), emb=emb, labeled=labeled)
    sel = select("coreset", view, 3)
    assert list(sel.indices) == [3, 4, 5]
    np.testing.assert_allclose(sel.utilities, [5.1, 4.0, 3.0])


def test_hybrid_picks_only_among_the_top_c_n_by_entropy():
    view = random_view(n=200, n_labeled=40, seed=5)
    pool = view.pool
    h = entropy(view.probs[pool])
    top = set(pool[np.argsort(-h, kind="stable")[:2 * 8]])
    sel = select("hybrid", view, 8, c=2)
    assert set(sel.indices) <= top
    # c = 1 leaves no room for diversity: it is entropy sampling
    assert set(select("hybrid", view, 8, c=1).indices) == set(select("entropy", view, 8).indices)


def test_hybrid_trades_uncertainty_for_diversity():
    # Four near-duplicates are the most uncertain; a distant point is almost as uncertain.
    emb = np.array([[0, 0], [0, 0.01], [0.01, 0], [0.01, 0.01], [10, 10], [20, 0.0]])
    probs = np.array([[0.5, 0.5]] * 4 + [[0.55, 0.45], [0.99, 0.01]])
    view = view_from(probs, emb=emb)
    assert list(select("entropy", view, 2).indices) == [0, 1]
    # no labeled centers: start from the most uncertain, then the farthest candidate (5 is
    # farther still, but outside the top c·n = 5 by entropy)
    assert list(select("hybrid", view, 2, c=2.5).indices) == [0, 4]


# --- BADGE ------------------------------------------------------------------------------------


def two_clusters(seed=0):
    """Cluster A (0–9): near-identical embeddings, maximally uncertain; cluster B (10–19): far
    away in an orthogonal direction, fairly confident."""
    rng = np.random.default_rng(seed)
    emb = np.r_[np.array([10.0, 0.0]) + 1e-3 * rng.normal(size=(10, 2)),
                np.array([0.0, 10.0]) + 1e-3 * rng.normal(size=(10, 2))]
    # A's top class is the same for all (at exactly 0.5/0.5 the hypothesised label, hence the
    # sign of the gradient embedding, would flip from point to point and split the cluster)
    probs = np.r_[np.tile([0.55, 0.45], (10, 1)) + 1e-4 * rng.normal(size=(10, 1)) * [1, -1],
                  np.tile([0.8, 0.2], (10, 1))]
    return view_from(probs, emb=emb)


def test_badge_spreads_its_picks_where_entropy_does_not():
    view = two_clusters()
    assert set(select("entropy", view, 2).indices) <= set(range(10))
    for seed in range(10):
        picks = select("badge", view, 2, seed=seed).indices
        assert picks[0] < 10  # the largest gradient norm comes first
        assert {p < 10 for p in picks} == {True, False}, seed


# --- LoGo -------------------------------------------------------------------------------------


def four_local_clusters():
    """Local-only embeddings form four tight, far-apart clusters of five points; global entropy
    is highest for all of cluster 0, so entropy sampling would take only cluster 0."""
    rng = np.random.default_rng(0)
    centers = np.array([[10, 10], [-10, 10], [-10, -10], [10, -10]], dtype=float)
    local_emb = np.repeat(centers, 5, axis=0) + 0.1 * rng.normal(size=(20, 2))
    local_probs = np.tile([0.6, 0.4], (20, 1))
    top = np.array([0.5, 0.49, 0.48, 0.47, 0.46])  # p of class 1 in cluster 0: most uncertain
    rest = rng.uniform(0.05, 0.4, size=15)
    p1 = np.r_[top, rest]
    probs = np.stack([1 - p1, p1], axis=1)
    labeled = np.zeros(20, dtype=bool)
    labeled[0] = True  # cluster 0's most uncertain point is already labeled
    view = view_from(probs, emb=np.zeros((20, 2)), labeled=labeled,
                     local_probs=local_probs, local_embeddings=local_emb)
    h = entropy(probs)
    h[labeled] = -np.inf
    expected = {int(np.argmax(np.where(np.arange(20) // 5 == k, h, -np.inf))) for k in range(4)}
    return view, expected


def test_logo_takes_the_most_uncertain_point_of_each_local_cluster():
    view, expected = four_local_clusters()
    assert 1 in expected and len(expected) == 4  # 0 is labeled: cluster 0 offers 1 instead
    assert set(select("entropy", view, 4).indices) <= set(range(5))
    for seed in range(5):
        sel = select("logo", view, 4, seed=seed)
        assert set(sel.indices) == expected, seed
        np.testing.assert_allclose(sel.utilities, entropy(view.probs[sel.indices]))


def test_logo_without_a_local_model():
    v = random_view()
    bare = A.LocalView(v.probs, v.embeddings, v.labeled, v.head_weight, v.head_bias)
    with pytest.raises(ValueError, match="local_probs"):
        select("logo", bare, 3)
    sel = select("logo", bare, 3, without_local_model="global")
    assert len(sel) == 3 and not bare.labeled[sel.indices].any()


def test_logo_completes_the_batch_when_kmeans_finds_fewer_clusters():
    # Only two distinct local embeddings: k-means with k = 4 yields at most 2 non-empty
    # clusters; the batch is completed with each cluster's next most uncertain point.
    local_emb = np.repeat([[5.0, 0.0], [0.0, 5.0]], 4, axis=0)
    p1 = np.array([0.5, 0.4, 0.3, 0.2, 0.45, 0.35, 0.25, 0.15])
    view = view_from(np.stack([1 - p1, p1], axis=1), local_probs=np.tile([0.6, 0.4], (8, 1)),
                     local_embeddings=local_emb)
    sel = select("logo", view, 4)
    assert list(sel.indices) == [0, 4, 1, 5]


# --- diffusion wrapper ------------------------------------------------------------------------


def test_diffusion_wraps_select_points_on_global_entropy():
    D = pytest.importorskip("fedal.diffusion")
    v = random_view(n=80, n_labeled=15, seed=2)
    k = entropy(v.probs)
    k[v.labeled] = 0.0  # docs/method.md, "Local batch": labeled nodes carry 0
    ref = D.select_points(v.embeddings, k, v.labeled, n=6, k=5, return_scores=True)
    sel = select("diffusion", v, 6, k=5)
    np.testing.assert_array_equal(sel.indices, ref.order)
    np.testing.assert_allclose(sel.utilities, ref.chosen_scores)
    ref_in = D.select_points(v.inputs.reshape(80, -1), k, v.labeled, n=6)
    np.testing.assert_array_equal(select("diffusion", v, 6, space="input").indices, ref_in)


def test_diffusion_in_input_space_needs_inputs():
    pytest.importorskip("fedal.diffusion")
    v = random_view()
    bare = A.LocalView(v.probs, v.embeddings, v.labeled, v.head_weight, v.head_bias)
    with pytest.raises(ValueError, match="inputs"):
        select("diffusion", bare, 3, space="input")
    sel = select("diffusion", v, 5, space="input")
    assert len(sel) == 5 and not v.labeled[sel.indices].any()
