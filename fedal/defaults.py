"""Every run-config key with its default: the one source of truth (``fedal.config.Config`` parses
and validates a run config against it). ``pyproject.toml``'s ``[tool.flwr.app.config]`` repeats
them for ``flwr run`` (a test keeps the two identical) because the deprecated
``run_simulation`` entry point passes an empty run config, so defaults must live in code too."""

from __future__ import annotations

from typing import Any

# kebab-case key -> default. Order = the order shown in README and pyproject.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # data
    "dataset": "mnist1d",
    "data-root": "",
    "partition": "dirichlet",
    "dirichlet-alpha": 0.1,
    "shard-class-fraction": 0.2,
    # AL protocol (docs/method.md, "Protocol"; seeds/001 §5)
    "init-clients": 5,
    "init-points": 200,
    "al-rounds": 11,
    "clients-per-round": 5,
    "points-per-client": 200,
    "client-strategy": "diffusion",
    "point-strategy": "diffusion",
    # federated training (docs/method.md, "Protocol": FedAvg weighted by labeled examples)
    "training-mode": "warm-start",
    "fl-rounds": 15,
    "local-epochs": 2,
    "batch-size": 32,
    "learning-rate": 0.003,
    # "step": the paper's decay, learning-rate × 0.1 after every lr-step-rounds FL rounds of an AL
    # round's training (docs/method.md, "The paper's training regime"); "constant": no decay
    "lr-schedule": "constant",
    "lr-step-rounds": 10,
    # probing: pseudo-updates after each of the last ceil(T/4) FL rounds (docs/method.md)
    "pseudo-optimizer": "gd",
    "pseudo-epochs": 1,
    "pseudo-lr": 0.001,
    "pseudo-params": "head",
    "sketch-dim": 0,
    # client graph and diffusion (docs/method.md, "Client graph", "Impact, score, greedy")
    "knn-k": 7,
    "rho": 0.2,
    "delta": 0.1,
    "diffusion-steps": 5,
    "sigma-scope": "edges",
    "laplacian": "unnormalized",
    "client-impact": True,  # ablation: false drops the impact term v (score = g / std(g))
    # client strategies beyond the paper (docs/method.md, "Client selection beyond the paper")
    "coverage-steps": 20,  # diffusion-coverage's horizon H (even)
    "pow-d-candidates": 0,  # pow-d's d; 0 means 2 × clients-per-round
    # the balanced rules' class mix of U_z: "softmax" (mean prediction) or "argmax" (share of
    # points predicted in each class; docs/method.md, "Balanced DivFL")
    "predicted-mix": "softmax",
    # cumulative-divfl: a client that holds labels covers its neighbours "full"y, or by the
    # "share" of its data already labeled (docs/method.md, "Cumulative DivFL")
    "cumulative-cover": "full",
    # mix-balance's gate: "none", or "all-classes": random clients while some class has no
    # labeled point, which no class-mix estimate can see (docs/method.md, "Mix balance")
    "mix-gate": "none",
    # local batch (docs/method.md, "Local batch")
    "local-k": 7,
    "local-space": "embedding",
    # model
    "backbone": "auto",
    "backbone-weights": "",
    "freeze-backbone": False,
    "device": "auto",
    # CPU kernels: "native" (this machine's fastest) or "portable" (the same bits on every x86-64
    # CPU with AVX2; fedal/numerics.py)
    "numerics": "native",
    # output
    "run-dir": "runs",
    "run-name": "",
    "report-label-histogram": True,
    # labels for the comparison harness (not part of the experiment's identity)
    "method-name": "",
    "suite": "",
    # deployment semantics (docs/method.md, "Failures and resume"): operational, not part of the
    # experiment's identity
    "min-clients": 1,  # start once this many clients answered query.info ...
    "wait-timeout": 120.0,  # ... within this many seconds, else stop with an error
    "send-timeout": 3600.0,  # seconds a step waits for its replies; a client silent longer failed it
    "max-retries": 2,  # resends of a step to a client that failed it, before skipping the client
    "retry-backoff": 2.0,  # seconds before the first resend (doubling per resend)
    "on-client-failure": "skip",  # skip: retry, then go on without the client; stop: raise at once
    "resume": False,  # continue the run from the checkpoint in its run directory
    "stop-after-round": -1,  # tests and staged runs: stop after checkpointing this AL round (-1: off)
    # the id a site's durable pools are kept under (its state-dir); "" = "<config hash>-s<seed>"
    "experiment-id": "",
    # asynchronous labeling (docs/method.md, "Asynchronous labeling"; SPEC §6, seeds/000): "sync"
    # is the paper's loop (labels of a round before training on them); "async" lets simulated
    # annotators label each site's query pool while the server keeps training
    "labeling": "sync",
    "async-workers": "entropy,least-confidence,margin",  # one uncertainty measure per worker
    "query-pool-low": 10,  # a site refills its query pool when fewer queries than this are open ...
    "query-pool-refill": 30,  # ... with this many new ones (split among the workers)
    "annotators-per-site": 2,
    "annotator-latency": "lognormal:median=6,sigma=0.5",  # seconds per label (fedal.annotate.Latency)
    "label-noise": 0.0,  # probability that a simulated annotator answers a wrong class
    "sim-fl-round-s": 30.0,  # simulated seconds one FL round of training takes
    "sim-select-s": 20.0,  # simulated seconds of the probe and client selection of an AL round
    # who labels (docs/labeling.md): "simulated" annotators on the simulated clock above, or
    # "people" on each site's labeling page (fedal-annotate), on the wall clock
    "annotators": "simulated",
    # seconds on the run's clock the server waits, after the last AL round's grants, for the
    # granted labels; then it withdraws the open queries unpaid and ends. 0: no deadline (the
    # tail ends when every granted label is paid, or after MAX_TAIL_ROUNDS tail rounds); people
    # need one (> 0)
    "labeling-deadline-s": 0.0,
    # how budget reaches a site in an async run: "selection" (the paper's rule: a site labels only
    # what client selection grants it, points-per-client per pick) or "standing" (a site once
    # granted keeps a standing share: whenever it is owed fewer labels than it labels between two
    # messages (twice over, at least query-pool-refill), the server tops it up from the run's
    # remaining budget, so its annotators do not wait for selection to pick it again;
    # strategies/async_policy.py)
    "async-budget": "selection",
}
