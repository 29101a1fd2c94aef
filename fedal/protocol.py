"""The wire between the server and a client: message kinds, record names and one typed request
and reply per kind, each with ``to_record``/``from_record``. Both ends use this module and
nothing else to spell a key: the server's loop (strategies/federation.py, strategies/labeling.py),
the ClientApp (fedal/client_app.py), the client worker's dispatch table (fedal/client.py), the
persistent node worker (fedal/deploy/node_worker.py) and the in-process engine's tests.

Message kinds (server → client; every reply carries parameters or scalar statistics only):
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
                        workers refill the query pool; reply: the site's counts.

A message's content: the request's settings in the ConfigRecord ``CONFIG`` and, when a model is
sent, its weights in the ArrayRecord ``ARRAYS``. A reply's content: its scalars in the
MetricRecord ``METRICS``, the ConfigRecord ``CLIENT`` naming the client (``{"client-id": ...}``:
the server follows clients by it across node ids), and arrays where the kind has them
(trained weights in ``ARRAYS``, a probe's m_t in ``PSEUDO``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

INFO, TRAIN, PROBE, ACQUIRE, LABELING = "query.info", "train", "query.probe", "query.acquire", "query.labeling"

CONFIG = "config"  # a request's settings
ARRAYS = "arrays"  # model weights: the global model sent, a client's trained weights back
METRICS = "metrics"  # a reply's scalars and lists
CLIENT = "client"  # a reply's ConfigRecord naming the client
CLIENT_ID = "client-id"  # its one key
PSEUDO = "pseudo"  # a probe reply's pseudo-update m_t, key "m": (1, D) float32
FEDAVG_WEIGHT = "num-examples"  # a train reply's |L_z| in METRICS (TrainReply.num_examples): FedAvg's weight


def _key(name: str) -> str:
    return name.replace("_", "-")


def _optional(default: Any = None):
    """A field sent only when it differs from ``default`` (older ends never see it)."""
    return field(default=default, metadata={"optional": True})


# ---------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Request:
    """A request's settings travel as its fields in kebab case (``al_round`` → ``"al-round"``)."""

    KIND: ClassVar[str] = ""
    NAME: ClassVar[str] = ""  # the ClientApp handler (Flower: "query.<name>", or "train")

    def to_config(self) -> dict:
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("optional") and getattr(self, f.name) == f.default)}

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> "Request":
        values = {}
        for f in dataclasses.fields(cls):
            if _key(f.name) in conf:
                values[f.name] = _as(f.type, conf[_key(f.name)])
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.KIND} message without {_key(f.name)!r}")
        return cls(**values)

    def to_record(self, arrays: ArrayRecord | None = None) -> RecordDict:
        content = RecordDict({CONFIG: ConfigRecord(self.to_config())})
        if arrays is not None:
            content[ARRAYS] = arrays
        return content

    def message(self, node_id: int, arrays: ArrayRecord | None = None) -> Message:
        return Message(content=self.to_record(arrays), dst_node_id=node_id, message_type=self.KIND)


def _as(kind: str, value):
    return {"int": int, "float": float, "bool": bool, "str": str}[kind](value)


@dataclass(frozen=True)
class InfoRequest(Request):
    KIND: ClassVar[str] = INFO
    NAME: ClassVar[str] = "info"


@dataclass(frozen=True)
class TrainRequest(Request):
    KIND: ClassVar[str] = TRAIN
    NAME: ClassVar[str] = "train"
    al_round: int
    server_round: int  # the FL round within the AL round (the learning-rate schedule reads it)
    local_epochs: int


@dataclass(frozen=True)
class ProbeRequest(Request):
    KIND: ClassVar[str] = PROBE
    NAME: ClassVar[str] = "probe"
    al_round: int  # the AL round the selection serves
    fl_round: int = 0
    need_embeddings: bool = False  # send m_t
    need_mix: bool = False  # send the mean prediction over U_z
    sketch_seed: int = 0  # one random projection per AL round, the same on every client
    pending: int = _optional(0)  # async: labels granted and not paid yet (fedal.client.ClientWorker.probe)


@dataclass(frozen=True)
class AcquireRequest(Request):
    KIND: ClassVar[str] = ACQUIRE
    NAME: ClassVar[str] = "acquire"
    n: int
    al_round: int
    point_strategy: str


@dataclass(frozen=True)
class LabelingRequest(Request):
    KIND: ClassVar[str] = LABELING
    NAME: ClassVar[str] = "labeling"
    run: str  # the run token: names the run's sites and keys its grants (strategies/async_policy.py)
    now: float  # the run's clock
    al_round: int
    model_version: int
    grant: int = 0
    finish: bool = False  # withdraw what is open and report the annotators
    grant_tag: str = _optional("")  # the standing share's top-ups: one grant per tag within a round
    recount: bool = _optional(False)  # a resumed server: count all the site's labels again


