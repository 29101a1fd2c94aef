"""fedal ClientApp: thin Flower handlers over the client's private data and pools.

Message types (server → client; every reply carries parameters or scalar statistics only):
- ``query.info``     → partition id, |L|, |U|, number of classes.
- ``train``          → local training on L_z from the sent global weights; reply: weights + |L|.
- ``query.probe``    → g (mean entropy over U_z), |U|, and for diffusion the pseudo-parameter
                        update m_t from the sent model w(t), optionally sketched; for balanced
                        diffusion also the mean prediction over U_z (C numbers).
- ``query.acquire``  → run the point strategy on the client, ask the oracle for labels, update the
                        pools; reply: counts (and, if enabled, the class histogram of this batch).
No handler holds algorithmic logic: they call ``fedal.training``, ``fedal.acquisition``, ``fedal.pools``.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedal import acquisition
from fedal.config import Config
from fedal.data import client_data, load_dataset, model_inputs
from fedal.devices import resolve_device
from fedal.pools import Pools
from fedal.training import build_model, predict, pseudo_update, train_local
from fedal.uncertainty import entropy

# One thread per simulated client: Ray runs one actor per CPU (backend config), and torch's
# default of all cores per actor oversubscribes a 2-core machine badly.
torch.set_num_threads(int(os.environ.get("FEDAL_TORCH_THREADS", "1")))
try:  # the same for BLAS/OpenMP pools (sklearn's k-means in BADGE/LoGo is slow when oversubscribed)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ.get("FEDAL_TORCH_THREADS", "1")))
except ImportError:  # threadpoolctl comes with scikit-learn; without it only torch is limited
    pass

POOLS_KEY = "fedal.pools"



@dataclass
class ClientRuntime:
    cfg: Config
    partition_id: int
    x: np.ndarray  # private inputs (or their frozen-backbone features): never put into a reply
    y: np.ndarray  # private labels: read only by the oracle, never put into a reply
    num_classes: int
    input_shape: tuple[int, ...]
    device: torch.device

    def oracle(self, indices: np.ndarray) -> np.ndarray:
        """The simulation's annotator: returns the true labels of the requested points."""
        return self.y[indices]

    def model(self, arrays: ArrayRecord | None = None):
        cfg = self.cfg
        m = build_model(cfg.dataset, self.input_shape, self.num_classes, cfg.backbone,
                        cfg.backbone_weights, seed=cfg.seed, freeze_backbone=cfg.freeze_backbone)
        if arrays is not None:
            m.load_state_dict(arrays.to_torch_state_dict())
        return m.to(self.device)


@functools.lru_cache(maxsize=256)
def _runtime(run_config_items: tuple, partition_id: int, num_partitions: int) -> ClientRuntime:
    cfg = Config.from_run_config(dict(run_config_items))
    x, y = client_data(cfg, partition_id, num_partitions)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    x = model_inputs(cfg, x, partition_id)
    return ClientRuntime(cfg, partition_id, x, y, ds.num_classes, tuple(x.shape[1:]),
                         resolve_device(cfg.device))


def runtime(context: Context, run_config: dict) -> ClientRuntime:
    nc = context.node_config
    pid = int(nc.get("partition-id", 0))
    num = int(nc.get("num-partitions", 1))
    return _runtime(tuple(sorted(run_config.items())), pid, num)


def _pool_file(rt: ClientRuntime) -> Path | None:
    d = os.environ.get("FEDAL_STATE_DIR", "")
    return Path(d) / f"pools-client{rt.partition_id}-{rt.cfg.config_hash()}-s{rt.cfg.seed}.json" if d else None


def load_pools(rt: ClientRuntime, context: Context) -> Pools:
    """Pools live in ``context.state`` (small: indices and labels). With ``FEDAL_STATE_DIR`` set
    they are also written to disk, so a restarted SuperNode recovers every paid label."""
    if POOLS_KEY in context.state.config_records:
        return Pools.from_dict(dict(context.state.config_records[POOLS_KEY]))
    f = _pool_file(rt)
    if f is not None and f.exists():
        pools = Pools.load(f)
        if pools.size != len(rt.x):
            raise ValueError(f"pool file {f} describes {pools.size} points but this client holds {len(rt.x)}")
        return pools
    return Pools(size=len(rt.x))


def store_pools(rt: ClientRuntime, context: Context, pools: Pools) -> None:
    context.state.config_records[POOLS_KEY] = ConfigRecord(pools.to_dict())
    f = _pool_file(rt)
    if f is not None:
        pools.save(f)


def cpu_arrays(model) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _reply(msg: Message, metrics: dict, arrays: dict[str, ArrayRecord] | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), **(arrays or {})})
    return Message(content=content, reply_to=msg)


