"""Each client strategy beyond the paper (fedal.coverage, fedal.client_baselines,
fedal/selection/rules.py) on small synthetic federations: its defining property, checked so that
the test fails when that property is broken."""

import itertools
import math

import numpy as np
import pytest

from fedal import client_baselines as fl
from fedal.coverage import CoverageKernel, coverage_greedy, coverage_value
from fedal.graph import build_graph
from fedal.selection import ClientStats, order_clients
from fedal.selection import BalancedDivFLParams, ClusteredParams, CoverageParams, CumulativeParams, NoParams, PowDParams


def clusters(n_clusters=4, size=5, spread=0.05, dim=6, seed=0):
    """Tight, well-separated clusters of unit-ish vectors (client pseudo-updates); cluster of
    each client."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * np.eye(dim)[:n_clusters]
    x = np.concatenate([c + spread * rng.standard_normal((size, dim)) for c in centers])
    return x, np.repeat(np.arange(n_clusters), size)


# ---------------------------------------------------------------------------- diffusion coverage
def kernel_of(x, steps=20):
    return CoverageKernel.of(build_graph(x[:, None, :], k=7, delta=0.1).P, steps)


def test_coverage_kernel_is_a_symmetric_cosine_in_unit_range():
    x, _ = clusters()
    kappa = kernel_of(x).dense()
    assert np.allclose(kappa, kappa.T, atol=1e-12)
    assert np.allclose(np.diag(kappa), 1.0)
    assert kappa.min() >= 0.0 and kappa.max() <= 1.0 + 1e-12


def test_coverage_never_picks_two_of_a_tight_cluster_while_another_cluster_is_unpicked():
    x, cluster = clusters()
    g = np.ones(len(x))
    g[cluster == 0] = 1.3  # the most uncertain cluster: an undiscounted greedy would stay in it
    picks = coverage_greedy(kernel_of(x), g, 4).order
    assert sorted(cluster[picks].tolist()) == [0, 1, 2, 3]
    assert cluster[picks[0]] == 0  # and it starts where uncertainty is highest


def test_coverage_gains_are_the_marginal_gains_of_its_objective_and_diminish():
    x, _ = clusters(n_clusters=3, size=4, spread=0.6, seed=2)
    kern = kernel_of(x)
    g = np.random.default_rng(1).random(len(x))
    sel = coverage_greedy(kern, g, 6)
    values = [coverage_value(kern, g, sel.order[:i]) for i in range(7)]
    assert np.allclose(np.diff(values), sel.gains, atol=1e-9)
    assert np.all(np.diff(sel.gains) <= 1e-12)  # submodular: the greedy's gains never grow
    # each pick is the best single addition to the batch before it (brute force over F)
    for i, o in enumerate(sel.order):
        cands = [z for z in range(len(x)) if z not in sel.order[:i]]
        best = max(coverage_value(kern, g, [*sel.order[:i], z]) for z in cands)
        assert coverage_value(kern, g, [*sel.order[:i], o]) == pytest.approx(best, abs=1e-9)


def test_coverage_rejects_odd_horizons_and_asymmetric_operators():
    x, _ = clusters()
    graph = build_graph(x[:, None, :], k=7, delta=0.1, laplacian_kind="rw")
    with pytest.raises(ValueError, match="symmetric"):
        CoverageKernel.of(graph.P, 20)
    with pytest.raises(ValueError, match="even"):
        kernel_of(x, steps=5)


def test_the_coverage_strategy_spreads_a_round_over_the_client_graph():
    x, cluster = clusters(n_clusters=5, size=6)
    g = np.where(cluster == 0, 1.5, 1.0)
    stats = ClientStats(entropy=g, n_unlabeled=np.full(len(x), 100), embeddings=x[:, None, :])
    diag: dict = {}
    picks = order_clients("diffusion-coverage", stats, np.random.default_rng(0), CoverageParams(), n=5,
                          diagnostics=diag)
    assert sorted(cluster[picks].tolist()) == [0, 1, 2, 3, 4]
    assert len(diag["gains"]) == 5 and diag["q"].shape == (len(x), len(x))
    # the paper's greedy on the same federation crowds into the uncertain cluster
    from fedal.selection import DiffusionParams

    paper = order_clients("diffusion", stats, np.random.default_rng(0), DiffusionParams(), n=5)
    assert len(set(cluster[paper].tolist())) < 5


# ---------------------------------------------------------------------------- DivFL
def test_facility_location_greedy_takes_the_brute_force_best_addition_and_is_near_optimal():
    rng = np.random.default_rng(4)
    pts = rng.random((8, 2))
    q = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    sim = fl.similarity(q)
    order, gains = fl.facility_location_greedy(sim, 3)
    for i, z in enumerate(order):
        prefix = list(order[:i])
        value = {c: fl.facility_location(sim, [*prefix, c]) for c in range(8) if c not in prefix}
        assert max(value.values()) == pytest.approx(value[int(z)], abs=1e-12)
        assert gains[i] == pytest.approx(value[int(z)] - fl.facility_location(sim, prefix), abs=1e-12)
    best = max(fl.facility_location(sim, s) for s in itertools.combinations(range(8), 3))
    assert fl.facility_location(sim, order) >= (1 - 1 / math.e) * best


def test_facility_location_represents_every_cluster_before_doubling_one():
    x, cluster = clusters()
    q = np.linalg.norm(x[:, None] - x[None], axis=2)
    order, _ = fl.facility_location_greedy(fl.similarity(q), 4)
    assert sorted(cluster[order].tolist()) == [0, 1, 2, 3]


def test_divfl_strategy_picks_only_eligible_clients():
    x, cluster = clusters()
    n_u = np.full(len(x), 50)
    n_u[cluster == 2] = 0  # exhausted: out of the graph and of the choice
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=n_u, embeddings=x[:, None, :])
    picks = order_clients("divfl", stats, np.random.default_rng(0), NoParams(), n=3)
    assert sorted(cluster[picks].tolist()) == [0, 1, 3]


# ---------------------------------------------------------------------------- cumulative DivFL
def test_facility_location_from_covered_clients_takes_the_brute_force_best_addition():
    # the greedy's gains are those of F(L ∪ S) − F(L): brute force over every addition, 8 clients
    rng = np.random.default_rng(5)
    pts = rng.random((8, 2))
    sim = fl.similarity(np.linalg.norm(pts[:, None] - pts[None], axis=2))
    covered = np.zeros(8, bool)
    covered[[1, 6]] = True
    order, gains = fl.facility_location_greedy(sim, 3, covered=covered)
    for i, z in enumerate(order):
        prefix = [1, 6, *order[:i]]
        value = {c: fl.facility_location(sim, [*prefix, c]) for c in range(8) if c not in order[:i]}
        assert max(value.values()) == pytest.approx(value[int(z)], abs=1e-12)
        assert gains[i] == pytest.approx(value[int(z)] - fl.facility_location(sim, prefix), abs=1e-12)
    assert fl.facility_location_greedy(sim, 3)[0].tolist() != order.tolist()  # L changes the batch
    with pytest.raises(ValueError, match=r"covered must be 8 numbers in \[0, 1\] \(or a mask\); got shape \(7,\)"):
        fl.facility_location_greedy(sim, 3, covered=np.ones(7, bool))


def test_cumulative_divfl_goes_to_the_clusters_no_labeled_client_represents():
    # five tight clusters; clients of clusters 0 and 1 already hold labels. DivFL starts every
    # round afresh and spends a pick on a labeled cluster; cumulative DivFL takes 2, 3, 4 first
    x, cluster = clusters(n_clusters=5, size=4)
    n_l = np.where(np.isin(cluster, [0, 1]) & (np.arange(len(x)) % 4 == 0), 200, 0)
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=np.full(len(x), 100), embeddings=x[:, None, :],
                        n_labeled=n_l)
    diag: dict = {}
    picks = order_clients("cumulative-divfl", stats, np.random.default_rng(0), CumulativeParams(), n=3,
                          diagnostics=diag)
    assert sorted(cluster[picks].tolist()) == [2, 3, 4]
    assert diag["covered_before"] == 2
    plain = order_clients("divfl", stats, np.random.default_rng(0), NoParams(), n=3)
    assert {0, 1} & set(cluster[plain].tolist())
    # with no labels anywhere it is DivFL
    fresh = ClientStats(entropy=stats.entropy, n_unlabeled=stats.n_unlabeled, embeddings=stats.embeddings,
                        n_labeled=np.zeros(len(x), int))
    assert order_clients("cumulative-divfl", fresh, np.random.default_rng(0), CumulativeParams(),
                         n=3).tolist() == plain.tolist()
    bare = ClientStats(entropy=stats.entropy, n_unlabeled=stats.n_unlabeled, embeddings=stats.embeddings)
    with pytest.raises(ValueError, match="count of labeled points"):
        order_clients("cumulative-divfl", bare, np.random.default_rng(0), CumulativeParams(), n=2)


def test_cumulative_divfl_starts_a_new_pass_once_every_client_holds_labels():
    # a small federation is covered after a few rounds; then every gain would be 0 and the greedy
    # would take clients in index order, the same ones every round. A client covers only above the
    # least-labeled level, so the next pass goes to the least-labeled clients, one per cluster
    x, cluster = clusters(n_clusters=5, size=4)
    n_l = np.where(np.isin(cluster, [0, 3]), 400, 200)  # clusters 1, 2 and 4 are one pick behind
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=np.full(len(x), 100), embeddings=x[:, None, :],
                        n_labeled=n_l)
    picks = order_clients("cumulative-divfl", stats, np.random.default_rng(0), CumulativeParams(), n=3)
    assert sorted(cluster[picks].tolist()) == [1, 2, 4]
    # with every client at one level it is DivFL again
    even = ClientStats(entropy=stats.entropy, n_unlabeled=stats.n_unlabeled, embeddings=stats.embeddings,
                       n_labeled=np.full(len(x), 200))
    assert order_clients("cumulative-divfl", even, np.random.default_rng(0), CumulativeParams(), n=3).tolist() == \
        order_clients("divfl", even, np.random.default_rng(0), NoParams(), n=3).tolist()


def test_facility_location_from_a_partly_covered_set_takes_the_brute_force_best_addition():
    # covered as shares c_l: each client starts at max_l c_l·sim(y, l)
    rng = np.random.default_rng(6)
    pts = rng.random((8, 2))
    sim = fl.similarity(np.linalg.norm(pts[:, None] - pts[None], axis=2))
    c = np.zeros(8)
    c[[0, 5]] = [0.3, 0.7]

    def value(picks):
        start = (sim * c[None, :]).max(axis=1)
        return float(np.maximum(start, sim[:, list(picks)].max(axis=1) if picks else 0).sum())

    order, gains = fl.facility_location_greedy(sim, 3, covered=c)
    for i, z in enumerate(order):
        prefix = list(order[:i])
        cand = {k: value([*prefix, k]) for k in range(8) if k not in prefix}
        assert max(cand.values()) == pytest.approx(cand[int(z)], abs=1e-12)
        assert gains[i] == pytest.approx(cand[int(z)] - value(prefix), abs=1e-12)
    with pytest.raises(ValueError, match=r"covered must be 8 numbers in \[0, 1\]"):
        fl.facility_location_greedy(sim, 3, covered=np.full(8, 1.5))


def test_cumulative_divfl_by_share_lets_a_barely_labeled_cluster_count_again():
    # the labeled clients of clusters 0 and 1 hold 200 of 10,000 points each: by share they cover
    # their clusters by 2% only, so the batch is DivFL's (a labeled cluster gets a pick again);
    # covering wholly, the batch avoids both
    x, cluster = clusters(n_clusters=5, size=4)
    holder = np.isin(cluster, [0, 1]) & (np.arange(len(x)) % 4 == 0)
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=np.where(holder, 9800, 10000), embeddings=x[:, None, :],
                        n_labeled=np.where(holder, 200, 0))
    full = order_clients("cumulative-divfl", stats, np.random.default_rng(0), CumulativeParams("full"), n=3)
    share = order_clients("cumulative-divfl", stats, np.random.default_rng(0), CumulativeParams("share"), n=3)
    plain = order_clients("divfl", stats, np.random.default_rng(0), NoParams(), n=3)
    assert sorted(cluster[full].tolist()) == [2, 3, 4]
    assert {0, 1} & set(cluster[share].tolist())
    assert sorted(cluster[share].tolist()) == sorted(cluster[plain].tolist())
    with pytest.raises(ValueError, match="cumulative-cover = 'half' is not valid; valid values: full, share"):
        CumulativeParams("half")


# ---------------------------------------------------------------------------- balanced DivFL
def test_weighted_facility_location_greedy_takes_the_brute_force_best_addition():
    rng = np.random.default_rng(5)
    pts = rng.random((8, 2))
    sim = fl.similarity(np.linalg.norm(pts[:, None] - pts[None], axis=2))
    w = rng.random(8) * 3
    order, gains = fl.facility_location_greedy(sim, 3, weights=w)
    for i, z in enumerate(order):
        prefix = list(order[:i])
        value = {c: fl.facility_location(sim, [*prefix, c], w) for c in range(8) if c not in prefix}
        assert max(value.values()) == pytest.approx(value[int(z)], abs=1e-12)
        assert gains[i] == pytest.approx(value[int(z)] - fl.facility_location(sim, prefix, w), abs=1e-12)
    best = max(fl.facility_location(sim, s, w) for s in itertools.combinations(range(8), 3))
    assert fl.facility_location(sim, order, w) >= (1 - 1 / math.e) * best
    with pytest.raises(ValueError, match="weights must be 8 finite numbers >= 0"):
        fl.facility_location_greedy(sim, 3, weights=-w)


def _class_clusters(counts, n_unlabeled=200):
    """Four tight clusters of 5 clients; the model predicts class c for every client of cluster c.
    ``counts``: the labeled set's class counts."""
    x, cluster = clusters()
    mix = np.eye(4)[cluster]
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=np.full(len(x), n_unlabeled), embeddings=x[:, None, :],
                        predicted_mix=mix, labeled_per_class=np.asarray(counts))
    return stats, cluster


