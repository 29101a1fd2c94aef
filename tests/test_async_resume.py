"""Resume of an asynchronous run with people (labeling = "async", annotators = "people";
docs/method.md, "Failures and resume"; strategies/async_policy.py): the server crashes after the
sites got some of an AL round's grants but before that round's checkpoint, people keep labeling
while it is down, and ``resume = true`` continues the run from its checkpoint with the same run
token, on the wall clock from the checkpoint's time, without paying beyond the label budget or
twice. The people are the bot of tests/test_async_people.py."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
from contextlib import closing, contextmanager

import pytest

import strategies.active_learning
from fedal import checkpoint
from fedal.checkpoint import CheckpointError
from fedal.config import Config
from fedal.results import CHECKPOINT_FILE, ROUNDS_FILE, SUMMARY_FILE
from fedal.store import site_store_path
from tests.inprocess import InProcessGrid, run_inprocess
from tests.test_async_people import CLIENTS, PEOPLE, People

RC = {**PEOPLE, "al-rounds": 3, "run-name": "people"}
CRASH_AT = 3  # the selection grants of AL round 2 (their messages carry al-round 3)
LIMIT_S = 120
DOWN_S = 1.5  # the server is down this long; people label meanwhile


class Crash(RuntimeError):
    pass


class CrashingGrid(InProcessGrid):
    """The server 'crashes' right after the sites took the selection grants of AL round
    ``CRASH_AT - 1`` (a query.labeling message with a grant and no grant-tag): the grants are in
    the stores, the round's checkpoint is not written."""

    armed = True

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if self.armed and any(m.metadata.message_type == "query.labeling"
                              and m.content["config"]["al-round"] == CRASH_AT and m.content["config"]["grant"] > 0
                              and "grant-tag" not in m.content["config"] for m in messages):
            raise Crash(f"injected crash after the grants of AL round {CRASH_AT - 1}")
        return replies


class StandingCrashGrid(InProcessGrid):
    """The server 'crashes' after the sites took the ``n``-th query.labeling message of AL round
    2 (the first is AL round 1's selection, before its checkpoint; the next are AL round 2's FL
    rounds, with the standing share's top-ups). ``hide``: a node left out of the next
    ``get_node_ids`` (a client not connected when the run resumes, back at the next AL round)."""

    def __init__(self, *a, n: int = 3, **kw):
        super().__init__(*a, **kw)
        self.n, self.seen, self.armed, self.hide = n, 0, True, None

    def get_node_ids(self):
        nodes = [n for n in super().get_node_ids() if n != self.hide]
        self.hide = None
        return nodes

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if self.armed and any(m.metadata.message_type == "query.labeling" and m.content["config"]["al-round"] == 2
                              for m in messages):
            self.seen += 1
            if self.seen == self.n:
                raise Crash(f"injected crash after the labeling message {self.n} of AL round 2")
        return replies


def in_thread(fn):
    """Run ``fn`` in a thread (a run that never ends fails the test instead of hanging it);
    returns (its result or exception, wall seconds)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t0 = time.monotonic()
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(LIMIT_S)
    assert not t.is_alive(), f"the run did not end within {LIMIT_S} s"
    return out, time.monotonic() - t0


def result(out: dict):
    """The value of an ``in_thread`` run, or its exception raised here."""
    if "error" in out:
        raise out["error"]
    return out["value"]


@contextmanager
def people_labeling(rc: dict, state):
    """The bot of tests/test_async_people.py labeling on the sites' pages while the block runs."""
    people = People(rc, state)
    people.start()
    try:
        yield people
    finally:
        people.close()


def rows_on_file(run_dir):
    return [json.loads(line) for line in (run_dir / ROUNDS_FILE).read_text().splitlines()]


def site_dbs(state, rc):
    """(client id, open connection) of every durable store the run's clients wrote."""
    exp = Config.from_run_config(rc).experiment
    for cid in map(str, range(CLIENTS)):
        path = site_store_path(state, exp, cid)
        if path.exists():
            with closing(sqlite3.connect(path)) as db:
                yield cid, db


