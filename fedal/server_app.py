"""fedal ServerApp: parse and validate the run config once, then drive the AL loop."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedal.config import Config, ConfigError
from fedal.data import load_dataset, model_inputs
from fedal.checkpoint import CheckpointError
from fedal.results import ResultsMismatch, RunRecorder
from fedal.training import build_model
from strategies.active_learning import ClientFailure, FederatedActiveLearning, FederationError


def run_directory(cfg: Config) -> Path:
    """``run-dir/<run-name>``; without a run name ``<client>+<point strategy>-<config hash>-s<seed>``,
    with ``-<experiment-id>`` appended when one is given: experiment-id is no part of the config
    hash, and two runs differing only in it must not share a directory (``fedal.results``
    refuses a directory that holds another run's results)."""
    name = cfg.run_name or (f"{cfg.client_strategy}+{cfg.point_strategy}-{cfg.config_hash()}-s{cfg.seed}"
                            + (f"-{cfg.experiment_id}" if cfg.experiment_id else ""))
    return Path(cfg.run_dir) / name


def run_metadata(cfg: Config) -> dict:
    """What config.json records about a run (the reports read it; ``experiment`` with the config
    hash and seed says which run a directory holds)."""
    return {"config": cfg.to_run_config(), "seed": cfg.seed, "config_hash": cfg.config_hash(),
            "experiment": cfg.experiment,
            "method": cfg.method_name or f"{cfg.client_strategy}+{cfg.point_strategy}",
            "suite": cfg.suite, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}


def _log(line: str) -> None:
    print(line, flush=True)


def _report(prefix: str, e: BaseException) -> None:
    """The full message on stderr before the exception propagates. Flower logs an exception
    from a ServerApp's main (``flwr-serverapp``: "ServerApp raised an exception" with the
    traceback, and the run's status details; the simulation engine re-raises it from
    ``run_simulation``), but a suite's log and an operator's terminal show this line first."""
    print(f"{prefix}{e}", file=sys.stderr, flush=True)


def main(grid: Grid, context: Context, run_config: dict | None = None) -> None:
    torch.set_num_threads(int(os.environ.get("FEDAL_TORCH_THREADS", "1")))
    try:
        cfg = Config.from_run_config({**context.run_config, **(run_config or {})})
        ds = load_dataset(cfg.dataset, cfg.data_root)  # a missing dataset stops here, before any label
    except (ConfigError, FileNotFoundError) as e:
        # raised, not SystemExit: Flower catches Exception only, and logs it
        _report("fedal: configuration error: ", e)
        raise
    run_dir = run_directory(cfg)
    try:
        recorder = RunRecorder(run_dir, run_metadata(cfg), resume=cfg.resume)
    except ResultsMismatch as e:  # another run's results there: refused before any label is paid
        _report("fedal: error: ", e)
        raise
    _log(f"fedal: writing results to {run_dir}")
    # the name the sites' pool stores are kept under: a site's labeling page (fedal-annotate
    # --experiment-id) needs it, and it is derived (fedal.config.Config.experiment) unless given
    _log(f"fedal: experiment id {cfg.experiment}")

    x_test = model_inputs(cfg, ds.x_test, "test")  # frozen backbone: the test set's features

    def model_fn():
        return build_model(cfg.dataset, tuple(x_test.shape[1:]), ds.num_classes, cfg.backbone,
                           cfg.backbone_weights, seed=cfg.seed, freeze_backbone=cfg.freeze_backbone)

    loop = FederatedActiveLearning(cfg, grid, model_fn, (x_test, ds.y_test), ds.num_classes, log=_log)
    try:
        loop.run(recorder)
    except ConfigError as e:
        _report("fedal: configuration error: ", e)
        raise
    except (FederationError, ClientFailure, CheckpointError, ResultsMismatch) as e:
        _report("fedal: error: ", e)
        raise


def build_server_app(run_config: dict | None = None) -> ServerApp:
    """The ServerApp; ``run_config`` overrides the run's config (see ``build_client_app``)."""
    sapp = ServerApp()
    bound = dict(run_config or {})

    @sapp.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context, bound)

    return sapp


app = build_server_app()