def test_balanced_divfl_from_an_even_labeled_set_starts_as_divfl_and_keeps_the_batch_even():
    stats, cluster = _class_clusters([300, 300, 300, 300])
    rng = np.random.default_rng(0)
    picks = order_clients("balanced-divfl", stats, rng, BalancedDivFLParams(), n=8)
    plain = order_clients("divfl", stats, rng, NoParams(), n=8)
    assert picks[0] == plain[0]  # even counts: every weight is 1, F is DivFL's
    # each pick's projected labels move the weights: two clients per class, where DivFL's
    # similarity alone takes a third client of one cluster before the second of another
    assert np.bincount(cluster[picks], minlength=4).tolist() == [2, 2, 2, 2]
    assert np.bincount(cluster[plain], minlength=4).tolist() != [2, 2, 2, 2]


def test_balanced_divfl_starts_with_the_class_the_labeled_set_lacks_then_follows_the_projected_counts():
    # class 3 is 200 labels short of the mean, class 2 on it: the first pick (W = 200 labels of
    # class 3) leaves classes 2 and 3 each 50 short, so the second pick goes to class 2, not to the
    # lowest-index cluster that DivFL's tie-break would take
    stats, cluster = _class_clusters([400, 400, 300, 100])
    picks = order_clients("balanced-divfl", stats, np.random.default_rng(0), BalancedDivFLParams(200), n=4)
    assert cluster[picks].tolist()[:2] == [3, 2]
    assert sorted(cluster[picks].tolist()) == [0, 1, 2, 3]  # and it still covers every cluster
    plain = order_clients("divfl", stats, np.random.default_rng(0), NoParams(), n=4)
    assert cluster[plain].tolist()[0] != 3  # DivFL alone starts elsewhere


