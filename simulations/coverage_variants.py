"""How well does each client-batch rule spread a round's picks over the clients' classes? An
offline check on recorded client graphs, no training.

    python -m simulations.coverage_variants RESULTS_DIR [--out FILE.md] [--batch 5]

For every recorded selection (``q.npz`` of runs with a client graph) it rebuilds the client graph
from q as the server built it (mutual kNN, K = 7, Gaussian weights with σ² the mean q² over the
edges, unnormalised Laplacian, δ = 0.1; no anisotropy, since δ_g is not recorded) and picks a
batch of V clients with each rule, under two value vectors g (the probe's g is not recorded
either): all ones (pure geometry) and i.i.d. uniform draws. On the simulator side each client's
dominant class is known, so each batch gets its share of same-class pairs and its number of
distinct dominant classes (``simulations/selection_diagnostics.py``). Rules:

- ``paper``: Algorithm 1's greedy (impact + uncertainty, H = 5; ``fedal.diffusion``);
- ``coverage-column``: the first sketch of coverage, κ = P^H with columns divided by their
  diagonal and clipped to [0, 1], H = 20;
- ``coverage-cosine``: fedal's coverage, κ = D^{-1/2} P^H D^{-1/2}, H = 20 (``fedal.coverage``);
- ``random``: a uniform batch (the expectation over 200 draws).

It chose which coverage kernel fedal keeps (docs/method.md, "Diffusion coverage").
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedal.results import Q_FILE

RULES = ("paper", "coverage-column", "coverage-cosine", "random")


def graph_from_q(q: np.ndarray, k: int = 7, delta: float = 0.1):
    """The client graph's P from a q matrix (see the module docstring)."""
    from fedal.graph import Edges, diffusion_operator, gaussian_weights, laplacian
    from simulations.selection_diagnostics import graph_edges

    pairs = graph_edges(q, k)
    i = np.array([a for a, _ in pairs], dtype=np.int64)
    j = np.array([b for _, b in pairs], dtype=np.int64)
    edges = Edges(len(q), i, j, np.asarray(q, dtype=np.float64)[i, j])
    s2 = float(np.mean(edges.q**2)) if len(edges) else 0.0
    L = laplacian(edges, gaussian_weights(edges.q, s2))
    return edges, diffusion_operator(L, delta)


def batch(rule: str, P, g: np.ndarray, v: int, rng: np.random.Generator) -> np.ndarray:
    from fedal.coverage import CoverageKernel, coverage_greedy
    from fedal.diffusion import _greedy, _Operator

    if rule == "paper":
        class _G:  # what _Operator.of reads from a DiffusionGraph
            mass_preserving = True

        _G.P = P
        return _greedy(_Operator.of(_G, 5).impact, g, v, np.ones(len(g), bool), record=False).order
    if rule.startswith("coverage-"):
        return coverage_greedy(CoverageKernel.of(P, 20, rule.split("-", 1)[1]), g, v).order
    return rng.choice(len(g), size=v, replace=False)


def evaluate(root: str | Path, v: int = 5, seed: int = 0) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """{g kind: {rule: [(same-class pair rate, distinct dominant classes) per recorded selection]}}."""
    from simulations.alignment import read_q, recorded_clients
    from simulations.picked_clients import DATA_KEYS, client_histograms
    from simulations.reports import load_runs
    from simulations.selection_diagnostics import dominant_classes, same_class_pair_rate

    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))
    cache: dict[str, np.ndarray] = {}
    for run in load_runs(root):
        path = Path(run.path) / Q_FILE
        if not path.is_file():
            continue
        rc = {k: x for k, x in run.config.items() if k in DATA_KEYS}
        key = json.dumps(rc, sort_keys=True)
        if key not in cache:
            cache[key] = dominant_classes(client_histograms(rc, recorded_clients(run)))
        dom = cache[key]
        for _, (q, clients) in read_q(path).items():
            if len(q) <= v:
                continue
            _, P = graph_from_q(q)
            for kind, g in (("g = 1", np.ones(len(q))), ("g ~ U(0, 1)", rng.random(len(q)))):
                for rule in RULES:
                    draws = 200 if rule == "random" else 1
                    stats = []
                    for _ in range(draws):
                        picks = clients[batch(rule, P, g, v, rng)]
                        stats.append((same_class_pair_rate(dom, picks), len(set(dom[picks].tolist()))))
                    out[kind][rule].append(tuple(np.mean(stats, axis=0)))
    return out


def markdown(result, v: int) -> str:
    lines = [f"| values | rule | selections | same-class pairs | distinct dominant classes (of {v}) |",
             "|---|---|---:|---:|---:|"]
    for kind, rules in result.items():
        for rule in RULES:
            a = np.asarray(rules[rule], dtype=np.float64)
            lines.append(f"| {kind} | {rule} | {len(a)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="results directory with runs that recorded q.npz")
    ap.add_argument("--batch", type=int, default=5, help="V, clients per batch (default 5)")
    ap.add_argument("--out", help="write the Markdown table here as well")
    args = ap.parse_args(argv)
    result = evaluate(args.root, args.batch)
    if not result:
        raise SystemExit(f"no run under {args.root} recorded q.npz")
    text = markdown(result, args.batch)
    print(text)
    if args.out:
        Path(args.out).write_text(f"`python -m simulations.coverage_variants {args.root}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
