"""The paper's client strategies (docs/method.md, "Impact, score, greedy", "Baselines and
training modes"): random, entropy (Ent), diffusion (Algorithm 1) and fedal's balanced
diffusion, with the client geometry (``ClientGeometry``) that every strategy reading the client
graph or q shares (``fedal.selection.rules``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedal.client_geometry import isometric_coordinates, q_matrix
from fedal.selection.base import GRAPH_KEYS, PROBE_KEYS, ClientStats, NoParams, register

# The full q matrix goes into a run's diagnostics (q.npz) only up to this many graph nodes:
# M² floats per round are cheap at the paper's 100 clients and pointless at 10^5.
Q_RECORD_MAX_NODES = 2000


@dataclass(frozen=True)
class GraphParams:
    """The client graph's settings (docs/method.md, "Client graph"), shared by the strategies
    that build it."""

    k: int = 7
    rho: float = 0.2
    delta: float = 0.1
    sigma_scope: str = "edges"
    laplacian: str = "unnormalized"


@dataclass(frozen=True)
class DiffusionParams(GraphParams):
    steps: int = 5  # Algorithm 1's diffusion horizon H (0: no impact term)
    points_per_client: int = 200  # W: how far a pick moves the projected class counts (balanced)


def diffusion_params(cfg) -> DiffusionParams:
    # client-impact = false is the "no impact term" ablation: H = 0 makes v ≡ 0
    return DiffusionParams(k=cfg.knn_k, rho=cfg.rho, delta=cfg.delta, sigma_scope=cfg.sigma_scope,
                           laplacian=cfg.laplacian, steps=cfg.diffusion_steps if cfg.client_impact else 0,
                           points_per_client=cfg.points_per_client)


# what Algorithm 1's diffusion reads: the probe, the client graph and the impact term
CLIENT_GRAPH_KEYS = PROBE_KEYS + GRAPH_KEYS + ("client-impact", "diffusion-steps")
_GRAPH = dict(needs_pseudo_updates=True, config_keys=CLIENT_GRAPH_KEYS, params=diffusion_params)


@register("random", probes=False)
def random_order(stats: ClientStats, rng: np.random.Generator, params: NoParams,
                 n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    elig = np.flatnonzero(stats.eligible)
    return rng.permutation(elig)


@register("entropy")
def entropy_order(stats: ClientStats, rng: np.random.Generator, params: NoParams,
                  n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Highest mean entropy first (the paper's Ent client baseline); ties → lower index."""
    elig = np.flatnonzero(stats.eligible)
    return elig[np.lexsort((elig, -stats.entropy[elig]))]


def graph_diagnostics(graph, g: np.ndarray, v: np.ndarray | None, eligible: np.ndarray) -> dict:
    """Scalars that say whether the client graph carried information this round: with many
    isolated clients v ≡ 0 and the score is entropy alone (docs/method.md, "Diagnostics").
    ``v`` None: a rule without Algorithm 1's impact (no ``std_v``)."""
    deg = np.bincount(np.concatenate([graph.edges.i, graph.edges.j]), minlength=len(g))
    out = {"nodes": int(len(g)), "edges": int(len(graph.edges)),
           "isolated": int(np.sum((deg == 0) & eligible)), "std_g": float(np.std(g))}
    if v is not None:
        out["std_v"] = float(np.std(v))
    out["sigma_w2"] = float(graph.sigma_w2)
    return out


def _graph_nodes(stats: ClientStats) -> np.ndarray:
    """Clients in the client graph: those with unlabeled data. A client with |U_z| = 0 has no
    pseudo-labels and so no update direction; it is left out of the graph, of the std in Eq. 12
    and of the choice (docs/method.md, "Client graph")."""
    return np.flatnonzero(stats.n_unlabeled > 0)


