"""Client strategies beyond the paper (docs/method.md, "Client selection beyond the paper"):
fedal's diffusion coverage, DivFL variants and mix balance, and four selectors of the federated-learning literature, registered
in the client-strategy registry (``fedal.selection.base``) on the signals its probe
already sends (q between pseudo-updates, g, |U|). The maths is in ``fedal.coverage`` and
``fedal.client_baselines``; each entry here adapts one round's ``ClientStats`` to it, declares
what the strategy reads and owns its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal import client_baselines as fl
from fedal.selection.base import GRAPH_KEYS, PROBE_KEYS, ClientStats, NoParams, register
from fedal.selection.paper import ClientGeometry, GraphParams, graph_diagnostics, projected_deficit


@dataclass(frozen=True)
class CoverageParams(GraphParams):
    """The client graph's settings (shared with ``diffusion``) and the coverage horizon H."""

    steps: int = 20


@dataclass(frozen=True)
class BalancedDivFLParams:
    points_per_client: int = 200  # W: how far a pick moves the projected class counts


# how far a client that holds labels covers its neighbours in cumulative DivFL: wholly, or by the
# share of its data that is labeled (docs/method.md, "Cumulative DivFL")
CUMULATIVE_COVERS = ("full", "share")


@dataclass(frozen=True)
class CumulativeParams:
    cover: str = "full"

    def __post_init__(self):
        if self.cover not in CUMULATIVE_COVERS:
            raise ValueError(f"cumulative-cover = {self.cover!r} is not valid; valid values: {', '.join(CUMULATIVE_COVERS)}")


@dataclass(frozen=True)
class ClusteredParams:
    groups: int = 5  # V: one group per client of a batch


@dataclass(frozen=True)
class PowDParams:
    candidates: int = 10  # d (pow-d-candidates; 0 in the run config means 2V)


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _count(n: int | None, nodes: np.ndarray) -> int:
    return len(nodes) if n is None else min(int(n), len(nodes))


@register("diffusion-coverage", needs_pseudo_updates=True, config_keys=PROBE_KEYS + GRAPH_KEYS + ("coverage-steps",),
          params=lambda cfg: CoverageParams(k=cfg.knn_k, rho=cfg.rho, delta=cfg.delta, sigma_scope=cfg.sigma_scope,
                                            laplacian=cfg.laplacian, steps=cfg.coverage_steps))
