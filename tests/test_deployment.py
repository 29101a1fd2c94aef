"""fedal on Flower's deployment engine with real processes (issue #13): a SuperLink with TLS,
SuperNode authentication and a database, three registered SuperNodes, each with its own .npz
data, client id and state dir (``fedal.deploy.local``), and a short AL run of digits.

The SuperNodes run fedal in a persistent worker each (node config persistent-worker=true). One
SuperNode is SIGKILLed as in a machine crash (its whole process group: the SuperNode, its
SuperExec and the ClientApp process that was training, and its persistent worker) and restarted with the same key, data and state dir. The
run must still finish (status through ``flwr ls``, not ``flwr run``'s exit code), every label
that site had paid before the kill must still be in its store, and no label may be paid twice.
A SuperNode whose key was never registered is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from fedal.deploy.local import LocalDeployment

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and SIGKILL")

RUN = {"init-clients": 3, "init-points": 10, "al-rounds": 2, "clients-per-round": 2, "points-per-client": 10,
       "fl-rounds": 1, "local-epochs": 1, "client-strategy": "random", "point-strategy": "random",
       "min-clients": 3, "send-timeout": 40.0, "max-retries": 3, "retry-backoff": 2.0, "run-name": "deploy-test"}
VICTIM = 2


def store_of(dep: LocalDeployment, k: int) -> Path:
    (db,) = (dep.sites / f"site-{k}" / "state" / "pools").glob("*/*.sqlite")
    return db


def paid(db: Path) -> list[tuple[int, int, int]]:
    """(index, label, AL round) of every committed label, read without fedal's code."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT idx, label, al_round FROM labels ORDER BY pos").fetchall()


def wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_killed_and_restarted_supernode_keeps_its_labels_and_the_run_finishes(tmp_path):
    t0 = time.time()
    with LocalDeployment(tmp_path / "dep", n_supernodes=3, dataset="digits", points_per_site=120) as dep:
        dep.up()
        # a SuperNode with a key the SuperLink does not know is refused
        stranger = dep.start_supernode(4, node_config='partition-id=3 num-partitions=4', extra=("--max-retries", "1"))
        run_id = dep.run(RUN)
        assert stranger.popen.wait(90) != 0  # refused: Flower exits (its exit code 305)
        assert "Failed to activate SuperNode" in stranger.log.read_text(errors="replace")
        dep.kill(stranger)  # its SuperExec, left behind retrying
        victim = dep.supernodes[VICTIM]
        log = victim.log

        # kill the victim while it trains, after it paid labels: a train message received
        # after its store holds a committed acquisition
        def training_after_paying():
            try:
                if not paid(store_of(dep, VICTIM)):
                    return False
            except (ValueError, sqlite3.Error):
                return False
            text = log.read_text(errors="replace")
            mark = getattr(training_after_paying, "mark", None)
            if mark is None:
                training_after_paying.mark = len(text)
                return False
            return "Receiving: train message" in text[mark:]

        wait_for(training_after_paying, 150, "the victim to receive a train message after paying labels")
        dep.crash_supernode(VICTIM)  # its process group and its persistent worker
        before = paid(store_of(dep, VICTIM))
        assert before, "the victim paid no label before the kill"
        t_kill = time.time()
        # same key, data, state dir and Runtime API port; Flower refuses it until the SuperLink
        # has missed two of the dead node's heartbeats (about 60 s), so this retries
        restarted = dep.restart_supernode(VICTIM, timeout=150)
        t_back = time.time() - t_kill

        run_dir = dep.runs / "deploy-test"
        wait_for(lambda: (run_dir / "summary.json").exists(), 240, "the run's summary", poll=1)
        status = dep.wait_run(run_id, timeout=60)
        assert status == "finished:completed", (status, dep.logs_of_run(run_id)[-3000:])

        assert len(dep.online()) == 3  # the restarted victim is back, the stranger never joined

        # every label the victim had paid is still there, none twice, on every site
        after = paid(store_of(dep, VICTIM))
        assert set(before) <= set(after)
        total = 0
        for k in (1, 2, 3):
            rows = paid(store_of(dep, k))
            idx = [r[0] for r in rows]
            assert len(idx) == len(set(idx)), f"site-{k} paid a label twice"
            with sqlite3.connect(store_of(dep, k)) as c:
                states = c.execute("SELECT state FROM acquisitions").fetchall()
            assert all(s == ("committed",) for s in states)
            total += len(rows)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert summary["labels"] == total  # the server counts exactly the labels the sites hold
        back_in = "Receiving:" in restarted.log.read_text(errors="replace").split("=== ")[-1]
    print(f"deployment test: {time.time() - t0:.0f} s; the victim was back after {t_back:.0f} s and "
          f"{'took part again' if back_in else 'got no message before the run ended'}")