@register("diffusion", **_GRAPH)
def diffusion_order(stats: ClientStats, rng: np.random.Generator, params: DiffusionParams,
                    n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Greedy impact + uncertainty selection (Algorithm 1) over the mutual-kNN client graph.

    Returns the first ``n`` picks (all eligible clients if None): each greedy pick costs H
    sparse mat-vecs, so at scale the caller asks only for as many as the budget needs.
    ``diagnostics`` (a dict) receives the graph's scalars, and the q matrix with the graph's
    client indices when the graph is small (``Q_RECORD_MAX_NODES``)."""
    return _diffusion(stats, params, n, diagnostics, balance=False)


@register("balanced-diffusion", **_GRAPH, needs_predicted_mix=True, needs_label_histogram=True)
def balanced_diffusion_order(stats: ClientStats, rng: np.random.Generator, params: DiffusionParams,
                             n: int | None = None, diagnostics: dict | None = None) -> np.ndarray:
    """Diffusion with a class-balance term (fedal's own variant, docs/method.md, "Balanced
    diffusion"): Eq. 12's score plus b/std(b), where b_z is the share of client z's expected
    labels that would land in classes the labeled set lacks, judged from the global model's mean
    prediction over U_z. After each pick the projected labeled counts grow by that client's share,
    so the batch spreads over classes."""
    return _diffusion(stats, params, n, diagnostics, balance=True)


def projected_deficit(stats: ClientStats, nodes: np.ndarray, points_per_client: int, what: str):
    """The balanced strategies' class term, as a function of the batch picked so far (indices
    into ``nodes``): each node's m_z · d, with d the class-deficit weights of the labeled counts
    projected over the batch (each pick adds min(W, |U_z|)·m_z, docs/method.md, "Protocol" top-up)."""
    if stats.predicted_mix is None or stats.labeled_per_class is None:
        raise ValueError(f"{what} needs each client's predicted class mix and the labeled set's class counts")
    mix = np.asarray(stats.predicted_mix, dtype=np.float64)[nodes]
    counts = np.asarray(stats.labeled_per_class, dtype=np.float64)
    gives = np.minimum(stats.n_unlabeled[nodes], points_per_client).astype(np.float64)

    def deficit(picked: np.ndarray) -> np.ndarray:
        projected = counts + (gives[picked, None] * mix[picked]).sum(axis=0)
        return mix @ class_deficit_weights(projected)

    return deficit


def class_deficit_weights(counts: np.ndarray) -> np.ndarray:
    """w_c ∝ max(0, mean(n) − n_c): how far class c falls short of an even labeled set; sums to 1
    (uniform if no class falls short)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.maximum(counts.mean() - counts, 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(counts), 1.0 / len(counts))


@dataclass(frozen=True)
class ClientGeometry:
    """One round's client geometry among the graph's clients (``_graph_nodes``): their indices,
    g, the previous g (δ_g's reference) and the isometric coordinates of their m_t."""

    nodes: np.ndarray
    g: np.ndarray
    prev: np.ndarray | None
    coords: np.ndarray

    @classmethod
    def of(cls, stats: ClientStats, what: str) -> "ClientGeometry":
        if stats.embeddings is None:
            raise ValueError(f"{what} client selection needs the clients' pseudo-parameter embeddings")
        nodes = _graph_nodes(stats)
        g = np.asarray(stats.entropy, dtype=np.float64)[nodes]
        prev = stats.prev_entropy
        if prev is not None:
            # δ_g is undefined for a client without a previous value (docs/method.md, "Pseudo-updates"): treat its δ as 0
            prev = np.where(np.isnan(prev), stats.entropy, prev)[nodes]
        coords = isometric_coordinates(np.asarray(stats.embeddings)[nodes]) if len(nodes) else np.zeros((0, 1, 1))
        return cls(nodes, g, prev, coords)

    def q(self) -> np.ndarray:
        from fedal.graph import normalize_embeddings

        return q_matrix(normalize_embeddings(self.coords))

    def graph(self, params):
        from fedal.diffusion import client_graph

        return client_graph(self.coords, self.g, self.prev, k=min(params.k, len(self.nodes) - 1),
                            rho=params.rho, delta=params.delta, sigma_scope=params.sigma_scope,
                            laplacian=params.laplacian)[0]

    def record_q(self, diagnostics: dict | None, q: np.ndarray | None = None) -> None:
        """The q matrix and the graph's client indices (q.npz), for graphs up to Q_RECORD_MAX_NODES."""
        if diagnostics is not None and len(self.nodes) <= Q_RECORD_MAX_NODES:
            diagnostics["q"] = (self.q() if q is None else q).astype(np.float32)
            diagnostics["q_clients"] = self.nodes.copy()


def _diffusion(stats: ClientStats, params: DiffusionParams, n: int | None, diagnostics: dict | None,
               balance: bool) -> np.ndarray:
    from fedal.diffusion import greedy_select

    geo = ClientGeometry.of(stats, "diffusion")
    nodes = geo.nodes
    n = len(nodes) if n is None else min(int(n), len(nodes))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if min(params.k, len(nodes) - 1) < 1:  # a single client: nothing to diffuse over
        return nodes[:n]
    graph, g = geo.graph(params), geo.g
    # the batch picked so far is expected to fill the classes its clients predict
    extra = projected_deficit(stats, nodes, params.points_per_client, "balanced diffusion") if balance else None
    sel = greedy_select(graph, g, n, steps=params.steps, extra_term=extra)
    if diagnostics is not None:
        diagnostics.update(graph_diagnostics(graph, g, sel.impacts[0], np.ones(len(nodes), bool)))
        geo.record_q(diagnostics)
    return nodes[np.asarray(sel.order, dtype=np.int64)]
