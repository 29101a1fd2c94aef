"""fedal ClientApp: Flower handlers that decode a message, call the client's ``ClientWorker``
(``fedal.client``) and encode its answer. No protocol logic lives here.

Message types (server → client; every reply carries parameters or scalar statistics only):
- ``query.info``     → partition id, |L|, |U|, number of classes.
- ``train``          → local training on L_z from the sent global weights; reply: weights + |L|.
- ``query.probe``    → g (mean entropy over U_z), |U|, and when asked the pseudo-parameter update
                        m_t from the sent model w(t), optionally sketched, and the mean prediction
                        over U_z (C numbers).
- ``query.acquire``  → run the point strategy on the client, ask the oracle for labels, update the
                        pools; reply: counts (and, if enabled, the class histogram of this batch).
- ``query.labeling`` → labeling = "async" only (fedal.async_labeling): the latest global model,
                        the server's clock and a budget grant; simulated annotators label up to
                        that time (people label on the site's page meanwhile) and the site's
                        workers refill the query pool; reply: counts.

A handler that fails raises a ``fedal.site_errors.SiteError``: one line naming the site by its
client id and saying whether the error is final (a configuration or data error), which Flower
puts in the error reply's reason and the server parses back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedal.site_errors import SiteError, node_client_id

# fedal.client (and with it torch) is imported on first use: a node with a persistent worker
# (fedal.deploy.node_worker) hands its messages over without ever importing torch here

POOLS_KEY = "fedal.pools"


def context_pool_store(context: Context):
    """Pools in the node's ``context.state`` (small: indices, labels, stored logits); lives as
    long as the SuperNode's memory."""
    from fedal.client import MemoryPoolStore

    return MemoryPoolStore(context.state.config_records, POOLS_KEY, wrap=ConfigRecord)


def worker(context: Context, run_config: dict):
    """The node's client (a ``fedal.client.ClientWorker``): its data (node config ``data-path``
    + ``client-id`` + ``state-dir``, or a benchmark partition ``partition-id``/``num-partitions``)
    and its pools: with a state dir (node config ``state-dir`` or ``FEDAL_STATE_DIR``) the
    SQLite store there, which holds every paid label across restarts; without one the node's
    ``context.state`` (simulation)."""
    from fedal.client import ClientWorker, load_node_data, node_pool_store, node_state_dir

    nc = dict(context.node_config)
    data = load_node_data(run_config, nc)
    durable = node_pool_store(data, node_state_dir(nc))
    return ClientWorker(data, context_pool_store(context) if durable is None else durable)


def _state(msg: Message):
    return msg.content["arrays"].to_torch_state_dict()


CLIENT_KEY = "client"  # the ConfigRecord of every reply that names the client ({"client-id": str})


def _reply(msg: Message, w, metrics: dict, arrays: dict[str, ArrayRecord] | None = None) -> Message:
    client_id = w if isinstance(w, str) else w.data.client_id
    content = RecordDict({"metrics": MetricRecord(metrics),
                          CLIENT_KEY: ConfigRecord({"client-id": client_id}), **(arrays or {})})
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------------------- handlers
def _local(kind: str, msg: Message, context: Context, run_config: dict) -> Message:
    """The message's work done in this process by the node's ``ClientWorker``."""
    conf = msg.content["config"] if "config" in msg.content.config_records else {}
    state = _state(msg) if "arrays" in msg.content.array_records else None
    w = worker(context, run_config)
    metrics, out = w.handle(kind, conf, state)
    extra = None
    if out is not None:
        name, d = out
        extra = {name: ArrayRecord(d) if name == "arrays" else ArrayRecord({k: Array(v) for k, v in d.items()})}
    return _reply(msg, w, metrics, extra)


def info(msg: Message, context: Context, run_config: dict) -> Message:
    return _local("info", msg, context, run_config)


def train(msg: Message, context: Context, run_config: dict) -> Message:
    return _local("train", msg, context, run_config)


def probe(msg: Message, context: Context, run_config: dict) -> Message:
    return _local("probe", msg, context, run_config)


