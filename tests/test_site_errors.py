"""A site's errors as the operator sees them (issue #20): the persistent worker answers wherever
the SuperNode was started (a checkout as the working directory included), says in worker.log
why it exits or fails, and a failed site is named by its client id, in one line, at once: a
configuration or data error is final, so the server neither retries it nor waits out
wait-timeout when the federation cannot reach min-clients without that site."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message

from fedal.site_errors import SiteError, clean, parse
from strategies.federation import FederationError
from tests.golden import INPROCESS_BASE
from tests.inprocess import InProcessGrid, run_inprocess

ROOT = Path(__file__).resolve().parents[1]


def digits_site(path: Path, n: int = 60, seed: int = 0) -> Path:
    from fedal.data import load_dataset

    ds = load_dataset("digits")
    idx = np.random.default_rng(seed).permutation(len(ds.y_train))[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=ds.x_train[idx], y=ds.y_train[idx])
    return path


# ---------------------------------------------------------------------------------- the reason
def test_a_site_error_survives_flowers_wrappers_and_reads_as_one_line():
    e = SiteError("clinic-3", "data-path /srv/x does not exist;\n give an .npz file", final=True)
    deployed = str(type(e)) + ":<'" + str(e) + "'>"  # flwr/supernode/runtime/run_clientapp.py
    simulated = f"<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException " \
                f"occurred. Message: {e}'>"  # the simulation engine wraps it once more
    for reason in (deployed, simulated):
        assert parse(reason) == ("clinic-3", True, "data-path /srv/x does not exist; give an .npz file")
        assert clean(reason) == "data-path /srv/x does not exist; give an .npz file"
    assert parse(str(SiteError("bad id", "x", final=False))) == (None, False, "x")
    assert clean("<class 'ZeroDivisionError'>:<'division by zero'>") == "ZeroDivisionError: division by zero"
    assert clean("injected failure at client 3") == "injected failure at client 3"


# ---------------------------------------------------------------------------------- the worker
CALLER = r"""
import json, sys
bundle, state, nc, rc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
sys.path.insert(0, bundle)  # as Flower's ClientApp process does with the app bundle's folder
from fedal.deploy import node_worker
assert node_worker.code_root() == __import__("pathlib").Path(bundle), node_worker.code_root()
try:
    r = node_worker.call(state, {"kind": "info", "run_config": rc, "node_config": nc, "config": {}, "arrays": None})
    print(json.dumps({"ok": True, "client-id": r["client-id"], "n-unlabeled": r["reply"].n_unlabeled}))
except node_worker.WorkerError as e:
    print(json.dumps({"ok": False, "error": str(e), "final": e.final}))
finally:
    node_worker.stop(state)
"""


def _bundle(tmp_path: Path) -> Path:
    """What ``flwr run`` installs on a SuperNode: fedal's and strategies' code in a folder of
    its own (the FAB), the same commit as the checkout."""
    bundle = tmp_path / "fab"
    for pkg in ("fedal", "strategies"):
        shutil.copytree(ROOT / pkg, bundle / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return bundle


def _call_from_checkout(bundle: Path, state: Path, nc: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", CALLER, str(bundle), str(state), json.dumps(nc),
                          json.dumps({"dataset": "digits"})],
                         cwd=ROOT, env={**env, "FEDAL_TORCH_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_started_from_the_checkout_answers_with_the_bundles_code(tmp_path):
    """The SuperNode's working directory is the checkout (whose fedal `python -m` would import
    first), the ClientApp runs the bundle's copy of the same commit: the worker answers, and its
    log says which code it runs."""
    bundle = _bundle(tmp_path)
    state = tmp_path / "state"
    nc = {"data-path": str(digits_site(tmp_path / "site.npz")), "client-id": "clinic-1", "state-dir": str(state),
          "persistent-worker": True}
    r = _call_from_checkout(bundle, state, nc)
    assert r == {"ok": True, "client-id": "clinic-1", "n-unlabeled": 60}, r
    log = (state / "worker" / "worker.log").read_text()
    assert f"started: python {sys.executable}, fedal from {bundle} (code sha256:" in log
    assert "exiting: asked to stop" in log

    from fedal.deploy.node_worker import code_digest

    assert code_digest(str(bundle)) == code_digest(str(ROOT))  # same commit, other folder: same code
    (bundle / "fedal" / "extra.py").write_text("# another version of the code\n")
    assert code_digest.__wrapped__(str(bundle)) != code_digest(str(ROOT))


def test_a_worker_answers_under_a_state_dir_too_deep_for_a_unix_socket_path(tmp_path):
    """A Unix socket's path is limited to ~107 bytes; a deep state-dir must still work."""
    bundle = _bundle(tmp_path)
    state = tmp_path / ("deep-folder-" * 8) / "state"
    assert len(str(state / "worker" / "worker.sock")) > 110
    nc = {"data-path": str(digits_site(tmp_path / "site.npz")), "client-id": "clinic-1", "state-dir": str(state),
          "persistent-worker": True}
    assert _call_from_checkout(bundle, state, nc) == {"ok": True, "client-id": "clinic-1", "n-unlabeled": 60}


