"""Can a deployable rule see the class mixes the class-mix oracle sees? (docs/results.md, "The
class-mix oracle").

    python -m simulations.mix_estimates SUITE --seeds 0 1 2 3 4 [--set KEY=VALUE ...] [--out FILE.md] [--dry-run]

For each seed it trains the suite's round 0 in-process (random clients and points, as every method
of a seed does), takes the model that makes the first selection and asks how well each client's
class mix over U can be estimated from what a client may compute and send:

- ``softmax``: the mean softmax over U (``predicted-mix = softmax``);
- ``argmax``: the share of U's points predicted in each class (``predicted-mix = argmax``);
- ``em``: the mean softmax re-weighted to the pool's own prior by EM (Saerens, Latinne and
  Decaestecker, "Adjusting the outputs of a classifier to new a priori probabilities", Neural
  Computation 2002), with the labeled set's class shares as the training prior;
- ``bbse``: black-box shift estimation (Lipton, Wang and Smola, ICML 2018): the argmax share
  solved through the confusion matrix of the labeled points (``fedal.uncertainty.bbse_mix``,
  what ``predicted-mix = bbse`` runs);
- ``bbse-soft``: the same with probabilities for counts (Lipton et al.'s soft variant): the mean
  softmax over U solved through the labeled points' mean softmax per true class.

Per estimate: the mean total-variation distance to the true mix (simulator side), and the label
entropy (nats) a batch of V clients picked by the balance greedy (``fedal/class_balance.py``) on
that estimate would reach, scored on the true counts: the labeled set plus each pick's expected
random points. Beside them: random batches (mean of 200 draws) and the oracle's batch. And what a
gate on the estimate could read: the classes the round-0 model never recognises, the classes
without a labeled point (``mix-gate = all-classes`` waits for none), and BBSE's skill on the
labeled clients' own histograms (``bbse_skill``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from fedal.class_balance import balance_greedy, entropy
from fedal.uncertainty import bbse_mix

ESTIMATES = ("softmax", "argmax", "em", "bbse", "bbse-soft")


def saerens_em(probs: np.ndarray, train_prior: np.ndarray, iters: int = 100) -> np.ndarray:
    """The pool's class prior by EM on a classifier's posteriors ``probs`` (N, C), trained under
    ``train_prior`` (C,): re-weight each posterior by q/π, renormalise, q ← their mean."""
    p = np.asarray(probs, dtype=np.float64)
    pi = np.maximum(np.asarray(train_prior, dtype=np.float64), 1e-12)
    q = p.mean(0)
    for _ in range(iters):
        a = p * (q / pi)
        a /= np.maximum(a.sum(1, keepdims=True), 1e-300)
        q = a.mean(0)
    return q


def estimates(probs: np.ndarray, train_prior: np.ndarray, confusion: np.ndarray,
              soft_confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Each estimate of ``ESTIMATES`` of one pool's class mix from its posteriors."""
    p = np.asarray(probs, dtype=np.float64)
    share = np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)
    return {"softmax": p.mean(0), "argmax": share, "em": saerens_em(p, train_prior),
            "bbse": bbse_mix(confusion, share), "bbse-soft": bbse_mix(soft_confusion, p.mean(0))}


def bbse_skill(confusions, argmax_share) -> float:
    """How much better BBSE predicts each labeled client's class histogram than the rest of the
    labeled set's class shares do: 1 − TV_bbse / TV_prior, leave-one-client-out, both averaged
    with weights |L_z|. A gate considered for mix balance and left out (docs/method.md, "Mix
    balance", the gate): it cannot see a class no labeled point holds.

    ``confusions`` (M, C, C): each client's true × predicted counts of its labeled points, as it
    sends them; ``argmax_share`` (M, C): each client's argmax share over U_z. For a client z with
    labels, BBSE solves its share through the other clients' summed counts (its own labels never
    enter its estimate) and is scored by the total variation to z's labeled histogram; the prior
    predicts the other clients' pooled class shares. With random points a client's labels are a
    sample of its pool, so the histogram stands in for the true mix no server may see. 1: exact,
    0: no better than knowing nothing about the client, < 0: worse; NaN when fewer than two
    clients with labels and unlabeled points remain (nothing to check against)."""
    conf = np.asarray(confusions, dtype=np.float64)
    mu = np.asarray(argmax_share, dtype=np.float64)
    hist = conf.sum(2)  # (M, C): each client's labeled histogram (the counts' row sums)
    n = hist.sum(1)
    held = np.flatnonzero((n > 0) & (mu.sum(1) > 0))  # labels to check, and a U to estimate
    if len(held) < 2:
        return float("nan")
    total, labeled = conf.sum(0), hist.sum(0)
    err = np.zeros(len(held))
    base = np.zeros(len(held))
    for i, z in enumerate(held):
        truth = hist[z] / n[z]
        est = bbse_mix(total - conf[z], mu[z])
        rest = labeled - hist[z]
        prior = rest / rest.sum() if rest.sum() > 0 else np.full(len(rest), 1.0 / len(rest))
        err[i] = 0.5 * np.abs(est - truth).sum()
        base[i] = 0.5 * np.abs(prior - truth).sum()
    w = n[held]
    tv_prior = float(w @ base / w.sum())
    return 1.0 - float(w @ err / w.sum()) / tv_prior if tv_prior > 0 else float("nan")