def acquire(msg: Message, context: Context, run_config: dict) -> Message:
    return _local("acquire", msg, context, run_config)


_THREADS_SET = False


def _configure_threads_once() -> None:
    global _THREADS_SET
    if not _THREADS_SET:
        from fedal.client import configure_threads

        configure_threads()
        _THREADS_SET = True


def _persistent(node_config) -> bool:
    v = node_config.get("persistent-worker", False)
    return v is True or str(v).lower() in ("true", "1", "yes")


def _remote(kind: str, msg: Message, context: Context, run_config: dict) -> Message:
    """The message's work done by the node's persistent worker (``fedal.deploy.node_worker``)."""
    import numpy as np

    from fedal.deploy import node_worker

    nc = dict(context.node_config)
    if not str(nc.get("state-dir", "")).strip():
        raise SiteError(node_client_id(nc), "node config has persistent-worker = true but no state-dir: the persistent worker keeps "
                         "the pools in the state dir's store; add state-dir=\"<local folder>\" to --node-config", True)
    arrays = None
    if "arrays" in msg.content.array_records:
        ar = msg.content["arrays"]
        arrays = {k: ar[k].numpy() for k in ar.keys()}
    conf = dict(msg.content["config"]) if "config" in msg.content.config_records else {}
    try:
        r = node_worker.call(Path(str(nc["state-dir"])).expanduser(),
                             {"kind": kind, "run_config": run_config, "node_config": nc, "config": conf,
                              "arrays": arrays})
    except node_worker.WorkerError as e:
        raise SiteError(node_client_id(nc), str(e), e.final) from e
    extra = None
    if r["out"] is not None:
        name, d = r["out"]
        extra = {name: ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in d.items()})}
    return _reply(msg, r["client-id"], r["metrics"], extra)


def _process_age(now: float) -> float:
    """Seconds since this process started (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return now - (btime + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return float("nan")


def _record_timing(path: str, kind: str, context: Context, t0: float) -> None:
    """One JSON line per message (benchmarks: ``FEDAL_CLIENT_TIMING=<file>``): the handler's
    time and how long the process had run before it (process start, imports, FAB loading)."""
    now = time.time()
    line = {"type": kind, "node": str(context.node_config.get("client-id", context.node_id)), "pid": os.getpid(),
            "before-handler-s": round(_process_age(t0), 3), "handler-s": round(now - t0, 3), "at": now}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def labeling(msg: Message, context: Context, run_config: dict) -> Message:
    """``query.labeling`` (labeling = "async"): ClientWorker.handle → fedal.async_labeling.handle."""
    return _local("labeling", msg, context, run_config)


def build_client_app(run_config: dict | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` (kebab-case) overrides the run's config.

    ``flwr run`` passes the run config in the Context; the deprecated ``run_simulation`` entry
    point passes an empty one, so scripts and tests bind theirs here.
    """
    capp = ClientApp()
    bound = dict(run_config or {})

    def bind(fn):
        def handler(msg: Message, context: Context) -> Message:
            # the Context's run config is read-only: merge instead of updating it
            t0 = time.time()
            rc = {**context.run_config, **bound}
            try:
                if _persistent(context.node_config):
                    reply = _remote(fn.__name__, msg, context, rc)
                else:
                    _configure_threads_once()
                    reply = fn(msg, context, rc)
            except SiteError:
                raise
            except Exception as e:  # one line naming the site, for the server (fedal.site_errors)
                from fedal.site_errors import describe, is_final

                raise SiteError(node_client_id(context.node_config), describe(e), is_final(e)) from e
            if os.environ.get("FEDAL_CLIENT_TIMING"):
                _record_timing(os.environ["FEDAL_CLIENT_TIMING"], fn.__name__, context, t0)
            return reply

        handler.__name__ = fn.__name__
        return handler

    capp.query("info")(bind(info))
    capp.train()(bind(train))
    capp.query("probe")(bind(probe))
    capp.query("acquire")(bind(acquire))
    capp.query("labeling")(bind(labeling))
    return capp


app = build_client_app()
