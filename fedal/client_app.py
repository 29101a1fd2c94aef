"""fedal ClientApp: one Flower handler per message kind of ``fedal.protocol``; each decodes the
request, has the node's ``ClientWorker`` (``fedal.client``) or its persistent worker
(``fedal.deploy.node_worker``, node config ``persistent-worker = true``) do the work, and encodes
the typed reply. No protocol logic lives here.

A handler that fails raises a ``fedal.site_errors.SiteError``: one line naming the site by its
client id and saying whether the error is final (a configuration or data error), which Flower
puts in the error reply's reason and the server parses back.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedal import protocol
from fedal.deploy import node_worker
from fedal.deploy.timing import record_if_asked
from fedal.site_errors import SiteError, node_client_id

# fedal.client (and with it torch) is imported on first use: a node with a persistent worker
# hands its messages over without ever importing torch here

POOLS_KEY = "fedal.pools"


def worker(context: Context, run_config: dict):
    """The node's ``fedal.client.ClientWorker``: its data (``fedal.client_data.load_node_data``) and
    its pools, in the SQLite store of its state dir when it has one (``fedal.client.site_worker``),
    else in the node's ``context.state`` (simulation: lives as long as the SuperNode's memory)."""
    from fedal.client import site_worker
    from fedal.store import MemoryPoolStore

    return site_worker(run_config, dict(context.node_config),
                       lambda: MemoryPoolStore(context.state.config_records, POOLS_KEY, wrap=ConfigRecord))


def _handle(msg: Message, context: Context, run_config: dict) -> Message:
    request, arrays = protocol.read_request(msg)
    nc = dict(context.node_config)
    if node_worker.enabled(nc):
        reply, client_id = node_worker.serve_remote(nc, run_config, request, arrays)
    else:
        w = worker(context, run_config)
        reply, client_id = w.handle(request, arrays), w.data.client_id
    return Message(content=reply.to_record(client_id), reply_to=msg)


def build_client_app(run_config: dict | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` (kebab-case) overrides the run's config (``flwr run``
    passes the run config in the Context; the deprecated ``run_simulation`` entry point passes
    an empty one, so scripts and tests bind theirs here)."""
    capp = ClientApp()
    bound = dict(run_config or {})

    def handler(msg: Message, context: Context) -> Message:
        t0 = time.time()
        try:  # the Context's run config is read-only: merge instead of updating it
            reply = _handle(msg, context, {**context.run_config, **bound})
        except SiteError:
            raise
        except Exception as e:  # one line naming the site, for the server (fedal.site_errors)
            from fedal.site_errors import describe, is_final

            raise SiteError(node_client_id(context.node_config), describe(e), is_final(e)) from e
        record_if_asked(msg.metadata.message_type, context, t0)  # benchmarks: FEDAL_CLIENT_TIMING
        return reply

    for kind in protocol.KINDS:
        (capp.train() if kind == protocol.TRAIN else capp.query(kind.split(".", 1)[1]))(handler)
    return capp


app = build_client_app()