def test_balanced_divfl_needs_the_mix_and_the_label_counts():
    stats, _ = _class_clusters([1, 1, 1, 1])
    bare = ClientStats(entropy=stats.entropy, n_unlabeled=stats.n_unlabeled, embeddings=stats.embeddings)
    with pytest.raises(ValueError, match="predicted class mix"):
        order_clients("balanced-divfl", bare, np.random.default_rng(0), BalancedDivFLParams(), n=2)


# ---------------------------------------------------------------------------- clustered sampling
def test_clustered_sampling_draws_one_client_per_group_in_proportion_to_its_pool():
    x, cluster = clusters()
    n_u = np.tile([1, 1, 1, 1, 96], 4)  # the 5th client of each cluster holds 96% of its pool
    stats = ClientStats(entropy=np.ones(len(x)), n_unlabeled=n_u, embeddings=x[:, None, :])
    big = 0
    for seed in range(50):
        order = order_clients("clustered", stats, np.random.default_rng(seed), ClusteredParams(groups=4))
        assert sorted(cluster[order[:4]].tolist()) == [0, 1, 2, 3]
        big += int(np.sum(n_u[order[:4]] == 96))
    assert big >= 0.85 * 200  # ∝ |U|: 96% expected; uniform draws would give 20%


def test_cluster_labels_recover_separated_groups():
    x, cluster = clusters(n_clusters=3, size=7)
    q = np.linalg.norm(x[:, None] - x[None], axis=2)
    labels = fl.cluster_labels(q, 3)
    # the same partition, up to the names of the groups
    assert len({(a, b) for a, b in zip(labels, cluster)}) == 3