def batch_entropy(order, labeled: np.ndarray, true_mix: np.ndarray, take: np.ndarray) -> float:
    """Label entropy (nats) of the labeled set plus the batch's expected random points."""
    order = np.asarray(order, dtype=np.int64)
    h = np.asarray(labeled, dtype=np.float64) + (true_mix[order] * take[order, None]).sum(0)
    return float(entropy(h[None])[0])


@dataclass(frozen=True)
class SeedResult:
    seed: int
    accuracy: float  # the round-0 model's test accuracy
    unseen: int  # classes the labeled set's confusion matrix never predicts right
    unlabeled_classes: int  # classes without a labeled point (what mix-gate = all-classes waits on)
    skill: float  # bbse_skill: BBSE's leave-one-client-out skill on the labeled clients' histograms
    random: float  # entropy of random batches (mean)
    oracle: float
    tv: dict[str, float]
    greedy: dict[str, float]


def first_selection(run_config: dict, num_clients: int, draws: int = 200) -> SeedResult:
    """Round 0 of ``run_config`` in-process, then the estimates at its first selection."""
    from fedal.client_app import worker
    from fedal.config import Config
    from fedal.training import predict
    from fedal.uncertainty import confusion_counts
    from simulations.inprocess import run_inprocess, true_class_counts
    from strategies.active_learning import FederatedActiveLearning

    cfg = Config.from_run_config(run_config)
    kept = {}

    class Keep(FederatedActiveLearning):
        def evaluate(self, arrays):
            kept["arrays"] = arrays
            return super().evaluate(arrays)

    rc = {**run_config, "al-rounds": 0, "client-strategy": "random", "point-strategy": "random"}
    import strategies.active_learning as al

    saved, al.FederatedActiveLearning = al.FederatedActiveLearning, Keep
    try:
        rows, grid = run_inprocess(rc, num_clients)
    finally:
        al.FederatedActiveLearning = saved
    loop, c = grid.loop, grid.loop.num_classes
    model = loop.model_fn()
    model.load_state_dict(kept["arrays"].to_torch_state_dict())
    pids = [str(p) for p in range(num_clients)]
    unl, lab = true_class_counts(grid, rc, c)(pids)
    labeled = lab.sum(0)
    confs = np.zeros((num_clients, c, c))
    soft = np.zeros((c, c))  # true class × summed softmax: BBSE's soft confusion
    probs: dict[int, np.ndarray] = {}
    for ctx in grid.contexts.values():
        w = worker(ctx, rc)
        pools, z = w.pools(), pids.index(w.data.client_id)
        if len(pools.unlabeled):
            probs[z] = predict(model, w.data.x[pools.unlabeled])[0]
        if pools.labeled:
            idx = np.asarray(pools.labeled, dtype=np.int64)
            p_l = predict(model, w.data.x[idx])[0]
            confs[z] = confusion_counts(p_l, w.data.y[idx], c)
            np.add.at(soft, w.data.y[idx], p_l)
    conf = confs.sum(0)
    n_u = unl.sum(1)
    true_mix = unl / np.maximum(n_u, 1)[:, None]
    take = np.minimum(cfg.points_per_client, n_u)
    v = cfg.clients_per_round
    rng = np.random.default_rng(cfg.seed)
    elig = np.flatnonzero(n_u > 0)
    random = float(np.mean([batch_entropy(rng.permutation(elig)[:v], labeled, true_mix, take) for _ in range(draws)]))
    oracle = batch_entropy(balance_greedy(unl, labeled, take, v)[0], labeled, true_mix, take)
    est = {k: np.zeros_like(true_mix) for k in ESTIMATES}
    for z, p in probs.items():
        for k, e in estimates(p, labeled / labeled.sum(), conf, soft).items():
            est[k][z] = e
    live = n_u > 0
    tv = {k: float(0.5 * np.abs(e - true_mix).sum(1)[live].mean()) for k, e in est.items()}
    greedy = {k: batch_entropy(balance_greedy(e * n_u[:, None], labeled, take, v)[0], labeled, true_mix, take)
              for k, e in est.items()}
    recall = np.diag(conf) / np.maximum(conf.sum(1), 1)
    return SeedResult(cfg.seed, float(rows[0]["accuracy"]), int((recall == 0).sum()),
                      int((conf.sum(1) == 0).sum()), bbse_skill(confs, est["argmax"]),
                      random, oracle, tv, greedy)


