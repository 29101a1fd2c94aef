"""Results are keyed so that two runs never overwrite each other (issue #20): a run differing
only in experiment-id gets its own directory, and a directory holding another run's results is
refused before anything is written; the same run made again still starts its directory afresh."""

from __future__ import annotations

import json
import re

import pytest

from fedal.config import Config, ConfigError
from fedal.results import ResultsMismatch, RunRecorder
from fedal.results import run_directory
from tests.golden import INPROCESS_BASE
from tests.inprocess import run_inprocess

RC = {**INPROCESS_BASE, "al-rounds": 1, "init-clients": 2, "clients-per-round": 1, "client-strategy": "random",
      "point-strategy": "random"}


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_second_run_with_another_experiment_id_keeps_the_first_runs_files(tmp_path):
    first = {**RC, "run-dir": str(tmp_path), "experiment-id": "study-1"}
    run_inprocess(first, 3, record=True)
    d1 = run_directory(Config.from_run_config(first))
    kept = files(d1)
    assert {"rounds.jsonl", "summary.json", "config.json"} <= set(kept)
    assert json.loads(kept["config.json"])["experiment"] == "study-1"

    second = {**first, "experiment-id": "study-2"}
    run_inprocess(second, 3, record=True)
    d2 = run_directory(Config.from_run_config(second))
    assert d2 != d1 and d2.name.endswith("-study-2") and (d2 / "summary.json").exists()
    assert files(d1) == kept  # the first run's results untouched

    # a run name that points at the first run's directory is refused before anything is written
    with pytest.raises(ResultsMismatch, match=rf"{re.escape(str(d1))} holds a completed run of experiment 'study-1' .*this run is "
                                              r"experiment 'study-3'.*own run-name.*nothing was written"):
        run_inprocess({**first, "experiment-id": "study-3", "run-name": d1.name}, 3, record=True)
    assert files(d1) == kept

    # another seed is another run too; the same run made again starts afresh
    cfg = Config.from_run_config(first)
    meta = json.loads(kept["config.json"])
    with pytest.raises(ResultsMismatch, match="seed 0.*seed 1"):
        RunRecorder(d1, {**meta, "seed": 1})
    RunRecorder(d1, meta)
    assert not (d1 / "summary.json").exists() and cfg.experiment == "study-1"


def test_an_experiment_id_that_cannot_name_a_folder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"experiment-id = '\.\./x' is not valid"):
        Config.from_run_config({"experiment-id": "../x"})
