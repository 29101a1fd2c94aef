"""The federation as the server sees it: which client answers on which node, and one step sent
to many clients with retries (docs/method.md, "Failures and resume").

Clients are tracked by a stable client id, never by node id: a restarted SuperNode may come back
under a new node id (``Federation.refresh``). A step that fails at a client is resent after a
backoff, then the client is skipped for that step and the failure recorded for the round's row
(``Federation.exchange``). The AL loop (``strategies.active_learning``) and its labeling
policies (``strategies.labeling``) send every message through here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fedal.config import Config
from fedal.protocol import InfoReply, InfoRequest, Request, reply_client_id
from fedal.site_errors import clean as clean_reason, parse as parse_reason


class ClientFailure(RuntimeError):
    """A step failed at every client it went to (or, with ``on-client-failure = "stop"``, at
    one): the run stops rather than continue without data."""


class FederationError(RuntimeError):
    """The federation cannot run the protocol: too few clients, or two nodes claim one client id."""


def natural_key(client_id: str) -> tuple:
    """Sort key of client ids: digit runs compare as numbers ("site2" < "site10"), so all-digit
    ids (a simulation's partition ids) sort as integers."""
    parts = re.split(r"(\d+)", client_id)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), client_id


@dataclass
class ClientInfo:
    node_id: int | None  # the node it answers on now; None while it is not connected
    client_id: str
    n_labeled: int
    n_unlabeled: int


@dataclass
class ALState:
    clients: dict[str, ClientInfo]  # by client id, in natural order (``natural_key``)
    prev_entropy: dict[str, float] = field(default_factory=dict)
    labeled_per_class: np.ndarray | None = None

    def add(self, info: ClientInfo) -> None:
        self.clients[info.client_id] = info
        self.clients = dict(sorted(self.clients.items(), key=lambda kv: natural_key(kv[0])))

    def public_id(self, client_id: str) -> int | str:
        """How rows name a client: an int when every client id is all digits (a simulation's
        partition ids, as rows always had them), else the id itself."""
        return int(client_id) if all(c.isdigit() for c in self.clients) else client_id