def test_a_data_error_in_the_worker_is_final_names_the_site_and_is_logged(tmp_path):
    bundle = _bundle(tmp_path)
    state = tmp_path / "state"
    nc = {"data-path": str(tmp_path / "nowhere.npz"), "client-id": "clinic-2", "state-dir": str(state),
          "persistent-worker": True}
    r = _call_from_checkout(bundle, state, nc)
    assert r["ok"] is False and r["final"] is True
    assert r["error"].startswith(f"data-path {tmp_path / 'nowhere.npz'} does not exist") and "\n" not in r["error"]
    log = (state / "worker" / "worker.log").read_text()
    assert "'info' failed:" in log and "SiteDataError" in log  # the traceback stays on the site


# ---------------------------------------------------------------------------------- the server
class FlowerGrid(InProcessGrid):
    """The in-process grid with Flower's error replies: a ClientApp that raises answers with
    ``Error(reason="<class '…'>:<'…'>")`` (flwr/supernode/runtime/run_clientapp.py)."""

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            try:
                replies += super().send_and_receive([msg], timeout=timeout)
            except Exception as ex:  # noqa: BLE001
                reply = Message(Error(code=2, reason=str(type(ex)) + ":<'" + str(ex) + "'>"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                replies.append(reply)
        return replies


def site_grid(tmp_path: Path, rc: dict, bad: dict[int, dict], persistent: bool) -> FlowerGrid:
    from fedal.client_app import build_client_app

    grid = FlowerGrid(build_client_app(rc), 3, run_config=rc)
    for k, ctx in enumerate(grid.contexts.values(), start=1):
        nc = {"data-path": str(digits_site(tmp_path / f"site-{k}.npz", seed=k)), "client-id": f"clinic-{k}",
              "state-dir": str(tmp_path / f"state-{k}"), "persistent-worker": persistent, **bad.get(k, {})}
        ctx.node_config.clear()
        ctx.node_config.update(nc)
    return grid


def test_the_server_names_a_broken_site_once_and_stops_at_once_when_min_clients_needs_it(tmp_path):
    from fedal.deploy import node_worker

    rc = {**INPROCESS_BASE, "min-clients": 3, "wait-timeout": 300.0, "retry-backoff": 0.0}
    bad = {2: {"data-path": str(tmp_path / "typo.npz")}}
    grid = site_grid(tmp_path, rc, bad, persistent=True)
    lines: list[str] = []
    t0 = time.monotonic()
    try:
        with pytest.raises(FederationError) as e:
            run_inprocess(rc, 3, grid=grid, log=lines.append)
    finally:
        for k in (1, 2, 3):
            node_worker.stop(tmp_path / f"state-{k}")
    waited = time.monotonic() - t0
    msg = str(e.value)
    assert waited < 120, f"waited {waited:.0f} s of wait-timeout = 300 s"
    node = list(grid.contexts)[1]
    assert msg.startswith(f"1 site(s) cannot take part (a configuration or data error at the site, final): site "
                          f"clinic-2 (node {node}): data-path {tmp_path / 'typo.npz'} does not exist"), msg
    assert "fewer than min-clients = 3" in msg
    assert "<class" not in msg and "fedal-site" not in msg and "WorkerError" not in msg
    assert not any("typo.npz" in line for line in lines), lines  # said once: in the error


def test_a_broken_site_the_federation_can_do_without_is_skipped_with_one_line(tmp_path):
    rc = {**INPROCESS_BASE, "min-clients": 2, "wait-timeout": 300.0, "init-clients": 2, "clients-per-round": 1,
          "al-rounds": 1, "retry-backoff": 0.0}
    bad = {3: {"data-path": str(tmp_path / "typo.npz")}}
    lines: list[str] = []
    rows, grid = run_inprocess(rc, 3, grid=site_grid(tmp_path, rc, bad, persistent=False), log=lines.append)
    said = [line for line in lines if "typo.npz" in line]
    node = list(grid.contexts)[2]
    assert said == [f"fedal: 1 site(s) cannot take part (a configuration or data error at the site, final): site "
                    f"clinic-3 (node {node}): data-path {tmp_path / 'typo.npz'} does not exist; give an .npz file or "
                    "an image folder; the run goes on without them"], lines
    assert [r["round"] for r in rows] == [0, 1]
    assert any(line.startswith("fedal: clients by node: clinic-1 (node ") for line in lines)