def _seed(cfg: Config, pid: int, *parts: int) -> int:
    # stable, distinct seeds per (run seed, client, round, ...) without Python's salted hash()
    return int(np.random.SeedSequence([cfg.seed, pid, *parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------- handlers
def info(msg: Message, context: Context, run_config: dict) -> Message:
    rt = runtime(context, run_config)
    pools = load_pools(rt, context)
    return _reply(msg, {"partition-id": rt.partition_id, "n-labeled": pools.n_labeled,
                        "n-unlabeled": pools.n_unlabeled, "num-classes": rt.num_classes})


def train(msg: Message, context: Context, run_config: dict) -> Message:
    rt = runtime(context, run_config)
    conf = msg.content["config"]
    pools = load_pools(rt, context)
    model = rt.model(msg.content["arrays"])
    al_round, fl_round = int(conf["al-round"]), int(conf["server-round"])
    epochs = int(conf["local-epochs"])
    seed = _seed(rt.cfg, rt.partition_id, al_round, fl_round)
    t0 = time.perf_counter()
    if rt.cfg.training_mode == "retrain":
        idx, labels = pools.labeled_arrays()
        loss = train_local(model, rt.x[idx], labels, epochs=epochs, batch_size=rt.cfg.batch_size,
                           lr=rt.cfg.learning_rate, seed=seed)
        n_examples = len(idx)
    else:
        loss, n_examples = _train_continual(rt, pools, context, model, al_round, fl_round, epochs, seed)
    return _reply(msg, {"num-examples": n_examples, "train-loss": float(np.nan_to_num(loss)),
                        "train-time": time.perf_counter() - t0},
                  {"arrays": cpu_arrays(model)})


def _train_continual(rt: ClientRuntime, pools: Pools, context: Context, model, al_round: int,
                     fl_round: int, epochs: int, seed: int) -> tuple[float, int]:
    """Warm start / CAL local update (seeds/002) on this client's own labels only."""
    from fedal.continual import record_logits, train_continual

    idx, labels = pools.labeled_arrays()
    rounds = np.asarray(pools.acquired_round, dtype=np.int64)
    if fl_round == 1 and al_round > 0:
        # z' of DER/SD: the logits of the global model that finished the AL round in which a point
        # was first trained on (seeds/002 §3) — the model received now, for last round's labels
        fresh = [int(i) for i, r in zip(idx, rounds) if r < al_round and int(i) not in pools.logits]
        if fresh:
            pools.set_logits(fresh, record_logits(model, torch.from_numpy(rt.x[fresh])).numpy())
            store_pools(rt, context, pools)
    new, old = rounds == al_round, rounds < al_round
    old_idx = idx[old]
    old_logits = None
    if rt.cfg.training_mode in ("cal-der", "cal-sd", "cal-sds2") and len(old_idx):
        old_logits = np.array([pools.logits[int(i)] for i in old_idx], dtype=np.float32)
    stats = train_continual(model, rt.x[idx[new]], labels[new], rt.x[old_idx], labels[old], old_logits,
                            mode=rt.cfg.training_mode, epochs=epochs, batch_size=rt.cfg.batch_size,
                            lr=rt.cfg.learning_rate, generator=torch.Generator().manual_seed(seed))
    losses = stats.get("loss_per_epoch") or [float("nan")]
    # FedAvg weight: the client's labeled set, as in retrain, so that the modes differ only in
    # their local update
    return float(losses[-1]), len(idx)


def probe(msg: Message, context: Context, run_config: dict) -> Message:
    """Statistics of U_z under the sent global model w(t): g, and when asked the pseudo-update m_t
    (one per recorded FL round t; the server averages q over them) and the mean prediction."""
    rt = runtime(context, run_config)
    cfg = rt.cfg
    conf = msg.content["config"]
    pools = load_pools(rt, context)
    model = rt.model(msg.content["arrays"])
    x_u = rt.x[pools.unlabeled]
    probs, _ = predict(model, x_u)
    g = float(entropy(probs).mean()) if len(probs) else 0.0  # |U|=0 → g=0
    metrics = {"partition-id": rt.partition_id, "g": g, "n-unlabeled": pools.n_unlabeled,
               "n-labeled": pools.n_labeled}
    if bool(conf.get("need-mix", False)):
        # the mean softmax over U: C numbers, an aggregate of model outputs (balanced diffusion)
        mix = probs.mean(0) if len(probs) else np.zeros(rt.num_classes)
        metrics["mix"] = [float(v) for v in mix]
    arrays = None
    if bool(conf["need-embeddings"]):
        m = pseudo_update(model, x_u, optimizer=cfg.pseudo_optimizer, epochs=cfg.pseudo_epochs,
                          lr=cfg.pseudo_lr if cfg.pseudo_optimizer == "gd" else cfg.learning_rate,
                          batch_size=cfg.batch_size, scope=cfg.pseudo_params, probs=probs,
                          seed=_seed(cfg, rt.partition_id, int(conf["al-round"]), 7,
                                     int(conf.get("fl-round", 0))))[None, :]
        if cfg.sketch_dim > 0:
            m = sketch(m, cfg.sketch_dim, int(conf["sketch-seed"]))
        arrays = {"pseudo": ArrayRecord({"m": Array(m.astype(np.float32))})}
    return _reply(msg, metrics, arrays)


def sketch(m: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Dense Gaussian random projection S m_t with S_ij ~ N(0, 1/k) from the server's seed
    (SPEC §2): every client draws the same S, so distances are preserved within JL bounds."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((m.shape[1], k), dtype=np.float32) / np.float32(np.sqrt(k))
    return m @ s


def acquire(msg: Message, context: Context, run_config: dict) -> Message:
    rt = runtime(context, run_config)
    cfg = rt.cfg
    conf = msg.content["config"]
    n = int(conf["n"])
    al_round = int(conf["al-round"])
    pools = load_pools(rt, context)
    n = min(n, pools.n_unlabeled)  # SPEC §1: a client short of W gives all it has
    t0 = time.perf_counter()
    name = str(conf["point-strategy"])
    strategy = acquisition.get(name, **point_strategy_params(cfg, name))
    model = rt.model(msg.content["arrays"]) if "arrays" in msg.content.array_records else None
    view = local_view(rt, pools, model, needs_local=getattr(strategy, "needs_local_model", False),
                      al_round=al_round)
    rng = np.random.default_rng(_seed(cfg, rt.partition_id, al_round, 11))
    chosen = np.asarray(strategy.select(view, n, rng).indices, dtype=np.int64) if n > 0 else np.zeros(0, np.int64)
    labels = rt.oracle(chosen)
    pools.add(chosen, labels, al_round)
    store_pools(rt, context, pools)
    metrics = {"partition-id": rt.partition_id, "acquired": int(len(chosen)),
               "n-labeled": pools.n_labeled, "n-unlabeled": pools.n_unlabeled,
               "acquire-time": time.perf_counter() - t0}
    if cfg.report_label_histogram:
        # an aggregate count per class, never per-point labels (README: privacy)
        metrics["acquired-per-class"] = np.bincount(labels, minlength=rt.num_classes).astype(int).tolist()
    return _reply(msg, metrics)


def point_strategy_params(cfg: Config, name: str) -> dict:
    if name == "diffusion":
        return {"k": cfg.local_k, "delta": cfg.delta, "steps": cfg.diffusion_steps, "space": cfg.local_space}
    if name == "logo":
        # a client whose labels all came from others' rounds may hold none yet: use f^r there
        return {"without_local_model": "global"}
    return {}


def local_view(rt: ClientRuntime, pools: Pools, model, *, needs_local: bool, al_round: int):
    """Everything a point strategy may look at, computed on the client (SPEC §5-6)."""
    mask = pools.labeled_mask
    if model is None:  # round 0 (random initial labels): no model exists yet
        c = rt.num_classes
        probs = np.full((len(rt.x), c), 1.0 / c)
        emb = rt.x.reshape(len(rt.x), -1).astype(np.float32)
        w, b = np.zeros((c, emb.shape[1])), np.zeros(c)
    else:
        probs, emb = predict(model, rt.x)
        w = model.head.classifier.weight.detach().cpu().numpy()
        b = model.head.classifier.bias.detach().cpu().numpy()
    labels = np.full(len(rt.x), -1, dtype=np.int64)
    idx, lab = pools.labeled_arrays()
    labels[idx] = lab
    extra = {}
    if needs_local and len(idx) > 0:  # without local labels LoGo falls back to the global model
        local = rt.model(None)
        train_local(local, rt.x[idx], lab, epochs=rt.cfg.local_epochs * rt.cfg.fl_rounds,
                    batch_size=rt.cfg.batch_size, lr=rt.cfg.learning_rate,
                    seed=_seed(rt.cfg, rt.partition_id, al_round, 13))
        extra["local_probs"], extra["local_embeddings"] = predict(local, rt.x)
    return acquisition.LocalView(probs=probs, embeddings=emb, labeled=mask, head_weight=w, head_bias=b,
                                 inputs=rt.x, labels=labels, **extra)


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
            return fn(msg, context, {**context.run_config, **bound})

        handler.__name__ = fn.__name__
        return handler

    capp.query("info")(bind(info))
    capp.train()(bind(train))
    capp.query("probe")(bind(probe))
    capp.query("acquire")(bind(acquire))
    return capp


app = build_client_app()
