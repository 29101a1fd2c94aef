"""The docs as tests (issue #20): docs/deployment.md's bash blocks run as written on loopback —
certificates, a SuperLink with TLS and SuperNode authentication, three registered SuperNodes
started with the checkout as their working directory (persistent workers), `flwr run` to a
completed run, a site's key added later — and docs/labeling.md's people rehearsal runs as
written while a bot labels on the pages it prints. A doc command that breaks fails here.

The tests substitute only what step 0 of docs/deployment.md documents as variables: a temporary
FEDAL_DEPLOY and FLWR_HOME, 127.0.0.1 for the SuperLink's host and bind address, free ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.docrun import DocRunner, blocks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(os.name != "posix", reason="process groups, bash"),
              pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(),
                                 reason="the docs activate the checkout's .venv (make install makes it)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labels_of(db: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT idx, label, al_round FROM labels ORDER BY pos").fetchall()


def test_the_deployment_page_runs_as_written_to_a_completed_run(tmp_path):
    t0 = time.time()
    deploy, home = tmp_path / "deploy", tmp_path / "flwr-home"
    env = {"FEDAL_SRC": str(ROOT), "FEDAL_DEPLOY": str(deploy), "SUPERLINK_HOST": "127.0.0.1",
           "SUPERLINK_PORT": str(free_port()), "SUPERLINK_BIND": "127.0.0.1", "FLWR_HOME": str(home)}
    runner = DocRunner(tmp_path, env, {k: {"K": str(k), "RUNTIME_PORT": str(free_port())} for k in (1, 2, 3)})
    page = blocks(ROOT / "docs" / "deployment.md")
    assert len([b for b in page if not b.skip]) >= 12, "the page lost its runnable steps"
    try:
        for block in page:
            runner.run(block)
            if block.background:
                time.sleep(1)
                runner.check_background()
        out = "\n".join(o for _, o in runner.outputs)
        # the run completed, and wrote where the page says
        (run_dir,) = (deploy / "runs").glob("*-study-1")
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
        assert summary["completed"] and [r["round"] for r in rows] == [0, 1]
        assert re.search(r"fedal: clients by node: clinic-1 \(node \d+\), clinic-2 \(node \d+\), clinic-3", out)
        assert "finished:completed" in out.replace("\n", "")  # flwr ls, as the page shows it
        total = 0
        for k in (1, 2, 3):
            state = deploy / f"clinic-{k}" / "state"
            paid = labels_of(state / "pools" / "study-1" / f"clinic-{k}.sqlite")
            assert len({i for i, _, _ in paid}) == len(paid)
            total += len(paid)
            # the SuperNode started in the checkout; its worker still ran the bundle flwr run shipped
            log = (state / "worker" / "worker.log").read_text()
            assert f"fedal from {home}" in log, log
            pid = int((state / "worker" / "worker.pid").read_text())
            assert os.readlink(f"/proc/{pid}/cwd") == str(ROOT)
        assert summary["labels"] == total == rows[-1]["labels"]
        # a site added later: its key, registered
        assert (deploy / "certs" / "supernode-4.key").exists()
        assert re.search(r"SuperNode \d+ registered successfully", out)
    finally:
        runner.stop()
    print(f"deployment page: {time.time() - t0:.0f} s")


def test_the_people_rehearsal_of_the_labeling_page_runs_as_written(tmp_path):
    """docs/labeling.md's `fedal rehearse` with annotators = 'people', run as written; a bot
    labels both sites with their true labels (through each site's store, as its page does: the
    page's own HTTP is tests/test_labeling_*.py's) while the run trains. Every site must be
    granted budget, the run must finish, and each granted label be paid once."""
    from fedal.data.site import load_site_data
    from fedal.store import BudgetSpent, PoolStore, QueryClosed, StoreError

    t0 = time.time()
    (block,) = [b for b in blocks(ROOT / "docs" / "labeling.md") if b.mark == "people rehearsal"]
    workdir = tmp_path / "rehearsal"
    runner = DocRunner(tmp_path, {"FEDAL_SRC": str(ROOT), "REHEARSAL_DIR": str(workdir)})
    log = tmp_path / "rehearse.out"
    proc = runner.start(block, log)
    stores: dict[int, PoolStore] = {}
    truth: dict[int, np.ndarray] = {}
    served: dict[int, int] = {}
    paid: dict[int, int] = {1: 0, 2: 0}
    try:
        said = ""
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            said = log.read_text(errors="replace")
            if re.search(r"^run \d+: finished", said, re.M):
                break
            exp = re.search(r"^experiment id (\S+)$", said, re.M)
            pages = dict(re.findall(r"^site-(\d): labeling page (http://127\.0\.0\.1:\d+/\?token=\S+) ", said, re.M))
            busy = False
            for k in (1, 2):
                if exp is None or str(k) not in pages:
                    continue
                site = workdir / "sites" / f"site-{k}"
                db = site / "state" / "pools" / exp.group(1) / f"site-{k}.sqlite"
                if k not in served:  # the printed URL serves the page (once the page found the store)
                    try:
                        # as a browser opens it: the token moves into a cookie, then a redirect
                        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
                        with browser.open(pages[str(k)], timeout=30) as r:
                            served[k] = r.status
                    except OSError:
                        pass
                if k not in stores:
                    if not db.exists():
                        continue
                    data = load_site_data(site / "data.npz", f"site-{k}")
                    stores[k] = PoolStore(db, exp.group(1), f"site-{k}", data.n_points, data.fingerprint)
                    truth[k] = data.y
                s = stores[k]
                try:
                    s.promote_reserve()
                    q = s.next_query("bot")
                    if q is not None:
                        paid[k] += s.submit_label(q.id, int(truth[k][q.index]), "bot").paid_now
                        busy = True
                except (QueryClosed, BudgetSpent):
                    busy = True
                except StoreError:  # busy database: try again
                    pass
            if not busy:
                time.sleep(0.5)
        # the run has ended: the pages stay up and say so (no "connection refused" for whoever has one
        # open) until Ctrl-C, which stops everything with the run's exit status
        assert "finished:completed" in said, said[-4000:]
        deadline = time.time() + 60
        while "the labeling pages stay up" not in said and time.time() < deadline:
            time.sleep(0.5)
            said = log.read_text(errors="replace")
        for k in (1, 2):
            browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with browser.open(pages[str(k)], timeout=30) as r:
                assert "This labeling run has finished" in r.read().decode()
        assert proc.poll() is None, said[-4000:]
        os.killpg(proc.pid, signal.SIGINT)
        # Ctrl-C stops five process groups, each given 10 s after SIGTERM: minutes on a loaded machine
        assert proc.wait(240) == 0, log.read_text()[-4000:]
        exp = re.search(r"^experiment id (\S+)$", said, re.M).group(1)
        (run_dir,) = (workdir / "runs").glob(f"*-{exp}")
        summary = json.loads((run_dir / "summary.json").read_text())
        for k in (1, 2):
            rows = labels_of(workdir / "sites" / f"site-{k}" / "state" / "pools" / exp / f"site-{k}.sqlite")
            assert len(rows) == len({i for i, _, _ in rows}) == paid[k] == 10, (k, rows, paid)  # 5 + 1 round x 5
        assert summary["paid"] == summary["granted"] == 20
        assert served == {1: 200, 2: 200}
    finally:
        for s in stores.values():
            s.close()
        runner.stop()
    print(f"people rehearsal page: {time.time() - t0:.0f} s")
