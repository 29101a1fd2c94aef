import numpy as np

from fedal.selection import ClientStats, allocate_budget, order_clients


def test_allocate_budget_tops_up_from_the_next_best_client():
    # client 2 is first but holds only 50 points: the 150 it cannot give go to the next ones
    order = [2, 0, 1, 3]
    n_u = np.array([500, 500, 50, 500])
    plan = allocate_budget(order, n_u, per_client=200, clients=2)
    assert plan == [(2, 50), (0, 200), (1, 150)]
    assert sum(n for _, n in plan) == 400


def test_allocate_budget_when_data_runs_out():
    plan = allocate_budget([0, 1], np.array([30, 20]), per_client=200, clients=2)
    assert plan == [(0, 30), (1, 20)]


def test_entropy_order_highest_first_ties_lower_index_and_skips_ineligible():
    stats = ClientStats(entropy=np.array([0.5, 0.9, 0.9, 2.0]), n_unlabeled=np.array([10, 10, 10, 0]))
    assert order_clients("entropy", stats, np.random.default_rng(0)).tolist() == [1, 2, 0]


def test_random_order_is_seeded_and_eligible_only():
    stats = ClientStats(entropy=np.zeros(6), n_unlabeled=np.array([1, 0, 1, 1, 1, 1]))
    a = order_clients("random", stats, np.random.default_rng(3))
    b = order_clients("random", stats, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and 1 not in a.tolist() and len(a) == 5


def test_isometric_coordinates_keep_distances_and_picks():
    from scipy.spatial.distance import pdist

    from fedal.diffusion import select_clients
    from fedal.client_geometry import isometric_coordinates

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 2, 3000))
    emb = centers[rng.integers(0, 4, 40)] + 0.3 * rng.standard_normal((40, 2, 3000))
    g = rng.random(40)
    red = isometric_coordinates(emb)
    assert red.shape == (40, 2, 40)
    for t in range(2):
        assert np.allclose(pdist(emb[:, t]), pdist(red[:, t]), rtol=0, atol=1e-9)
        assert np.allclose(np.linalg.norm(emb[:, t], axis=1), np.linalg.norm(red[:, t], axis=1))
    prev = rng.random(40)
    assert (select_clients(red, g, prev, n=12).order.tolist()
            == select_clients(emb, g, prev, n=12).order.tolist())


def test_plan_round_asks_diffusion_for_more_only_when_a_client_runs_dry():
    from fedal.selection import DiffusionParams, plan_round

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 1, 8))
    g = rng.random(30)
    full = order_clients("diffusion", ClientStats(g, np.full(30, 100), emb), rng, DiffusionParams(k=3))
    # the first three picks hold only 10 points each: the budget flows down the same order
    n_u = np.full(30, 100)
    n_u[full[:3]] = 10
    stats = ClientStats(g, n_u, emb)
    plan = plan_round("diffusion", stats, rng, DiffusionParams(k=3), per_client=50, clients=3)
    assert [z for z, _ in plan] == full[:len(plan)].tolist()
    assert sum(k for _, k in plan) == 150 and [k for _, k in plan][:3] == [10, 10, 10]


def _clustered_clients(rng, m=100, clusters=10, dim=400, noise=0.5):
    """Update directions of m clients in a few clusters (nearly orthogonal across clusters, as
    pseudo-updates of clients with different class mixes are)."""
    centers = rng.standard_normal((clusters, dim))
    emb = centers[np.arange(m) % clusters] + noise * rng.standard_normal((m, dim))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True))[:, None, :]


def test_exhausted_clients_do_not_become_hubs_of_the_client_graph():
    """8 of 100 clients have no unlabeled data, so no pseudo-labels and m = 0. As points at the
    origin they were at distance 1 from every live client (live clients sit ≈ 1.3-1.4 apart),
    every live client's nearest neighbours, and every live client ended isolated (v ≡ 0)."""
    from fedal.selection import DiffusionParams

    rng = np.random.default_rng(0)
    emb = _clustered_clients(rng, noise=1.5)  # live clients 1.06-1.41 apart, as measured updates are
    g = rng.random(100) + 0.5
    prev = g + 0.1 * rng.standard_normal(100)
    n_u = np.full(100, 300)
    dead = rng.choice(100, 8, replace=False)
    emb[dead], g[dead], n_u[dead] = 0.0, 0.0, 0
    diag: dict = {}
    picks = order_clients("diffusion", ClientStats(g, n_u, emb, prev), rng, DiffusionParams(), n=5,
                          diagnostics=diag)
    assert diag["nodes"] == 92 and diag["isolated"] == 0 and diag["std_v"] > 0
    live = np.setdiff1d(np.arange(100), dead)
    alone = order_clients("diffusion", ClientStats(g[live], n_u[live], emb[live], prev[live]), rng,
                          DiffusionParams(), n=5)
    assert picks.tolist() == live[alone].tolist()
    assert diag["q"].shape == (92, 92) and diag["q_clients"].tolist() == live.tolist()

    # the failure this prevents: the same clients with the exhausted ones as zero points
    from fedal.graph import build_graph, normalize_embeddings

    old = build_graph(normalize_embeddings(emb), k=7, delta=0.1)
    deg = np.bincount(np.concatenate([old.edges.i, old.edges.j]), minlength=100)
    assert (deg[live] == 0).all()  # every live client isolated: v ≡ 0, entropy-only selection