def grant_keys(state, rc) -> dict[str, list[str]]:
    return {cid: [k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'grant:%'")]
            for cid, db in site_dbs(state, rc)}


def store_totals(state, rc) -> dict[str, tuple[int, int, int]]:
    """Per client: (budget, labels, distinct labeled points) in its durable store."""
    out = {}
    for cid, db in site_dbs(state, rc):
        b = db.execute("SELECT value FROM meta WHERE key = 'budget'").fetchone()
        n, d = db.execute("SELECT count(*), count(DISTINCT idx) FROM labels").fetchone()
        out[cid] = (int(b[0]) if b else 0, n, d)
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A people run crashed after AL round 2's grants (checkpoint: AL round 1), its people still
    labeling; a copy of its run directory as the crash left it in ``snap``."""
    from fedal.client_app import build_client_app

    root = tmp_path_factory.mktemp("async-resume")
    state = root / "state"
    rc = {**RC, "run-dir": str(root / "runs")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDAL_STATE_DIR", str(state))
        people = People(rc, state)
        people.start()
        grid = CrashingGrid(build_client_app(rc), CLIENTS)
        out, _ = in_thread(lambda: run_inprocess(rc, CLIENTS, record=True, grid=grid))
        assert isinstance(out.get("error"), Crash), out
        run_dir = root / "runs" / "people"
        shutil.copytree(run_dir, root / "snap" / "people")
        yield {"rc": rc, "state": state, "people": people, "grid": grid, "run_dir": run_dir,
               "snap": root / "snap", "mp": mp, "crashed_at": time.monotonic()}
        people.close()


def test_a_crashed_people_run_resumes_with_its_token_and_pays_the_budget_once(crashed, monkeypatch):
    rc, state, run_dir = crashed["rc"], crashed["state"], crashed["run_dir"]
    cfg = Config.from_run_config(rc)
    before = rows_on_file(run_dir)
    assert [r["round"] for r in before] == [0, 1] and not (run_dir / SUMMARY_FILE).exists()
    ck = checkpoint.load(run_dir / CHECKPOINT_FILE, cfg.config_hash(), cfg.seed)
    token = ck.extra["token"]
    assert ck.al_round == 1 and ck.rows == before
    # the crash came after AL round 2's grants: the stores hold the whole budget already
    assert sum(b for b, _, _ in store_totals(state, rc).values()) == cfg.label_budget
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - crashed["crashed_at"])))
    paid_while_down = sum(n for _, n, _ in store_totals(state, rc).values())
    assert paid_while_down > before[-1]["paid"]  # people labeled while the server was down

    # the resumed round's selection picks other clients than the crashed one's did (more labels
    # came in meanwhile): their grants must be capped by the budget the sites report as granted
    real = strategies.active_learning.plan_round

    def other_clients(strategy, stats, *a):
        plan = real(strategy, stats, *a)
        picked = {z for z, _ in plan}
        others = [z for z in range(len(stats.n_unlabeled)) if z not in picked and stats.n_unlabeled[z] > 0]
        return [(z, n) for z, (_, n) in zip(others, plan)]

    monkeypatch.setattr(strategies.active_learning, "plan_round", other_clients)
    crashed["grid"].armed = False  # the SuperNodes outlived the server
    logs: list[str] = []
    out, wall = in_thread(lambda: run_inprocess({**rc, "resume": True}, CLIENTS, record=True, grid=crashed["grid"],
                                                log=logs.append))
    rows, grid = result(out)
    assert not crashed["people"].errors, crashed["people"].errors
    summary = grid.loop.summary

    # the rows on file continue the checkpointed ones: AL round 2 again, then the tail
    on_file = rows_on_file(run_dir)
    assert on_file[:2] == before and [r["round"] for r in on_file] == list(range(len(on_file)))
    assert json.loads(json.dumps(rows, sort_keys=True)) == on_file
    assert on_file[2]["round"] == 2 and not on_file[2]["tail"] and on_file[-1]["tail"]
    assert on_file[2]["acquired"] == 0  # the budget was granted before the crash: nothing more
    assert on_file[2]["paid"] >= paid_while_down  # the labels paid while it was down are in
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["completed"]
    # the clock went on from the checkpoint's time, the downtime not counted
    assert on_file[2]["sim_round_start_s"] >= before[-1]["sim_time_s"]
    assert on_file[-1]["sim_time_s"] <= before[-1]["sim_time_s"] + wall

    # budgets exact: paid what was granted, never beyond the label budget, no point twice
    totals = store_totals(state, rc)
    budget = sum(b for b, _, _ in totals.values())
    paid = sum(n for _, n, _ in totals.values())
    assert all(n == d for _, n, d in totals.values()), "a point paid twice"
    assert budget <= cfg.label_budget and paid <= cfg.label_budget
    assert summary["paid"] == paid == summary["granted"] == budget == cfg.label_budget
    assert on_file[-1]["labels"] == paid
    # every grant in every store is keyed by the one run token: the resumed run reused it
    keys = grant_keys(state, rc)
    assert keys and all(k.startswith(f"grant:{token}:") for ks in keys.values() for k in ks), keys
    assert any(k.startswith(f"grant:{token}:{CRASH_AT}") for ks in keys.values() for k in ks)
    # the labeled set's class counts were recounted: they are the stores' labels
    assert sum(on_file[-1]["labeled_per_class"]) == paid
    assert any("resuming" in line and "after AL round 1" in line for line in logs)


def test_resume_of_a_simulated_async_run_is_refused_clearly(tmp_path):
    from tests.test_async_labeling import ASYNC, CLIENTS as SIM_CLIENTS

    with pytest.raises(CheckpointError, match=r"resume = true is not supported with labeling = async and "
                                              r"annotators = simulated: .*live in the clients' memory"):
        run_inprocess({**ASYNC, "run-dir": str(tmp_path), "resume": True}, SIM_CLIENTS, record=True)


def test_a_resume_against_stores_of_another_run_token_is_refused(crashed, tmp_path):
    # the checkpoint names a token the stores never saw: as if they held another run of the experiment
    rc = {**crashed["rc"], "run-dir": str(tmp_path), "resume": True}
    shutil.copytree(crashed["snap"] / "people", tmp_path / "people")
    path = tmp_path / "people" / CHECKPOINT_FILE
    cfg = Config.from_run_config(rc)
    ck = checkpoint.load(path, cfg.config_hash(), cfg.seed)
    ck.extra["token"] = "0" * 32
    checkpoint.save(path, ck)
    with pytest.raises(CheckpointError, match=rf"resume: the stores of client\(s\) .*hold a label budget or "
                                              rf"labels of experiment '{re.escape(cfg.experiment)}' that another run "
                                              r"granted.*new experiment-id"):
        run_inprocess(rc, CLIENTS, record=True, grid=InProcessGrid(crashed["grid"].client_app, CLIENTS))


def test_a_corrupt_checkpoint_of_a_people_run_is_refused_naming_the_file(crashed, tmp_path):
    rc = {**crashed["rc"], "run-dir": str(tmp_path), "resume": True}
    shutil.copytree(crashed["snap"] / "people", tmp_path / "people")
    path = tmp_path / "people" / CHECKPOINT_FILE
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"w:0.npy") + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"the checkpoint {re.escape(str(path))} is corrupt"):
        run_inprocess(rc, CLIENTS, record=True, grid=InProcessGrid(crashed["grid"].client_app, CLIENTS))
    # a checkpoint without an asynchronous run's state (a synchronous run's) is refused too
    cfg = Config.from_run_config(rc)
    shutil.copy(crashed["snap"] / "people" / CHECKPOINT_FILE, path)
    ck = checkpoint.load(path, cfg.config_hash(), cfg.seed)
    ck.extra = None
    checkpoint.save(path, ck)
    with pytest.raises(CheckpointError, match=rf"the checkpoint {re.escape(str(path))} holds no asynchronous run's state"):
        run_inprocess(rc, CLIENTS, record=True, grid=InProcessGrid(crashed["grid"].client_app, CLIENTS))


def test_a_standing_people_run_resumes_and_a_client_back_later_is_checked_and_recounted(tmp_path, monkeypatch):
    # async-budget = standing: the standing share's state (enrolled sites, their top-ups) comes
    # back from the checkpoint; the client holding most labels is not connected when the run
    # resumes and comes back at the next AL round: its first reply is checked and recounted
    from fedal.client_app import build_client_app

    state = tmp_path / "state"
    monkeypatch.setenv("FEDAL_STATE_DIR", str(state))
    rc = {**RC, "async-budget": "standing", "run-dir": str(tmp_path / "runs"), "run-name": "standing"}
    cfg = Config.from_run_config(rc)
    with people_labeling(rc, state) as people:
        grid = StandingCrashGrid(build_client_app(rc), CLIENTS)
        out, _ = in_thread(lambda: run_inprocess(rc, CLIENTS, record=True, grid=grid))
        assert isinstance(out.get("error"), Crash), out
        run_dir = tmp_path / "runs" / "standing"
        before = rows_on_file(run_dir)
        ck = checkpoint.load(run_dir / CHECKPOINT_FILE, cfg.config_hash(), cfg.seed)
        assert ck.al_round == 1 and ck.extra["enrolled"] and ck.extra["want"]
        assert sum(ck.extra["granted_by"].values()) == before[-1]["granted"]
        time.sleep(DOWN_S)
        late = max(store_totals(state, rc).items(), key=lambda kv: kv[1][1])[0]
        grid.armed, grid.hide = False, next(n for n, c in grid.contexts.items()
                                            if str(c.node_config["partition-id"]) == late)
        logs: list[str] = []
        rows, grid = result(in_thread(lambda: run_inprocess({**rc, "resume": True}, CLIENTS, record=True, grid=grid,
                                                            log=logs.append))[0])
    assert not people.errors, people.errors
    summary = grid.loop.summary
    on_file = rows_on_file(run_dir)
    assert on_file[:2] == before and [r["round"] for r in on_file] == list(range(len(on_file)))
    assert on_file[-1]["tail"] and "standing_granted" in on_file[-1]
    assert any(f"client {late} is back" in line for line in logs), logs
    totals = store_totals(state, rc)
    budget = sum(b for b, _, _ in totals.values())
    paid = sum(n for _, n, _ in totals.values())
    assert all(n == d for _, n, d in totals.values()), "a point paid twice"
    assert summary["granted"] == budget <= cfg.label_budget and summary["paid"] == paid <= budget
    # what each way granted goes on from the checkpoint's counts
    assert summary["granted_by_selection"] >= ck.extra["granted_by"]["selection"] > 0
    assert summary["granted_standing"] >= ck.extra["granted_by"]["standing"]
    assert on_file[-1]["labels"] == paid and sum(on_file[-1]["labeled_per_class"]) == paid
    token = ck.extra["token"]
    assert all(k.startswith(f"grant:{token}:") for ks in grant_keys(state, rc).values() for k in ks)


def test_a_people_run_stops_after_a_round_and_resumes_to_the_end(tmp_path, monkeypatch):
    # stop-after-round stages a people run: it stops after checkpointing that AL round, the sites
    # keep what they were granted, and resume = true goes on to the end with the budget paid once,
    # choosing the clients an uninterrupted run chooses (client-strategy = random: the picks are
    # the server's random state, restored from the checkpoint)
    from fedal.client_app import build_client_app

    state = tmp_path / "state"
    monkeypatch.setenv("FEDAL_STATE_DIR", str(state))
    rc = {**RC, "run-dir": str(tmp_path / "runs"), "stop-after-round": 1}
    cfg = Config.from_run_config(rc)
    with people_labeling(rc, state) as people:
        grid = InProcessGrid(build_client_app(rc), CLIENTS)
        result(in_thread(lambda: run_inprocess(rc, CLIENTS, record=True, grid=grid))[0])
        run_dir = tmp_path / "runs" / "people"
        assert [r["round"] for r in rows_on_file(run_dir)] == [0, 1] and not (run_dir / SUMMARY_FILE).exists()
        rows, grid = result(in_thread(lambda: run_inprocess({**rc, "resume": True}, CLIENTS, record=True,
                                                            grid=grid))[0])
    assert not people.errors, people.errors
    on_file = rows_on_file(run_dir)
    assert [r["round"] for r in on_file] == list(range(len(on_file))) and on_file[-1]["tail"]
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["completed"]
    totals = store_totals(state, rc)
    assert all(n == d for _, n, d in totals.values()), "a point paid twice"
    assert grid.loop.summary["paid"] == sum(n for _, n, _ in totals.values()) == cfg.label_budget

    whole = {**RC, "run-dir": str(tmp_path / "runs"), "run-name": "whole", "experiment-id": "whole"}
    assert Config.from_run_config(whole).config_hash() == cfg.config_hash()  # the same experiment, seed
    with people_labeling(whole, state):
        result(in_thread(lambda: run_inprocess(whole, CLIENTS, record=True))[0])
    # the AL rounds' picks (the tail rounds choose nobody, and their number follows the people's pace)
    picks = [r["chosen_clients"] for r in rows_on_file(tmp_path / "runs" / "whole") if not r["tail"]]
    assert [r["chosen_clients"] for r in on_file if not r["tail"]] == picks
    assert len(picks) == RC["al-rounds"] and all(picks)


def test_stop_after_round_is_refused_for_simulated_annotators():
    from fedal.config import ConfigError

    with pytest.raises(ConfigError, match=r"stop-after-round = 1 needs a run that can resume.*stop-after-round = -1"):
        Config.from_run_config({"labeling": "async", "stop-after-round": 1})
    Config.from_run_config({"labeling": "sync", "stop-after-round": 1})