# ---------------------------------------------------------------------------- power of choice
def test_pow_d_keeps_the_most_uncertain_of_its_candidates_only():
    m = 40
    g = np.linspace(0.1, 1.0, m)  # client m-1 is the most uncertain ...
    n_u = np.full(m, 1000)
    n_u[-1] = 1  # ... but rarely drawn as a candidate (∝ |U|)
    top = 0
    for seed in range(200):
        order = order_clients("pow-d", ClientStats(g, n_u), np.random.default_rng(seed), PowDParams(candidates=10))
        first = order[:10]
        assert np.all(np.diff(g[first]) <= 0)  # candidates by g, highest first
        top += int(m - 1 in order[:5])
    # drawn ∝ |U|: P(the tiny client is among 10 candidates) ≈ 10·1/39,001; top-5 by g overall: always
    assert top <= 5


def test_pow_d_candidates_are_drawn_in_proportion_to_pool_size():
    m = 20
    n_u = np.where(np.arange(m) < 10, 1, 100)
    hits = np.zeros(m)
    for seed in range(300):
        cand, _ = fl.power_of_choice(np.zeros(m), n_u, 4, np.random.default_rng(seed))
        hits[cand] += 1
    assert hits[10:].sum() > 0.9 * hits.sum()


# ---------------------------------------------------------------------------- k-center
def test_kcenter_starts_at_the_most_uncertain_client_and_takes_the_farthest_next():
    rng = np.random.default_rng(7)
    pts = rng.random((12, 2))
    q = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    g = rng.random(12)
    stats = ClientStats(entropy=g, n_unlabeled=np.full(12, 10), embeddings=pts[:, None, :])
    order = order_clients("kcenter", stats, np.random.default_rng(0), NoParams(), n=5)
    assert order[0] == int(np.argmax(g))
    # the q the strategy sees is that of the normalised embeddings; re-derive it the same way
    from fedal.graph import normalize_embeddings
    from fedal.client_geometry import q_matrix

    qn = q_matrix(normalize_embeddings(pts[:, None, :]))
    for i in range(1, 5):
        nearest = qn[:, order[:i]].min(axis=1)
        nearest[order[:i]] = -1
        assert nearest[order[i]] == pytest.approx(nearest.max())
    assert np.allclose(q, q.T)


