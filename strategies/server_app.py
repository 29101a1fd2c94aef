"""fedal ServerApp: parse and validate the run config once, then drive the AL loop
(``strategies.active_learning``)."""

from __future__ import annotations

import os
import sys

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedal import numerics
from fedal.checkpoint import CheckpointError
from fedal.config import Config, ConfigError
from fedal.data import load_dataset
from fedal.numerics import NumericsError
from fedal.results import ResultsMismatch, RunRecorder, run_directory, run_metadata
from strategies.active_learning import FederatedActiveLearning
from strategies.federation import ClientFailure, FederationError


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
        numerics.apply(cfg.numerics, cfg.device)  # before this process computes anything with torch
        load_dataset(cfg.dataset, cfg.data_root)  # a missing dataset stops here, before any label
    except (ConfigError, FileNotFoundError, NumericsError) as e:
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
    loop = FederatedActiveLearning.for_run(cfg, grid, log=_log)
    try:
        loop.run(recorder)
    except ConfigError as e:
        _report("fedal: configuration error: ", e)
        raise
    except (FederationError, ClientFailure, CheckpointError, ResultsMismatch) as e:
        _report("fedal: error: ", e)
        raise


def build_server_app(run_config: dict | None = None) -> ServerApp:
    """The ServerApp; ``run_config`` overrides the run's config (``flwr run`` passes the run
    config in the Context; the deprecated ``run_simulation`` entry point passes an empty one, so
    scripts and tests bind theirs here)."""
    sapp = ServerApp()
    bound = dict(run_config or {})

    @sapp.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context, bound)

    return sapp


app = build_server_app()
