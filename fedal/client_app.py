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
                        the server's simulated clock and a budget grant; the site's annotators
                        label up to that time and its workers refill the query pool; reply: counts.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedal.client import (ClientWorker, MemoryPoolStore, StackedPoolStore, configure_threads,
                          load_client_data, state_dir_store)

POOLS_KEY = "fedal.pools"


class ContextPoolStore(MemoryPoolStore):
    """Pools in the node's ``context.state`` (small: indices, labels, stored logits); lives as
    long as the SuperNode's memory."""

    def __init__(self, context: Context):
        super().__init__(context.state.config_records, POOLS_KEY, wrap=ConfigRecord)


def worker(context: Context, run_config: dict) -> ClientWorker:
    nc = context.node_config
    data = load_client_data(run_config, int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1)))
    durable = state_dir_store(data.cfg, data.partition_id)
    store = ContextPoolStore(context)
    return ClientWorker(data, store if durable is None else StackedPoolStore(store, durable))


def _state(msg: Message):
    return msg.content["arrays"].to_torch_state_dict()


CLIENT_KEY = "client"  # the ConfigRecord of every reply that names the client ({"client-id": str})


def _reply(msg: Message, w: ClientWorker, metrics: dict, arrays: dict[str, ArrayRecord] | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics),
                          CLIENT_KEY: ConfigRecord({"client-id": w.data.client_id}), **(arrays or {})})
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------------------- handlers
def info(msg: Message, context: Context, run_config: dict) -> Message:
    w = worker(context, run_config)
    return _reply(msg, w, w.info())


def train(msg: Message, context: Context, run_config: dict) -> Message:
    conf = msg.content["config"]
    w = worker(context, run_config)
    state, metrics = w.train(_state(msg), int(conf["al-round"]), int(conf["server-round"]),
                             int(conf["local-epochs"]))
    return _reply(msg, w, metrics, {"arrays": ArrayRecord(state)})


def probe(msg: Message, context: Context, run_config: dict) -> Message:
    conf = msg.content["config"]
    w = worker(context, run_config)
    metrics, m = w.probe(
        _state(msg), int(conf["al-round"]), int(conf.get("fl-round", 0)),
        pseudo_update=bool(conf["need-embeddings"]), mix=bool(conf.get("need-mix", False)),
        sketch_seed=int(conf.get("sketch-seed", 0)))
    return _reply(msg, w, metrics, None if m is None else {"pseudo": ArrayRecord({"m": Array(m)})})


def acquire(msg: Message, context: Context, run_config: dict) -> Message:
    conf = msg.content["config"]
    state = _state(msg) if "arrays" in msg.content.array_records else None
    w = worker(context, run_config)
    return _reply(msg, w, w.acquire(state, int(conf["n"]), int(conf["al-round"]), str(conf["point-strategy"])))


def labeling(msg: Message, context: Context, run_config: dict) -> Message:
    """``query.labeling`` (labeling = "async"): fedal.async_labeling.handle."""
    from fedal.async_labeling import handle

    state = _state(msg) if "arrays" in msg.content.array_records else None
    w = worker(context, run_config)
    return _reply(msg, w, handle(w, msg.content["config"], state))


def build_client_app(run_config: dict | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` (kebab-case) overrides the run's config.

    ``flwr run`` passes the run config in the Context; the deprecated ``run_simulation`` entry
    point passes an empty one, so scripts and tests bind theirs here.
    """
    configure_threads()
    capp = ClientApp()
    bound = dict(run_config or {})

    def bind(fn):
        def handler(msg: Message, context: Context) -> Message:
            # the Context's run config is read-only: merge instead of updating it
            return fn(msg, context, {**context.run_config, **bound})

        handler.__name__ = fn.__name__
        return handler

    capp.query("info")(bind(info))
    capp.train()(bind(train))
    capp.query("probe")(bind(probe))
    capp.query("acquire")(bind(acquire))
    capp.query("labeling")(bind(labeling))
    return capp


app = build_client_app()
