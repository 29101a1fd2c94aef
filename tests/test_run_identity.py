"""Which run a directory holds (fedal/results.py): the default run directory's name, what
config.json records for the readers (simulations/reports/load.py, simulations/alignment.py), the
identity read back from it (files of older versions lack some keys) and the refusal, naming both
runs, to write a run over another's. Configs and recorders only, no federation: milliseconds each."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime

import pytest
import torch

from fedal.config import Config
from fedal.numerics import golden
from fedal.results import (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, ResultsMismatch, RunRecorder, run_directory,
                           run_identity, run_metadata)
from simulations.alignment import recorded_clients
from simulations.reports.load import load_results

BASE = {"client-strategy": "random", "point-strategy": "random", "seed": 3}


def config(tmp_path, **keys) -> Config:
    return Config.from_run_config({**BASE, "run-dir": str(tmp_path), **keys})


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# ------------------------------------------------------------------ the run directory's name

def test_the_default_run_name_ends_in_the_seed_and_gains_the_experiment_id_only_when_one_is_given(tmp_path):
    cfg = config(tmp_path)
    assert run_directory(cfg) == tmp_path / f"random+random-{cfg.config_hash()}-s3"  # nothing after the seed
    with_id = config(tmp_path, **{"experiment-id": "study-1"})
    assert with_id.config_hash() == cfg.config_hash()  # experiment-id is no part of the hash ...
    assert run_directory(with_id) == tmp_path / f"random+random-{cfg.config_hash()}-s3-study-1"  # ... but of the name
    assert run_directory(config(tmp_path, **{"run-name": "mine", "experiment-id": "study-1"})) == tmp_path / "mine"


# ------------------------------------------------------------------ what config.json records

def test_config_json_records_what_the_reports_and_the_alignment_tool_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["simulations/engine.py", "--clients", "7", "--run-config", "{}"])
    cfg = config(tmp_path, suite="smoke", **{"experiment-id": "study-1"})
    before = datetime.now().replace(microsecond=0)
    meta = run_metadata(cfg)
    after = datetime.now()
    # the numerics it computed on (fedal/numerics.py): this process's kernels and their golden
    env = meta.pop("environment")
    assert env["numerics"] == "native" and env["golden"] == golden() and env["torch"] == torch.__version__
    assert meta == {"config": cfg.to_run_config(), "seed": 3, "config_hash": cfg.config_hash(),
                    "experiment": "study-1", "method": "random+random", "suite": "smoke",
                    "started": meta["started"], "argv": ["simulations/engine.py", "--clients", "7", "--run-config", "{}"]}
    # started: the local time to the second, as ISO 8601 (the refusal below quotes it to the user)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["started"])
    assert before <= datetime.fromisoformat(meta["started"]) <= after

    # the readers, on the files a recorder writes
    rec = RunRecorder(run_directory(cfg), meta)
    rec.add_round({"round": 0, "labels": 10, "accuracy": 0.5})
    rec.finish({})
    (run,) = load_results(tmp_path).runs
    assert (run.method, run.suite, run.seed, run.config_hash) == ("random+random", "smoke", 3, cfg.config_hash())
    assert run.config == cfg.to_run_config()
    assert recorded_clients(run, default=99) == 7  # --clients 7 read from the recorded argv


def test_a_method_name_names_the_method_else_the_two_strategies_do(tmp_path):
    assert run_metadata(config(tmp_path, **{"method-name": "Ent+Ent"}))["method"] == "Ent+Ent"
    assert run_metadata(config(tmp_path))["method"] == "random+random"


# ------------------------------------------------------------------ the identity read back

@pytest.mark.parametrize("recorded, identity", [
    # this version: the experiment is recorded
    ({"experiment": "study-1", "config_hash": "h", "seed": 2}, ("study-1", "h", 2)),
    # older versions recorded no experiment: it is the run config's experiment-id ...
    ({"config": {"experiment-id": "study-1", "seed": 2}, "config_hash": "h", "seed": 2, "method": "m"},
     ("study-1", "h", 2)),
    # ... else the config hash and seed (Config.experiment)
    ({"config": {"experiment-id": "", "seed": 2}, "config_hash": "h", "seed": 2, "method": "m"}, ("h-s2", "h", 2)),
    ({"config_hash": "h", "seed": 2, "method": "m"}, ("h-s2", "h", 2)),
    # a file that says neither hash nor seed names no run
    ({"experiment": "study-1", "seed": 2}, None),
    ({"experiment": "study-1", "config_hash": "h"}, None),
    ({"started": "t0"}, None),
])
def test_run_identity_of_config_files_new_and_old(recorded, identity):
    assert run_identity(recorded) == identity


def test_the_identity_of_a_recorded_run_is_its_configs_experiment_hash_and_seed(tmp_path):
    for cfg in (config(tmp_path), config(tmp_path, **{"experiment-id": "study-1"})):
        assert run_identity(run_metadata(cfg)) == (cfg.experiment, cfg.config_hash(), 3)


# ------------------------------------------------------------------ the guard

def old_run(d, recorded: dict, completed: bool) -> dict:
    """A directory holding a run recorded as ``recorded`` (with a row, and a summary if completed)."""
    d.mkdir(parents=True)
    (d / CONFIG_FILE).write_text(json.dumps(recorded))
    (d / ROUNDS_FILE).write_text('{"round": 0}\n')
    if completed:
        (d / SUMMARY_FILE).write_text('{"completed": true}')
    return files(d)


@pytest.mark.parametrize("completed", [True, False])
def test_a_run_over_another_experiments_run_is_refused_naming_both_and_writes_nothing(tmp_path, completed):
    d = tmp_path / "r"
    kept = old_run(d, {"experiment": "study-1", "config_hash": "aaa", "seed": 5, "started": "2026-01-02T03:04:05"},
                   completed)
    with pytest.raises(ResultsMismatch) as e:
        RunRecorder(d, {"experiment": "study-2", "config_hash": "bbb", "seed": 7, "started": "2026-02-02T00:00:00"})
    done = "a completed run" if completed else "an unfinished run"
    assert str(e.value) == (
        f"{d} holds {done} of experiment 'study-1' (config hash aaa, seed 5, started 2026-01-02T03:04:05); "
        "this run is experiment 'study-2' (config hash bbb, seed 7) and would overwrite its results. "
        "Give this run its own run-name (or leave run-name empty: the default name includes the config hash, "
        "seed and experiment-id), or move the old results away; nothing was written")
    assert files(d) == kept


def test_the_refusal_says_so_when_the_old_run_recorded_no_start_time(tmp_path):
    d = tmp_path / "r"
    old_run(d, {"config": {"experiment-id": ""}, "config_hash": "aaa", "seed": 5}, completed=True)
    with pytest.raises(ResultsMismatch, match=re.escape("(config hash aaa, seed 5, started ?); this run is "
                                                        "experiment 'aaa-s6' (config hash aaa, seed 6)")):
        RunRecorder(d, {"config_hash": "aaa", "seed": 6})


def test_runs_that_differ_only_in_experiment_id_are_told_apart_also_in_an_older_versions_directory(tmp_path):
    """experiment-id is no part of the config hash: only the experiment tells these runs apart, and a
    directory an older version wrote records it only in its run config."""
    first = config(tmp_path, **{"experiment-id": "study-1"})
    older = {k: v for k, v in run_metadata(first).items() if k != "experiment"}  # as older versions wrote it
    d = tmp_path / "r"
    kept = old_run(d, older, completed=True)
    with pytest.raises(ResultsMismatch, match=f"experiment 'study-1' .*this run is experiment 'study-2'"):
        RunRecorder(d, run_metadata(config(tmp_path, **{"experiment-id": "study-2"})))
    assert files(d) == kept
    # the same run made again by this version starts afresh
    RunRecorder(d, run_metadata(first))
    assert set(files(d)) == {CONFIG_FILE}


@pytest.mark.parametrize("experiment_id", ["", "study-1"])
def test_the_same_run_made_again_starts_its_directory_afresh(tmp_path, experiment_id):
    cfg = config(tmp_path, **{"experiment-id": experiment_id})
    d = run_directory(cfg)
    old_run(d, run_metadata(cfg), completed=True)
    RunRecorder(d, run_metadata(cfg))
    assert set(files(d)) == {CONFIG_FILE}


def test_a_directory_whose_config_names_no_run_is_not_guarded(tmp_path):
    """Without a config hash and seed on either side nothing tells the runs apart: a new run starts
    afresh rather than refusing (e.g. a config.json of a hand-made directory)."""
    d = tmp_path / "r"
    old_run(d, {"method": "m", "started": "t0"}, completed=True)
    RunRecorder(d, {"experiment": "study-2", "config_hash": "bbb", "seed": 7})
    assert set(files(d)) == {CONFIG_FILE}
    RunRecorder(d, {"method": "m", "seed": 1})  # and a run that names none goes into a directory that does
    assert json.loads((d / CONFIG_FILE).read_text()) == {"method": "m", "seed": 1}

