"""How well does each probe setting's client geometry reflect the clients' data? (issue #11)

    python -m simulations.probe_alignment [--seeds 0 1] [--clients 100] [--out FILE.md]

For a federation (MNIST-1D, Dirichlet α = 0.1 by default) and a global model in a few states, every
client computes its pseudo-update m (fedal.training.pseudo_update) under each probe setting
(optimiser, steps, parameters); q(z, y) = ‖m(z) − m(y)‖ and the paper's Figure 2 statistic — the
mean over clients of the Pearson correlation between q(z, ·) and the Hellinger distance of true
class histograms (simulations.alignment) — says how much of the data's difference the geometry
sees. This isolates the probe from everything else the AL loop does; the suites measure the same
statistic per AL round on the real trajectory (q.npz, ``python -m simulations.alignment``).

Model states (trained centrally here, since only the probe is under study):
- ``round-0``: on the protocol's round-0 labels (5 random clients × 200 random points);
- ``2000-random``: on 2,000 labels drawn uniformly from the whole federation;
- ``pretrained round-0``: the self-supervised backbone (``--weights``) fine-tuned on round-0 labels.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

SETTINGS = (  # (optimiser, steps, step size, parameters): the defaults' candidates
    ("gd", 1, 1e-3, "head"), ("gd", 4, 1e-3, "head"), ("gd", 4, 1e-5, "head"), ("gd", 1, 1e-3, "all"),
    ("adam", 1, 3e-3, "head"), ("adam", 4, 3e-3, "head"), ("adam", 4, 3e-3, "all"),
)


def _state_labels(rng, sizes: list[int], kind: str) -> list[np.ndarray]:
    """Per-client labeled indices for a model state."""
    if kind == "2000-random":
        total = sum(sizes)
        flat = rng.choice(total, 2000, replace=False)
        bounds = np.cumsum([0] + sizes)
        return [flat[(flat >= a) & (flat < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]
    chosen = rng.choice(len(sizes), 5, replace=False)
    return [rng.choice(s, min(200, s), replace=False) if z in chosen else np.zeros(0, np.int64)
            for z, s in enumerate(sizes)]


def measure(seed: int, clients: int, weights: str, log=print, settings=SETTINGS,
            train_epochs: int = 30) -> list[tuple[str, str, float, float, float]]:
    """Rows (state, setting, alignment, pooled, seconds) for one federation seed."""
    from fedal.config import Config
    from fedal.data import client_data
    from fedal.training import build_model, predict, pseudo_update, train_local
    from simulations.alignment import alignment, pooled_alignment
    from fedal.client_geometry import q_matrix

    cfg = Config.from_run_config({"seed": seed})
    data = [client_data(cfg, p, clients) for p in range(clients)]
    hist = np.stack([np.bincount(y, minlength=10) for _, y in data])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2024]))
    states = [("round-0", ""), ("2000-random", "")] + ([("pretrained round-0", weights)] if weights else [])
    rows = []
    for name, w in states:
        labeled = _state_labels(rng, [len(y) for _, y in data], name.split()[-1])
        x_l = np.concatenate([x[i] for (x, _), i in zip(data, labeled)])
        y_l = np.concatenate([y[i] for (_, y), i in zip(data, labeled)])
        model = build_model("mnist1d", x_l.shape[1:], 10, backbone_weights=w, seed=seed)
        train_local(model, x_l, y_l, epochs=train_epochs, batch_size=32, lr=0.003, seed=seed)
        for opt, steps, lr, scope in settings:
            label = f"{opt} ×{steps} lr {lr:g} {scope}"
            t0 = time.perf_counter()
            m = []
            try:
                for z, ((x, _), i) in enumerate(zip(data, labeled)):
                    u = np.setdiff1d(np.arange(len(x)), i)
                    probs, _ = predict(model, x[u])
                    m.append(pseudo_update(copy.deepcopy(model), x[u], optimizer=opt, epochs=steps,
                                           lr=lr, batch_size=32, scope=scope,
                                           probs=probs, seed=seed * 1000 + z))
            except FloatingPointError:  # the literal summed-loss gd at η = 0.001 on big clients
                rows.append((name, label, np.nan, np.nan, time.perf_counter() - t0))
                log(f"seed {seed}  {name:20s} {label:24s} diverged")
                continue
            q = q_matrix(np.stack(m)[:, None, :])
            ids = np.arange(clients)
            row = (name, label, alignment(q, ids, hist), pooled_alignment(q, ids, hist),
                   time.perf_counter() - t0)
            log(f"seed {seed}  {row[0]:20s} {row[1]:24s} alignment {row[2]:+.3f}  pooled {row[3]:+.3f}  ({row[4]:.1f}s)")
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--weights", default="weights/mnist1d-cnn1d-ssl.pt",
                    help="self-supervised backbone for the pretrained state ('' to skip)")
    ap.add_argument("--out", help="write the Markdown table here as well")
    args = ap.parse_args(argv)
    if args.clients < 10:
        raise SystemExit(f"--clients = {args.clients} is too few for a client graph; valid: >= 10")
    if args.weights and not Path(args.weights).is_file():
        raise SystemExit(f"--weights = {args.weights!r} does not exist; make it with "
                         "python -m simulations.pretrain --out <path>, or pass --weights ''")
    per: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed in args.seeds:
        for state, setting, a, p, _ in measure(seed, args.clients, args.weights):
            per.setdefault((state, setting), []).append((a, p))
    lines = [f"Alignment of the probe's client geometry with true class mixes (mean over clients of "
             f"Pearson(q, Hellinger)); MNIST-1D Dirichlet α = 0.1, {args.clients} clients, seeds "
             f"{' '.join(map(str, args.seeds))}; `python -m simulations.probe_alignment "
             f"--seeds {' '.join(map(str, args.seeds))}`", "",
             "| model state | probe (optimiser × steps, step size, parameters) | alignment | pooled |", "|---|---|---:|---:|"]
    for (state, setting), v in per.items():
        a = np.array(v)
        cells = ["diverged" if np.isnan(v) else f"{v:+.3f}" for v in (a[:, 0].mean(), a[:, 1].mean())]
        lines.append(f"| {state} | {setting} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