PEOPLE_EXP = "people-deploy"
PEOPLE_RUN = {"labeling": "async", "annotators": "people", "experiment-id": PEOPLE_EXP, "labeling-deadline-s": 240.0,
              "init-clients": 2, "init-points": 4, "al-rounds": 1, "clients-per-round": 2, "points-per-client": 4,
              "fl-rounds": 1, "local-epochs": 1, "client-strategy": "random", "point-strategy": "entropy",
              "query-pool-low": 2, "query-pool-refill": 4, "min-clients": 2, "send-timeout": 60.0,
              "run-name": "people-test"}


def test_people_label_a_deployed_async_federation_on_their_sites_pages(tmp_path):
    """labeling = async with annotators = people on real processes: two SuperNodes (persistent
    workers), a fedal-annotate page next to each (started before the run, waiting for the store),
    and a bot that labels over HTTP with the sites' true labels while the server trains. The run
    must finish with the whole granted budget paid, each label once, in the sites' stores."""
    import re
    import urllib.parse
    import urllib.request

    import numpy as np

    t0 = time.time()
    token = "people-deployment-token-0123456789"
    with LocalDeployment(tmp_path / "dep", n_supernodes=2, dataset="digits", points_per_site=60) as dep:
        dep.up()
        (tmp_path / "token").write_text(token)
        pages = {k: dep.start_annotate(k, PEOPLE_EXP, tmp_path / "token")[1] for k in (1, 2)}
        ys = {k: np.load(dep.sites / f"site-{k}" / "data.npz")["y"] for k in (1, 2)}
        run_id = dep.run(PEOPLE_RUN)
        run_dir = dep.runs / "people-test"

        def call(url, data=None):
            body = None if data is None else urllib.parse.urlencode(data).encode()
            req = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.geturl(), r.read().decode()

        paid_by_bot = {1: [], 2: []}
        drawn = set()  # how the pages drew the points (digits: 8x8 images, from the run's dataset)
        deadline = time.time() + 400
        while not (run_dir / "summary.json").exists() and time.time() < deadline:
            busy = False
            for k, url in pages.items():
                try:
                    _, html = call(url + "/")
                except OSError:  # the page still waits for the store
                    continue
                m = re.search(r'data-query-id="(\d+)" data-index="(\d+)"', html)
                if m is None:
                    continue
                drawn.add("image" if 'id="point-image"' in html else "other")
                qid, idx = int(m.group(1)), int(m.group(2))
                final, _ = call(url + "/label", {"query_id": qid, "label": int(ys[k][idx])})
                if "note=" not in final:
                    paid_by_bot[k].append(idx)
                busy = True
            if not busy:
                time.sleep(0.5)
        status = dep.wait_run(run_id, timeout=120)
        assert status == "finished:completed", (status, dep.logs_of_run(run_id)[-3000:])
        assert f"experiment id {PEOPLE_EXP}" in dep.logs_of_run(run_id)
        summary = json.loads((run_dir / "summary.json").read_text())
        total = 0
        for k in (1, 2):
            rows = paid(store_of(dep, k))
            idx = [r[0] for r in rows]
            assert len(idx) == len(set(idx)), f"site-{k} paid a label twice"
            assert sorted(idx) == sorted(paid_by_bot[k])
            assert [r[1] for r in rows] == [int(ys[k][i]) for i in idx]
            total += len(rows)
        budget = 2 * 4 + 1 * 2 * 4
        assert summary["paid"] == summary["granted"] == total == budget
        assert drawn == {"image"}
        for url in pages.values():  # after the run the pages stay up and say that it has finished
            assert 'data-state="finished"' in call(url + "/")[1]
    print(f"people deployment test: {time.time() - t0:.0f} s")