REQUESTS: dict[str, type[Request]] = {r.NAME: r for r in
                                      (InfoRequest, TrainRequest, ProbeRequest, AcquireRequest, LabelingRequest)}
KINDS = tuple(r.KIND for r in REQUESTS.values())


def read_request(msg: Message) -> tuple[Request, dict[str, np.ndarray] | None]:
    """The request a message carries and the weights sent with it (as numpy arrays), if any."""
    name = msg.metadata.message_type.split(".")[-1]
    try:
        cls = REQUESTS[name]
    except KeyError:
        raise ValueError(f"unknown message kind {msg.metadata.message_type!r}; valid: {', '.join(KINDS)}") from None
    content = msg.content
    conf = content[CONFIG] if CONFIG in content.config_records else {}
    arrays = None
    if ARRAYS in content.array_records:
        ar = content[ARRAYS]
        arrays = {k: ar[k].numpy() for k in ar.keys()}
    return cls.from_config(conf), arrays


# ---------------------------------------------------------------------------------- replies
def _arrays(d: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in d.items()})


@dataclass(frozen=True)
class Reply:
    """A reply's scalars travel as its fields in kebab case in the METRICS record (fields that
    are None are left out); ``ARRAY_FIELDS`` maps a field holding arrays to its record."""

    KIND: ClassVar[str] = ""
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {}

    def metrics(self) -> dict:
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in self.ARRAY_FIELDS and getattr(self, f.name) is not None}

    def to_record(self, client_id: str) -> RecordDict:
        content = RecordDict({METRICS: MetricRecord(self.metrics()), CLIENT: ConfigRecord({CLIENT_ID: client_id})})
        for name, record in self.ARRAY_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                content[record] = _arrays(value)
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> "Reply":
        m = content[METRICS]
        values = {f.name: m[_key(f.name)] for f in dataclasses.fields(cls)
                  if f.name not in cls.ARRAY_FIELDS and _key(f.name) in m}
        for name, record in cls.ARRAY_FIELDS.items():
            if record in content.array_records:
                ar = content[record]
                values[name] = {k: ar[k].numpy() for k in ar.keys()}
        return cls(**values)


@dataclass(frozen=True)
class InfoReply(Reply):
    KIND: ClassVar[str] = INFO
    partition_id: int
    n_labeled: int
    n_unlabeled: int
    num_classes: int


@dataclass(frozen=True)
class TrainReply(Reply):
    KIND: ClassVar[str] = TRAIN
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {"weights": ARRAYS}
    weights: dict  # name -> numpy array, the model after local training
    num_examples: int  # FedAvg's weight: |L_z|
    train_loss: float
    train_time: float


@dataclass(frozen=True)
class ProbeReply(Reply):
    KIND: ClassVar[str] = PROBE
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {"pseudo": PSEUDO}
    partition_id: int
    g: float  # mean entropy over U_z (0 when U_z is empty)
    n_unlabeled: int
    n_labeled: int
    mix: list | None = None  # mean softmax over U_z, C numbers (when asked)
    # predicted-mix = bbse: the labeled points' true × predicted class counts, C² numbers, row-major
    # (an aggregate of the labeled set, as acquired-per-class is; never per point)
    confusion: list | None = None
    pseudo: dict | None = None  # {"m": (1, D) float32}: the pseudo-update m_t (when asked)

    @property
    def m(self) -> np.ndarray:
        return self.pseudo["m"]


@dataclass(frozen=True)
class AcquireReply(Reply):
    KIND: ClassVar[str] = ACQUIRE
    partition_id: int
    acquired: int
    n_labeled: int
    n_unlabeled: int
    acquire_time: float
    acquired_per_class: list | None = None  # with report-label-histogram: counts per class, never per point


@dataclass(frozen=True)
class LabelingReply(Reply):
    """A site's counts (fedal.async_labeling builds them): its pools (``n-labeled``,
    ``n-unlabeled``), its budget (``granted``, ``granted-now``, ``granted-run``, ``n-grantable``),
    its query pool (``paid``, ``open``, ``withdrawn``, ``done``), ``acquired-per-class`` and, on
    the last message, its annotators' summary. Kept as the site reports them: the server stores
    them in its checkpoint as they are."""

    KIND: ClassVar[str] = LABELING
    counts: dict

    def metrics(self) -> dict:
        return dict(self.counts)

    @classmethod
    def from_record(cls, content: RecordDict) -> "LabelingReply":
        return cls({k: (list(v) if isinstance(v, list) else v) for k, v in content[METRICS].items()})


def reply_client_id(reply: Message) -> str | None:
    """The client id a reply names (its ``CLIENT`` record), or None for a reply without one."""
    content = reply.content
    if CLIENT in content.config_records:
        return str(content.config_records[CLIENT][CLIENT_ID])
    metrics = content.metric_records.get(METRICS)
    if metrics is not None and "partition-id" in metrics:  # a client from before the "client" record
        return str(int(metrics["partition-id"]))
    return None
