import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedal.config import Config
from simulations.compare import SUITES, plan


def test_every_suite_plans_valid_configs(tmp_path):
    for suite in SUITES.values():
        runs = plan(suite, tmp_path)  # validates every run config up front
        assert len(runs) == len(suite.methods) * len(suite.seeds)
        assert len({r.run_dir for r in runs}) == len(runs)  # one directory per (config, seed)


def test_paper_suite_has_the_issue_methods():
    names = {m.name for m in SUITES["mnist1d-dirichlet"].methods}
    assert {"Rand", "Rand+Ent", "Ent+Ent", "Rand+Hybrid", "Ent+Hybrid", "Rand+LoGo", "Rand+BASE", "Ours"} <= names
    cinic = SUITES["cinic10-dirichlet"]
    assert cinic.clients == 300 and cinic.base["points-per-client"] == 100 and cinic.base["clients-per-round"] == 10


def test_finished_runs_are_skipped_and_keyed_by_hash_and_seed(tmp_path):
    suite = SUITES["digits-smoke"]
    runs = plan(suite, tmp_path, seeds=[0, 1], methods=["Rand"])
    assert [r.seed for r in runs] == [0, 1]
    assert runs[0].run_dir.name.endswith("-s0") and runs[0].run_dir.parent.name == "Rand"
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "summary.json").write_text(json.dumps({"completed": True}))
    again = plan(suite, tmp_path, seeds=[0, 1], methods=["Rand"])
    assert [r.done for r in again] == [True, False]


def test_unknown_method_names_the_valid_ones(tmp_path):
    with pytest.raises(SystemExit, match="valid: .*Ent\\+Ent"):
        plan(SUITES["digits-smoke"], tmp_path, methods=["Nope"])


def test_an_identical_finished_run_elsewhere_is_reused_under_this_runs_labels(tmp_path):
    from simulations.compare import find_identical, reuse

    suite = SUITES["digits-smoke"]
    run = plan(suite, tmp_path, seeds=[0], methods=["Ent+Ent"])[0]
    other = tmp_path / "another-suite" / "warm" / run.run_dir.name  # same hash and seed
    assert find_identical(run, tmp_path) is None
    other.mkdir(parents=True)
    full = Config.from_run_config(run.run_config).to_run_config()
    (other / "config.json").write_text(json.dumps({"method": "warm", "suite": "another-suite", "seed": 0,
                                                    "config": {**full, "method-name": "warm"}}))
    (other / "rounds.jsonl").write_text('{"round": 0}\n')
    (other / "summary.json").write_text(json.dumps({"completed": False}))
    assert find_identical(run, tmp_path) is None  # unfinished: not the same result
    (other / "summary.json").write_text(json.dumps({"completed": True}))
    assert find_identical(run, tmp_path) == other
    # a different seed is a different experiment
    assert find_identical(plan(suite, tmp_path, seeds=[1], methods=["Ent+Ent"])[0], tmp_path) is None

    reuse(run, other)
    assert run.done
    cfg = json.loads((run.run_dir / "config.json").read_text())
    assert cfg["method"] == "Ent+Ent" and cfg["suite"] == "digits-smoke" and cfg["reused_from"] == str(other)
    assert cfg["config"]["method-name"] == "Ent+Ent"
    assert (run.run_dir / "rounds.jsonl").read_text() == '{"round": 0}\n'
    assert json.loads((other / "config.json").read_text())["method"] == "warm"  # the source is untouched
    assert find_identical(run, tmp_path) == other  # its own directory never counts as the source