def coverage_order(stats: ClientStats, rng: np.random.Generator, params: CoverageParams,
                   n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """fedal's coverage greedy on the paper's client graph (``fedal.coverage``): each pick covers
    the residual uncertainty around it, so the next pick goes where uncertainty is left."""
    from fedal.coverage import CoverageKernel, coverage_greedy

    geo = ClientGeometry.of(stats, "diffusion-coverage")
    n = _count(n, geo.nodes)
    if n == 0:
        return _empty()
    if min(params.k, len(geo.nodes) - 1) < 1:
        return geo.nodes[:n]
    graph = geo.graph(params)
    sel = coverage_greedy(CoverageKernel.of(graph.P, params.steps), geo.g, n)
    if diagnostics is not None:
        diagnostics.update(graph_diagnostics(graph, geo.g, None, np.ones(len(geo.g), bool)))
        diagnostics["gains"] = [round(float(v), 6) for v in sel.gains]
        geo.record_q(diagnostics)
    return geo.nodes[sel.order]


@register("divfl", needs_pseudo_updates=True, config_keys=PROBE_KEYS, params=lambda cfg: NoParams())
def divfl_order(stats: ClientStats, rng: np.random.Generator, params: NoParams,
                n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """DivFL: the greedy facility-location batch on sim = exp(−q²/σ²)."""
    geo = ClientGeometry.of(stats, "divfl")
    n = _count(n, geo.nodes)
    if n == 0:
        return _empty()
    q = geo.q()
    order, gains = fl.facility_location_greedy(fl.similarity(q), n)
    if diagnostics is not None:
        diagnostics["gains"] = [round(float(v), 6) for v in gains]
        geo.record_q(diagnostics, q)
    return geo.nodes[order]


@register("cumulative-divfl", needs_pseudo_updates=True, config_keys=PROBE_KEYS + ("cumulative-cover",),
          params=lambda cfg: CumulativeParams(cfg.cumulative_cover))
def cumulative_divfl_order(stats: ClientStats, rng: np.random.Generator, params: CumulativeParams,
                           n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """fedal's cumulative DivFL (docs/method.md, "Cumulative DivFL"): DivFL's facility location
    continued from the clients that already hold labels (earlier rounds' picks and round 0's),
    F(L ∪ S) − F(L). DivFL starts every round from an empty set, so round after round it
    represents the same dense regions of the client space; here a batch goes where the labeled
    set does not yet reach; once every client holds labels, from those above the least-labeled
    level. Clients that hold labels stay pickable. ``cover = "share"``: a client
    in L covers only as far as its data is labeled, |L_l| / (|L_l| + |U_l|)."""
    geo = ClientGeometry.of(stats, "cumulative-divfl")
    n = _count(n, geo.nodes)
    if n == 0:
        return _empty()
    if stats.n_labeled is None:
        raise ValueError("cumulative-divfl needs each client's count of labeled points (n_labeled)")
    labeled = np.asarray(stats.n_labeled, dtype=np.float64)[geo.nodes]
    if params.cover == "full":
        # covered: above the least-labeled level. While some client has no label that is "holds
        # labels"; once every client holds some (a small federation, a long run) a new pass starts
        # from the least labeled. Covering every client would make every gain 0, and the greedy
        # would fall back to index order: the same clients every round.
        covered = (labeled > labeled.min()).astype(np.float64)
    else:
        covered = labeled / np.maximum(labeled + stats.n_unlabeled[geo.nodes], 1)
    q = geo.q()
    order, gains = fl.facility_location_greedy(fl.similarity(q), n, covered=covered)
    if diagnostics is not None:
        diagnostics["gains"] = [round(float(v), 6) for v in gains]
        diagnostics["covered_before"] = int((covered > 0).sum())
        geo.record_q(diagnostics, q)
    return geo.nodes[order]


@register("balanced-divfl", needs_pseudo_updates=True, needs_predicted_mix=True, needs_label_histogram=True,
          config_keys=PROBE_KEYS, params=lambda cfg: BalancedDivFLParams(cfg.points_per_client))
def balanced_divfl_order(stats: ClientStats, rng: np.random.Generator, params: BalancedDivFLParams,
                         n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """fedal's balanced DivFL (docs/method.md, "Balanced DivFL"): DivFL's facility location with
    each client y weighted by w_y = ½ + ½·C·(m_y · d), m_y the global model's mean prediction over
    U_y and d the class-deficit weights of the labeled set's counts projected over the batch so
    far (``class_deficit_weights``, as balanced diffusion). A batch then represents the clients
    whose data the labeled set lacks, and once the projected counts are even (d uniform, w ≡ 1)
    it is DivFL's. Half of every weight stays 1, so no client drops out of F on a noisy mix."""
    geo = ClientGeometry.of(stats, "balanced-divfl")
    n = _count(n, geo.nodes)
    if n == 0:
        return _empty()
    deficit = projected_deficit(stats, geo.nodes, params.points_per_client, "balanced-divfl")
    n_classes = len(stats.labeled_per_class)

    def weights(picked: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * n_classes * deficit(picked)

    q = geo.q()
    order, gains = fl.facility_location_greedy(fl.similarity(q), n, weights=weights)
    if diagnostics is not None:
        diagnostics["gains"] = [round(float(v), 6) for v in gains]
        geo.record_q(diagnostics, q)
    return geo.nodes[order]


@dataclass(frozen=True)
class MixBalanceParams:
    points_per_client: int = 200  # W: what one pick adds (min(W, |U_z|) points)
    gate: str = "none"  # mix-gate: "all-classes" draws clients at random while a class has no label


# mix-balance's gates: none, or random clients while some class has no labeled point
MIX_GATES = ("none", "all-classes")


@register("mix-balance", needs_predicted_mix=True, needs_label_histogram=True, config_keys=("mix-gate",),
          params=lambda cfg: MixBalanceParams(cfg.points_per_client, cfg.mix_gate))
def mix_balance_order(stats: ClientStats, rng: np.random.Generator, params: MixBalanceParams,
                      n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """fedal's mix balance (docs/method.md, "Mix balance"): the class-mix oracle's greedy
    (``fedal.class_balance.balance_greedy``) on what clients may send: |U_z| times each client's
    predicted class mix over U_z stands in for its true class counts, and the labeled set's class
    counts (the aggregate acquire replies carry) for the true labeled counts.

    With ``gate = "all-classes"`` (``mix-gate``) the greedy waits until every class has a labeled
    point: an estimate learned from labeled points cannot put mass on a class none of them holds
    (BBSE's M has no column for it), so the greedy would be blind to the very classes it exists to
    fill. Until then the clients come in random order, as ``random`` draws them."""
    from fedal import class_balance

    if stats.predicted_mix is None or stats.labeled_per_class is None:
        raise ValueError("mix-balance needs each client's predicted class mix and the labeled set's class counts")
    if params.gate not in MIX_GATES:
        raise ValueError(f"mix-gate = {params.gate!r} is not valid; valid values: {', '.join(MIX_GATES)}")
    if params.gate == "all-classes":
        missing = int((np.asarray(stats.labeled_per_class) == 0).sum())
        if diagnostics is not None:
            diagnostics["classes_without_labels"] = missing
        if missing:
            return rng.permutation(np.flatnonzero(stats.eligible))
    counts = np.asarray(stats.predicted_mix, dtype=np.float64) * stats.n_unlabeled[:, None]
    order, after = class_balance.balance_order(counts, stats.labeled_per_class, stats.n_unlabeled,
                                               params.points_per_client, n, stats.eligible)
    if diagnostics is not None:
        diagnostics["balance_entropy"] = [round(float(v), 6) for v in after]
    return order


@register("clustered", needs_pseudo_updates=True, config_keys=PROBE_KEYS,
          params=lambda cfg: ClusteredParams(cfg.clients_per_round))
def clustered_order(stats: ClientStats, rng: np.random.Generator, params: ClusteredParams,
                    n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Clustered sampling: V groups of clients by q, one client per group drawn ∝ |U_z|."""
    geo = ClientGeometry.of(stats, "clustered")
    if len(geo.nodes) == 0:
        return _empty()
    q = geo.q()
    labels = fl.cluster_labels(q, params.groups)
    order = fl.cluster_draw(labels, stats.n_unlabeled[geo.nodes], rng)
    if diagnostics is not None:
        diagnostics["groups"] = int(len(np.unique(labels)))
        geo.record_q(diagnostics, q)
    return geo.nodes[order]


@register("pow-d", config_keys=("pow-d-candidates",),
          params=lambda cfg: PowDParams(cfg.pow_d_candidates or 2 * cfg.clients_per_round))
def pow_d_order(stats: ClientStats, rng: np.random.Generator, params: PowDParams,
                n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Power-of-choice: d candidates ∝ |U_z|, highest g first; the other clients after them, for
    top-ups only."""
    cand, rest = fl.power_of_choice(stats.entropy, stats.n_unlabeled, params.candidates, rng,
                                    eligible=stats.eligible)
    if diagnostics is not None:
        diagnostics["candidates"] = int(len(cand))
    return np.concatenate([cand, rest])


@register("kcenter", needs_pseudo_updates=True, config_keys=PROBE_KEYS, params=lambda cfg: NoParams())
def kcenter_order(stats: ClientStats, rng: np.random.Generator, params: NoParams,
                  n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """k-center greedy on q, starting from the client with the highest g (ties → lower index)."""
    geo = ClientGeometry.of(stats, "kcenter")
    n = _count(n, geo.nodes)
    if n == 0:
        return _empty()
    q = geo.q()
    first = int(np.flatnonzero(geo.g == geo.g.max())[0])
    order = fl.kcenter_greedy(q, first, n)
    if diagnostics is not None:
        geo.record_q(diagnostics, q)
    return geo.nodes[order]