def table(results: list[SeedResult]) -> str:
    head = "| seed | round-0 accuracy | classes never recognised | classes without labels | BBSE skill | random | oracle | " + \
        " | ".join(f"{k}: TV / greedy" for k in ESTIMATES) + " |"
    lines = [head, "|" + "---|" * (7 + len(ESTIMATES))]
    for r in results:
        lines.append(f"| {r.seed} | {100 * r.accuracy:.1f}% | {r.unseen} | {r.unlabeled_classes} | {r.skill:+.2f} | {r.random:.3f} | {r.oracle:.3f} | "
                     + " | ".join(f"{r.tv[k]:.2f} / {r.greedy[k]:.3f}" for k in ESTIMATES) + " |")
    mean = lambda f: np.mean([f(r) for r in results])  # noqa: E731
    lines.append(f"| mean | {100 * mean(lambda r: r.accuracy):.1f}% | {mean(lambda r: r.unseen):.1f} | "
                 f"{mean(lambda r: r.unlabeled_classes):.1f} | "
                 f"{mean(lambda r: r.skill):+.2f} | "
                 f"{mean(lambda r: r.random):.3f} | {mean(lambda r: r.oracle):.3f} | "
                 + " | ".join(f"{mean(lambda r: r.tv[k]):.2f} / {mean(lambda r: r.greedy[k]):.3f}" for k in ESTIMATES)
                 + " |")
    better = {k: sum(r.greedy[k] > r.random for r in results) for k in ESTIMATES}
    lines.append("")
    lines.append("Seeds where the greedy on the estimate beats random batches: "
                 + ", ".join(f"{k} {better[k]} of {len(results)}" for k in ESTIMATES) + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    from simulations.compare import SUITES

    ap = argparse.ArgumentParser(prog="python -m simulations.mix_estimates", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra run-config values")
    ap.add_argument("--out", help="write the table (Markdown) here as well")
    ap.add_argument("--dry-run", action="store_true", help="validate every seed's run config and stop")
    args = ap.parse_args(argv)
    suite = SUITES[args.suite]
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set takes KEY=VALUE, got {bad}")
    extra = dict(kv.partition("=")[::2] for kv in args.set)
    # Every seed's config is checked before the first seed's round 0 trains (minutes each).
    from fedal.config import Config, ConfigError

    for seed in args.seeds:
        try:
            Config.from_run_config({**suite.base, **extra, "seed": seed})
        except ConfigError as e:
            raise SystemExit(f"suite {suite.name!r}, seed {seed}: {e}") from None
    if args.dry_run:
        print(f"{suite.name}: seeds {' '.join(map(str, args.seeds))} validated; nothing was run")
        return 0
    results = []
    for seed in args.seeds:
        results.append(first_selection({**suite.base, **extra, "seed": seed}, suite.clients))
        print(f"seed {seed}: done", flush=True)
    out = (f"# Class-mix estimates at the first selection: {suite.name}\n\nRegenerate with:\n\n"
           f"```\npython -m simulations.mix_estimates {' '.join(sys.argv[1:] if argv is None else argv)}\n```\n\n{table(results)}\n")
    print(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