def test_jobs_runs_every_planned_run_once_and_validates(tmp_path, monkeypatch, capsys):
    import threading

    import simulations.compare as C

    seen, lock = [], threading.Lock()

    def fake_run_one(run, log_file, engine):  # stands in for a whole simulation
        with lock:
            seen.append((run.method.name, run.seed, engine))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "summary.json").write_text(json.dumps({"completed": True}))
        return 0

    monkeypatch.setattr(C, "run_one", fake_run_one)
    assert C.main(["digits-smoke", "--results", str(tmp_path), "--jobs", "2", "--engine", "inprocess"]) == 0
    suite = SUITES["digits-smoke"]
    assert sorted(seen) == sorted((m.name, s, "inprocess") for m in suite.methods for s in suite.seeds)
    assert capsys.readouterr().out.count(": ok in") == len(seen)
    seen.clear()
    assert C.main(["digits-smoke", "--results", str(tmp_path), "--jobs", "2"]) == 0 and seen == []  # resumed
    with pytest.raises(SystemExit, match="--jobs = 0 is invalid"):
        C.main(["digits-smoke", "--jobs", "0"])


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_to_the_runner_starts_none_of_its_queued_runs(tmp_path, monkeypatch, jobs):
    """With runs still queued, SIGTERM used to stop the runs under way and then start the queued
    ones one after another while the runner waited for its pool: it took a SIGKILL to stop."""
    import threading

    import simulations.compare as C

    started, lock = [], threading.Lock()

    def fake_run_one(run, log_file, engine):
        with lock:
            started.append(run.seed)
            first = len(started) == 1
        if first:
            time.sleep(0.3)  # every run is queued by now
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <runner>` would, mid-run
        time.sleep(0.5)  # the stopped run takes a moment to end
        return C.STOPPED

    monkeypatch.setattr(C, "run_one", fake_run_one)
    planned = len(SUITES["digits-smoke"].methods) * len(SUITES["digits-smoke"].seeds)
    assert planned > 2 * jobs
    with pytest.raises(SystemExit) as stop:
        C.main(["digits-smoke", "--results", str(tmp_path), "--jobs", str(jobs), "--engine", "inprocess"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert len(started) <= jobs  # only those already under way when the signal came
    assert signal.getsignal(signal.SIGTERM) is not C._stop_runs  # the handler is put back


def test_runs_recorded_before_the_probe_keys_are_found_only_where_those_keys_do_not_matter(tmp_path):
    """A Rand run never reads the probe's keys, so one recorded before they existed is the same
    experiment; a diffusion run from before the revised probe is reproduced by no configuration."""
    from simulations.compare import find_identical

    suite = SUITES["mnist1d-dirichlet-scratch"]
    for method, found in (("Rand", True), ("Ours", False)):
        run = plan(suite, tmp_path / "new", seeds=[0], methods=[method])[0]
        old = Config.from_run_config(run.run_config).to_run_config()
        for key in ("pseudo-optimizer", "pseudo-lr"):
            del old[key]
        old["pseudo-epochs"] = 4  # the earlier default
        d = tmp_path / "old" / method / "0123456789ab-s0"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"method": method, "seed": 0, "config": old}))
        (d / "summary.json").write_text(json.dumps({"completed": True}))
        assert (find_identical(run, tmp_path) == d) is found


def _engines_writing(path) -> list[int]:
    """PIDs of the engine processes whose command line names ``path`` (a run's results root)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if p.name.isdigit() and "simulations.engine" in cmd and str(path) in cmd and int(p.name) != os.getpid():
            found.append(int(p.name))
    return found


def test_a_run_directory_being_written_is_refused_to_a_second_process(tmp_path):
    """Two processes making one run (the same suite started twice on one results folder, or a
    run left going by a killed runner) would append their rows between each other's; the engine
    holds a lock on the run directory, and a second one stops before writing anything."""
    import simulations.engine as E
    from fedal.results import run_directory
    from tests.golden import INPROCESS_BASE

    rc = {**INPROCESS_BASE, "run-dir": str(tmp_path / "runs"), "run-name": "one"}
    d = run_directory(Config.from_run_config(rc))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from simulations.engine import hold_run_dir; "
                               "hold_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(d)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(SystemExit, match=f"{d} is being written by another process"):
            E.main(["--engine", "inprocess", "--clients", "3", "--run-config", json.dumps(rc)])
        assert list(d.iterdir()) == []  # nothing written
    finally:
        holder.kill()
        holder.wait()
    os.close(E.hold_run_dir(d))  # the kernel let go of the holder's lock with its process


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_sigterm_to_the_runner_stops_the_runs_it_started(tmp_path):
    """``kill`` of the comparison runner (SIGTERM, to it alone) stops its runs as well, instead of
    leaving them writing their directories with nobody to report them."""
    from simulations.compare import ROOT

    runner = subprocess.Popen([sys.executable, "-m", "simulations.compare", "digits-smoke", "--seeds", "0",
                               "--methods", "Rand", "--engine", "inprocess", "--results", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _engines_writing(tmp_path) and time.monotonic() < deadline:
            assert runner.poll() is None, "the runner ended before its run started"
            time.sleep(0.2)
        engines = _engines_writing(tmp_path)
        assert engines, "no run started within 120 s"
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while _engines_writing(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _engines_writing(tmp_path) == []
        assert not list(tmp_path.rglob("summary.json"))  # stopped, not waited for to the end
    finally:
        runner.kill()
        for pid in _engines_writing(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _finished(run_dir, golden):
    run_dir.mkdir(parents=True)
    env = {} if golden is None else {"environment": {"golden": golden}}
    (run_dir / "config.json").write_text(json.dumps({"method": "Rand", "seed": 0, **env}))
    (run_dir / "summary.json").write_text(json.dumps({"completed": True}))


@pytest.mark.parametrize("golden", [None, "0123456789abcdef"])
def test_new_seeds_are_not_added_to_a_method_whose_runs_computed_on_other_numerics(tmp_path, capsys, golden):
    from simulations.compare import main

    done = plan(SUITES["digits-smoke"], tmp_path, seeds=[0], methods=["Rand"])[0]
    _finished(done.run_dir, golden)
    args = ["digits-smoke", "--methods", "Rand", "--seeds", "0", "1", "--results", str(tmp_path), "--engine", "inprocess"]
    with pytest.raises(SystemExit, match=r"their seeds would mix two environments:\n  .*Rand: finished runs 1 on "
                                         + ("numerics not recorded" if golden is None else f"golden {golden}")):
        main(args)
    new = plan(SUITES["digits-smoke"], tmp_path, seeds=[1], methods=["Rand"])[0]
    assert not new.run_dir.exists()  # nothing was run
    assert main(args + ["--dry-run"]) == 0
    assert "mixes numerics:" in capsys.readouterr().out


def test_new_seeds_join_a_method_whose_runs_computed_on_these_numerics(tmp_path, capsys):
    from simulations.compare import main
    from simulations.run_index import golden_here

    done = plan(SUITES["digits-smoke"], tmp_path, seeds=[0], methods=["Rand"])[0]
    _finished(done.run_dir, golden_here("native"))
    assert main(["digits-smoke", "--methods", "Rand", "--seeds", "0", "1", "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mixes numerics" not in out and "todo  Rand" in out