def test_a_client_without_direction_stays_in_the_graph_without_edges():
    from fedal.selection import DiffusionParams

    rng = np.random.default_rng(1)
    emb = _clustered_clients(rng, m=30, clusters=3)
    emb[4] = 0.0  # unlabeled data, but its update vanished at every recorded round
    g = rng.random(30) + 0.5
    diag: dict = {}
    order_clients("diffusion", ClientStats(g, np.full(30, 10), emb), rng, DiffusionParams(k=3), n=3,
                  diagnostics=diag)
    assert diag["nodes"] == 30 and diag["isolated"] >= 1
    q = diag["q"]
    assert np.allclose(q, q.T) and np.allclose(np.delete(q[4], 4), 1.0)


def test_q_matrix_is_the_mean_over_rounds_of_pairwise_distances():
    from scipy.spatial.distance import cdist

    from fedal.client_geometry import q_matrix

    x = np.random.default_rng(2).standard_normal((6, 3, 5))
    want = np.mean([cdist(x[:, t], x[:, t]) for t in range(3)], axis=0)
    assert np.allclose(q_matrix(x), want, atol=1e-9)


def test_class_deficit_weights():
    from fedal.selection import class_deficit_weights

    assert np.allclose(class_deficit_weights([10, 30, 20]), [1.0, 0.0, 0.0])
    assert np.allclose(class_deficit_weights([0, 10, 30, 40]), [2 / 3, 1 / 3, 0.0, 0.0])  # mean 20
    assert np.allclose(class_deficit_weights([5, 5]), [0.5, 0.5])


def test_balanced_diffusion_spreads_the_batch_over_classes_the_labeled_set_lacks():
    """Two groups of clients, equal in entropy and graph position; the labeled set already holds
    many labels of class 0. Plain diffusion picks from both groups; the balanced variant picks
    the clients predicted to hold class 1 until its projected counts even out."""
    from fedal.selection import DiffusionParams

    rng = np.random.default_rng(3)
    emb = _clustered_clients(rng, m=40, clusters=4)
    g = np.full(40, 1.0) + 0.01 * rng.random(40)
    mix = np.zeros((40, 2))
    mix[:20, 0], mix[20:, 1] = 1.0, 1.0  # clients 0-19 predicted class 0, 20-39 class 1
    stats = ClientStats(g, np.full(40, 100), emb, predicted_mix=mix, labeled_per_class=np.array([500, 100]))
    params = DiffusionParams(k=3, points_per_client=100)
    picks = order_clients("balanced-diffusion", stats, rng, params, n=6)
    assert all(p >= 20 for p in picks[:4])  # 4 × 100 labels of class 1 fill the 400 gap
    mirrored = ClientStats(g, np.full(40, 100), emb, predicted_mix=mix, labeled_per_class=np.array([100, 500]))
    assert all(p < 20 for p in order_clients("balanced-diffusion", mirrored, rng, params, n=4))
    plain = order_clients("diffusion", stats, rng, params, n=4)
    assert 0 < sum(p >= 20 for p in plain) < 4  # without the term, both groups


# what make mutate found (reports/mutation/README.md): the budget's last label, clients with
# nothing to give, the random strategy's draw, the diagnostics, and data that runs out
def test_allocate_budget_places_the_last_label_and_skips_clients_with_nothing():
    # 4 labels: client 0 gives 2, client 3 holds none, client 1 gives its 1, client 2 the last 1
    assert allocate_budget([0, 3, 1, 2], np.array([2, 1, 5, 0]), per_client=2, clients=2) == \
        [(0, 2), (1, 1), (2, 1)]


def test_plan_round_draws_the_random_order_from_the_servers_generator():
    from fedal.selection import DiffusionParams, plan_round

    stats = ClientStats(entropy=np.zeros(8), n_unlabeled=np.full(8, 10))
    plan = plan_round("random", stats, np.random.default_rng(4), DiffusionParams(), per_client=5, clients=3)
    order = order_clients("random", stats, np.random.default_rng(4))
    assert plan == [(int(z), 5) for z in order[:3]]


def test_plan_round_fills_the_diagnostics_and_stops_when_the_data_runs_out():
    from fedal.selection import DiffusionParams, plan_round

    rng = np.random.default_rng(0)
    stats = ClientStats(rng.random(12), np.full(12, 3), rng.standard_normal((12, 1, 8)))
    diagnostics: dict = {}
    plan = plan_round("diffusion", stats, rng, DiffusionParams(k=3), per_client=50, clients=3, diagnostics=diagnostics)
    # 12 clients of 3 points cannot give 150 labels: every one gives all it has, and the plan ends
    assert sorted(z for z, _ in plan) == list(range(12)) and all(k == 3 for _, k in plan)
    assert diagnostics["nodes"] == 12 and diagnostics["edges"] > 0 and "q" in diagnostics