def test_kcenter_covers_every_cluster():
    x, cluster = clusters()
    q = np.linalg.norm(x[:, None] - x[None], axis=2)
    assert sorted(cluster[fl.kcenter_greedy(q, 0, 4)].tolist()) == [0, 1, 2, 3]


def test_the_sketch_column_kernel_is_kept_for_comparison_only():
    # κ = P^H D^{-1} (columns divided by their diagonal), clipped: asymmetric, κ_oo = 1
    x, cluster = clusters(n_clusters=3, size=4, spread=0.6, seed=3)
    P = build_graph(x[:, None, :], k=3, delta=0.1).P
    col = CoverageKernel.of(P, 20, "column")
    dense = P.toarray()
    heat = np.linalg.matrix_power(dense, 20)
    want = np.clip(heat / np.diag(heat)[None, :], 0, 1)
    assert np.allclose(col.dense(), want, atol=1e-12)
    with pytest.raises(ValueError, match="kind"):
        CoverageKernel.of(P, 20, "rows")


def test_coverage_variants_report_every_rule_on_recorded_graphs(tmp_path):
    from simulations import coverage_variants as V
    from tests.test_alignment import aligned, fake_run

    for seed in range(2):
        fake_run(tmp_path, f"Ours/s{seed}", "Ours", seed, aligned)
    result = V.evaluate(tmp_path, v=2)
    assert set(result) == {"g = 1", "g ~ U(0, 1)"}
    for rules in result.values():
        assert set(rules) == set(V.RULES) and all(len(v) == 4 for v in rules.values())  # 2 runs × 2 rounds
    assert "| g = 1 | coverage-cosine | 4 |" in V.markdown(result, 2)