class Federation:
    """The clients of one run and the messages to them; ``failures`` collects this AL round's
    skipped (client, step)s for its row."""

    def __init__(self, cfg: Config, grid: Grid, log: Callable[[str], None] = print, timeout: float | None = None):
        self.cfg = cfg
        self.grid = grid
        self.log = log
        self.timeout = cfg.send_timeout if timeout is None else timeout
        self.failures: list[dict] = []  # this AL round's skipped (client, step)s, for its row
        self.info_errors: dict[int, str] = {}  # node id -> who failed query.info last and why, one line
        # node id -> (client id or None, message) of a final site error (fedal.site_errors) at its
        # last query.info: a configuration or data error that asking again does not cure
        self.final_errors: dict[int, tuple[str | None, str]] = {}

    # ------------------------------------------------------------------ messaging
    def send(self, state: ALState, request: Request, targets: Iterable[str],
             arrays: ArrayRecord | None = None, **where) -> dict[str, Message]:
        """``request`` to every client of ``targets`` (``exchange``)."""
        return self.exchange(state, [(c, request) for c in targets], arrays, **where)

    def exchange(self, state: ALState, jobs: list[tuple[str, Request]],
                 arrays: ArrayRecord | None = None, *, fl_round: int | None = None,
                 require_any: bool = True) -> dict[str, Message]:
        """One message per (client id, request) in a single send_and_receive, so clients work in
        parallel; returns the replies by client id.

        A client that replies with an error, does not reply within ``send-timeout`` or is not
        connected failed the step: after a backoff the step is resent to it, at whatever node id
        it answers on by then, up to ``max-retries`` times; then it is skipped for this step and
        the failure is recorded for the round's row. ``require_any``: a step that every client
        failed stops the run. ``on-client-failure = "stop"``: the first failure stops it."""
        cfg = self.cfg
        kind = jobs[0][1].KIND if jobs else ""
        pending = dict(jobs)
        got: dict[str, Message] = {}
        reasons: dict[str, str] = {}
        final: dict[str, str] = {}  # clients with a final site error: skipped at once, not retried
        tries = 1 if cfg.on_client_failure == "stop" else cfg.max_retries + 1
        for attempt in range(tries):
            if attempt:
                time.sleep(cfg.retry_backoff * 2 ** (attempt - 1))
                self.refresh(state)
            sent: dict[int, str] = {}
            msgs = []
            for cid, request in pending.items():
                node = state.clients[cid].node_id
                if node is None:
                    reasons[cid] = "not connected"
                    continue
                sent[node] = cid
                msgs.append(request.message(node, arrays))
            replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout)) if msgs else []
            answered = set()
            for r in replies:
                cid = sent.get(r.metadata.src_node_id)
                if cid is None or cid in answered:
                    continue
                answered.add(cid)
                if r.has_error():
                    reasons[cid] = f"client error: {clean_reason(r.error.reason)}"
                    site = parse_reason(r.error.reason)
                    if site is not None and site[1]:
                        final[cid] = reasons[cid]
                        del pending[cid]
                    continue
                named = reply_client_id(r)
                if named is not None and named != cid:
                    reasons[cid] = f"node {r.metadata.src_node_id} answered as client {named!r}"
                    continue
                got[cid] = r
                del pending[cid]
            for cid in sent.values():
                if cid not in answered:
                    reasons[cid] = f"no reply within send-timeout = {self.timeout:g} s"
            failed = [*final, *pending]
            if failed and cfg.on_client_failure == "stop":
                cid = failed[0]
                raise ClientFailure(f"{len(failed)} client(s) failed on {kind!r}: client {cid}: {reasons[cid]} "
                                    "(on-client-failure = stop)")
            if not pending:
                break
        for cid in [*final, *pending]:
            entry = {"client": state.public_id(cid), "step": kind}
            if fl_round is not None:
                entry["fl_round"] = fl_round
            entry["reason"] = reasons.get(cid, "unknown")
            self.failures.append(entry)
            self.log(f"fedal: client {cid} skipped for {kind!r}"
                     + (f" (FL round {fl_round})" if fl_round is not None else "")
                     + (" at once (a configuration or data error at the site; not retried)" if cid in final
                        else f" after {tries} tries") + f": {entry['reason']}")
        if require_any and jobs and not got:
            cid = next(iter([*final, *pending]))
            raise ClientFailure(f"every client ({len(jobs)}) failed on {kind!r} after {tries} tries; "
                                f"client {cid}: {reasons.get(cid)}")
        return got

    # ------------------------------------------------------------------ identity
    def refresh(self, state: ALState, *, initial: bool = False) -> None:
        """Re-map client ids to node ids (a restarted SuperNode may come back under a new one):
        clients whose node left are marked not connected, and every node not known yet is asked
        ``query.info``; a client that answers there is recognised by its client id."""
        live = set(self.grid.get_node_ids())
        for c in state.clients.values():
            if c.node_id is not None and c.node_id not in live:
                self.log(f"fedal: client {c.client_id} (node {c.node_id}) is not connected")
                c.node_id = None
        known = {c.node_id for c in state.clients.values() if c.node_id is not None}
        self.final_errors = {n: e for n, e in self.final_errors.items() if n in live}
        # discovery polls every second: a node whose site answered with a final error is not
        # asked again until discovery is over (each message starts a ClientApp process there)
        unknown = sorted(live - known - (set(self.final_errors) if initial else set()))
        if not unknown:
            return
        msgs = [InfoRequest().message(n) for n in unknown]
        claims: dict[str, list[tuple[int, Message]]] = {}
        for r in self.grid.send_and_receive(msgs, timeout=self.timeout):
            if r.has_error():
                node, site = r.metadata.src_node_id, parse_reason(r.error.reason)
                cid, is_final = (site[0], site[1]) if site is not None else (None, False)
                who = f"site {cid} (node {node})" if cid is not None else f"node {node}"
                line = f"{who}: {clean_reason(r.error.reason)}"
                if self.cfg.on_client_failure == "stop":
                    raise ClientFailure(f"{who} failed on 'query.info': {clean_reason(r.error.reason)} "
                                        "(on-client-failure = stop)")
                if is_final:
                    self.final_errors[node] = (cid, clean_reason(r.error.reason))
                # once per node and reason (discovery polls); discover() reports final errors itself
                if self.info_errors.get(node) != line and not (initial and is_final):
                    self.log(f"fedal: {who} " + ("cannot take part" if is_final else "failed query.info")
                             + f": {clean_reason(r.error.reason)}")
                self.info_errors[node] = line
                continue
            self.final_errors.pop(r.metadata.src_node_id, None)
            cid = reply_client_id(r)
            if cid is not None:
                claims.setdefault(cid, []).append((r.metadata.src_node_id, r))
        for cid in sorted(claims, key=natural_key):
            nodes = sorted(n for n, _ in claims[cid])
            old = state.clients.get(cid)
            if len(nodes) == 1 and old is not None and old.node_id is not None and self._answers_as(old.node_id, cid):
                nodes = sorted([old.node_id, *nodes])
            if len(nodes) > 1:
                raise FederationError(
                    f"client id {cid!r} is claimed by {len(nodes)} live nodes ({', '.join(map(str, nodes))}); "
                    "every SuperNode needs its own client-id (node config), or its own data")
            node, r = claims[cid][0]
            info = InfoReply.from_record(r.content)
            n_l, n_u = int(info.n_labeled), int(info.n_unlabeled)
            if old is None:
                state.add(ClientInfo(node, cid, n_l, n_u))
                if not initial:
                    self.log(f"fedal: client {cid} joined on node {node}")
                continue
            if not initial:
                self.log(f"fedal: client {cid} is back, now on node {node}")
            old.node_id = node
            if (old.n_labeled, old.n_unlabeled) != (n_l, n_u):
                self.log(f"fedal: client {cid} reports |L| = {n_l}, |U| = {n_u}; the server counted "
                         f"{old.n_labeled}, {old.n_unlabeled} (the client's counts are used)")
                old.n_labeled, old.n_unlabeled = n_l, n_u

    def _answers_as(self, node: int, cid: str) -> bool:
        """Whether ``node`` still answers as client ``cid`` (a node id the SuperLink still lists
        may belong to a SuperNode that died and restarted under a new one)."""
        replies = list(self.grid.send_and_receive([InfoRequest().message(node)],
                                                  timeout=min(self.timeout, 60.0)))
        return any(not r.has_error() and reply_client_id(r) == cid for r in replies)

    def discover(self) -> ALState:
        """Clients by client id, once ``min-clients`` of them answered ``query.info``."""
        cfg = self.cfg
        state = ALState({})
        deadline = time.monotonic() + cfg.wait_timeout
        while True:
            self.refresh(state, initial=True)
            broken = self._final_sites()
            if len(state.clients) >= cfg.min_clients:
                if broken:  # the federation goes on without them: said once, here
                    self.log(f"fedal: {broken}; the run goes on without them")
                self.log("fedal: clients by node: " + ", ".join(
                    f"{c.client_id} (node {c.node_id})" for c in state.clients.values()))
                return state
            if broken and len(state.clients) + len(self.final_errors) >= cfg.min_clients:
                # the sites with a final error were needed to reach min-clients: waiting cannot help
                raise FederationError(
                    f"{broken}; without them {len(state.clients)} client(s) answered query.info, fewer than "
                    f"min-clients = {cfg.min_clients}. Fix the site(s) and start their SuperNodes again, or "
                    "lower min-clients in the run config")
            left = deadline - time.monotonic()
            if left <= 0:
                others = {n: e for n, e in self.info_errors.items() if n not in self.final_errors}
                raise FederationError(
                    f"only {len(state.clients)} client(s) answered query.info within wait-timeout = "
                    f"{cfg.wait_timeout:g} s, fewer than min-clients = {cfg.min_clients}; start more "
                    "SuperNodes, or lower min-clients or raise wait-timeout in the run config"
                    + (f" ({broken})" if broken else "")
                    + (f" ({len(others)} node(s) failed query.info; {others[min(others)]})" if others else ""))
            time.sleep(min(1.0, left))

    def _final_sites(self) -> str:
        """The sites whose query.info failed with a final error, by client id, as one line."""
        if not self.final_errors:
            return ""
        parts = [f"site {cid} (node {n}): {msg}" if cid else f"node {n}: {msg}"
                 for n, (cid, msg) in sorted(self.final_errors.items())]
        return (f"{len(parts)} site(s) cannot take part (a configuration or data error at the site, final): "
                + "; ".join(parts))
