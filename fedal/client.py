"""The client side of the protocol without Flower: one client's private data, its pools, and the
calls into training, probing and acquisition.

``fedal.client_app`` decodes Flower messages, calls a ``ClientWorker`` and encodes its answers;
a deployment or an asynchronous labeling service can drive the same worker directly. Models go
in and out as torch state dicts, statistics as plain dicts of scalars and lists.

What leaves the worker is what may leave the client: model parameters, pseudo-parameter updates
(optionally sketched) and aggregate statistics (README, "Privacy"). ``x`` and ``y`` never do.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch

from fedal import acquisition, numerics
from fedal.config import Config
from fedal.defaults import DEFAULTS
from fedal.pools import Pools
from fedal.client_data import ClientData, NodeConfigError, load_node_data
from fedal.protocol import (AcquireReply, AcquireRequest, InfoReply, InfoRequest, LabelingReply, LabelingRequest,
                            ProbeReply, ProbeRequest, Reply, Request, TrainReply, TrainRequest)
from fedal.store.backends import ClientPoolStore, node_pool_store, node_state_dir


def configure_threads() -> None:
    """One intra-op thread per process unless ``FEDAL_TORCH_THREADS`` says otherwise.

    Ray runs one client actor per CPU, and torch's default of all cores per actor oversubscribes
    a small machine badly; the same holds for BLAS/OpenMP pools (sklearn's k-means in BADGE/LoGo).
    Called when a process first builds a site's worker (``site_worker``), not on import, so
    importing fedal never changes a process's thread settings behind its back."""
    global _THREADS_SET
    n = int(os.environ.get("FEDAL_TORCH_THREADS", "1"))
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it only torch is limited
        pass
    _THREADS_SET = True


_THREADS_SET = False


def site_worker(run_config: dict, node_config: dict, memory_store=None) -> "ClientWorker":
    """The worker of the client a SuperNode's node config describes (``load_node_data``) with its
    pools: with a state dir (node config ``state-dir`` or ``FEDAL_STATE_DIR``) the SQLite store
    there, which holds every paid label across restarts; without one ``memory_store()`` (the
    ClientApp: the node's Flower context). The process's thread counts are set on the first call."""
    # before the site computes anything with torch (fedal/numerics.py)
    numerics.apply(run_config.get("numerics", DEFAULTS["numerics"]), run_config.get("device", DEFAULTS["device"]))
    if not _THREADS_SET:
        configure_threads()
    data = load_node_data(run_config, node_config)
    store = node_pool_store(data, node_state_dir(node_config))
    if store is None:
        if memory_store is None:
            raise NodeConfigError("node config has no state-dir (and FEDAL_STATE_DIR is not set): this worker keeps "
                                  "a site's pools only in the state dir's store")
        store = memory_store()
    return ClientWorker(data, store)


class LabelsUnavailableError(RuntimeError):
    """A client was asked for labels its data does not have."""


def derived_seed(cfg: Config, pid: int, *parts: int) -> int:
    # stable, distinct seeds per (run seed, client, round, ...) without Python's salted hash()
    return int(np.random.SeedSequence([cfg.seed, pid, *parts]).generate_state(1)[0])


def sketch(m: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Dense Gaussian random projection S m_t with S_ij ~ N(0, 1/k) from the server's seed
    (docs/method.md, "Pseudo-updates"): every client draws the same S, so distances are
    preserved within Johnson–Lindenstrauss bounds."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((m.shape[1], k), dtype=np.float32) / np.float32(np.sqrt(k))
    return m @ s


# ---------------------------------------------------------------------------------- the worker
StateDict = dict  # name -> torch.Tensor


class ClientWorker:
    """One client's side of each protocol step. Stateless between calls apart from the store."""

    def __init__(self, data: ClientData, store: ClientPoolStore):
        self.data = data
        self.cfg = data.cfg
        self.store = store

    # ------------------------------------------------------------------ helpers
    def oracle(self, indices: np.ndarray) -> np.ndarray:
        """The annotator: the labels the client's data holds (simulation: the true labels; a
        site: its ``y`` array, class folders or labels.csv)."""
        self._require_labels(len(indices))
        return self.data.y[indices]

    def _require_labels(self, n: int) -> None:
        if n > 0 and self.data.y is None:
            raise LabelsUnavailableError(
                f"client {self.data.client_id!r} was asked for {n} labels, but its data "
                f"{self.data.source} has no labels (no 'y' array, class folders or labels.csv); give the "
                "labels with the data and restart the SuperNode (asking annotators on request is not "
                "supported yet)")

    def model(self, state: StateDict | None = None):
        from fedal.training import build_model

        cfg, d = self.cfg, self.data
        m = build_model(cfg.dataset, d.input_shape, d.num_classes, cfg.backbone, cfg.backbone_weights,
                        seed=cfg.seed, freeze_backbone=cfg.freeze_backbone)
        if state is not None:
            m.load_state_dict(state)
        return m.to(d.device)

    @property
    def durable_store(self):
        """The site's SQLite store (``fedal.store.PoolStore``: its labeling page and query pool
        live there), or None when its pools are in memory."""
        return self.store.database

    def pools(self) -> Pools:
        pools = self.store.load()
        if pools is None:
            return Pools(size=len(self.data.x))
        if pools.size != len(self.data.x):
            raise ValueError(f"the stored pools describe {pools.size} points but this client holds "
                             f"{len(self.data.x)}")
        return pools

    def seed(self, *parts: int) -> int:
        """A seed of this client derived from the run's seed and ``parts`` (``derived_seed``)."""
        return derived_seed(self.cfg, self.data.partition_id, *parts)

    # ------------------------------------------------------------------ protocol steps
    def handle(self, request: Request, arrays: dict | None) -> Reply:
        """One protocol message (``fedal.protocol``), by the request's type: the ClientApp
        handlers and the persistent node worker (``fedal.deploy.node_worker``) both come
        through here. ``arrays``: the weights sent with it, as numpy arrays (None: no model sent)."""
        try:
            step = _STEPS[type(request)]
        except KeyError:
            raise ValueError(f"no step for {type(request).__name__}; valid: "
                             f"{', '.join(t.__name__ for t in _STEPS)}") from None
        return step(self, request, arrays)

    def info(self) -> InfoReply:
        pools = self.pools()
        return InfoReply(self.data.partition_id, pools.n_labeled, pools.n_unlabeled, self.data.num_classes)

    def train(self, state: StateDict, al_round: int, fl_round: int, epochs: int) -> TrainReply:
        """Local training on L_z from the global weights ``state``: the new weights (as CPU
        arrays) and the reply's metrics."""
        from fedal.continual import training_mode
        from fedal.training import scheduled_lr

        pools = self.pools()
        # the labels of AL rounds up to this one: later ones exist here only when a crashed run
        # repeats this round (Pools.as_of)
        upto = pools.as_of(al_round)
        model = self.model(state)
        seed = self.seed(al_round, fl_round)
        t0 = time.perf_counter()
        mode = training_mode(self.cfg.training_mode)
        lr = scheduled_lr(self.cfg.learning_rate, self.cfg.lr_schedule, self.cfg.lr_step_rounds, fl_round)
        if mode.warm_start:
            loss = self._train_continual(mode, pools, upto, model, al_round, fl_round, epochs, seed, lr)
        else:
            from fedal.training import train_local

            idx, labels = upto.labeled_arrays()
            loss = train_local(model, self.data.x[idx], labels, epochs=epochs, batch_size=self.cfg.batch_size,
                               lr=lr, seed=seed)
        # FedAvg weight: the client's labeled set in every mode, so that the modes differ only in
        # their local update
        return TrainReply({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                          upto.n_labeled, float(np.nan_to_num(loss)), time.perf_counter() - t0)

    def _train_continual(self, mode, pools: Pools, upto: Pools, model, al_round: int, fl_round: int,
                         epochs: int, seed: int, lr: float) -> float:
        """Warm start / CAL local update on this client's own labels only: those of ``upto``
        (``pools`` as of this AL round); logits are recorded in ``pools`` itself, which is saved."""
        from fedal.continual import record_logits, train_continual

        x = self.data.x
        idx, labels = upto.labeled_arrays()
        rounds = np.asarray(upto.acquired_round, dtype=np.int64)
        if al_round > 0:
            # z' of DER/SD: the logits of the global model that finished the AL round in which a
            # point was first trained on — the model received now, for last round's labels. In
            # the synchronous loop they are all recorded at FL round 1; with people labeling
            # (fedal.async_labeling) a query of an earlier round may be paid later, in any round
            fresh = [int(i) for i, r in zip(idx, rounds) if r < al_round and int(i) not in pools.logits]
            if fresh:
                pools.set_logits(fresh, record_logits(model, torch.from_numpy(x[fresh])).numpy())
                self.store.save(pools)
        new, old = rounds == al_round, rounds < al_round
        old_idx = idx[old]
        old_logits = None
        if mode.needs_logits and len(old_idx):
            old_logits = np.array([pools.logits[int(i)] for i in old_idx], dtype=np.float32)
        stats = train_continual(model, x[idx[new]], labels[new], x[old_idx], labels[old], old_logits,
                                mode=mode.name, epochs=epochs, batch_size=self.cfg.batch_size,
                                lr=lr, generator=torch.Generator().manual_seed(seed))
        losses = stats.get("loss_per_epoch") or [float("nan")]
        return float(losses[-1])

    def probe(self, state: StateDict, al_round: int, fl_round: int, *, pseudo_update: bool,
              mix: bool, sketch_seed: int = 0, pending: int = 0) -> ProbeReply:
        """Statistics of U_z under the global model w(t): g, and when asked the pseudo-update m_t
        (1, D) and the mean prediction over U_z.

        ``pending`` (asynchronous labeling): labels granted to this client and not paid yet. Its
        ``pending`` most uncertain points (by entropy) are left out of U_z, as if already labeled:
        they are what its query workers pick next, and in the synchronous loop a client's granted
        points are labeled before the next probe. Without this a client whose labels are still
        coming looks as uncertain as before its grant and is chosen again and again (measured in
        reports/async-labeling/notes.md)."""
        from fedal.training import predict
        from fedal.training import pseudo_update as take_pseudo_update
        from fedal.uncertainty import class_mix, confusion_counts, entropy

        cfg = self.cfg
        # U_z as it was before the acquisition this probe serves (AL round ``al_round``): a crashed
        # run repeating the round before it may find that acquisition's labels already paid
        pools = self.pools().as_of(al_round - 1)
        model = self.model(state)
        x_u = self.data.x[pools.unlabeled]
        probs, _ = predict(model, x_u)
        ent = entropy(probs)
        if pending > 0 and len(probs):
            keep = np.sort(np.argsort(-ent, kind="stable")[min(int(pending), len(probs)):])
            x_u, probs, ent = x_u[keep], probs[keep], ent[keep]
        g = float(ent.mean()) if len(probs) else 0.0  # |U|=0 → g=0
        mean = None
        if mix:
            # the predicted class mix over U: C numbers, an aggregate of model outputs (the balanced rules)
            mean = [float(v) for v in class_mix(probs, cfg.predicted_mix, self.data.num_classes)]
        confusion = None
        if mix and cfg.predicted_mix == "bbse":
            # the server solves each client's argmax share through the federation's confusion matrix
            idx, y = pools.labeled_arrays()
            p_l = predict(model, self.data.x[idx])[0] if len(idx) else np.zeros((0, self.data.num_classes))
            confusion = [int(v) for v in confusion_counts(p_l, y, self.data.num_classes).ravel()]
        reply = ProbeReply(self.data.partition_id, g, pools.n_unlabeled, pools.n_labeled, mean, confusion)
        if not pseudo_update:
            return reply
        m = take_pseudo_update(model, x_u, optimizer=cfg.pseudo_optimizer, epochs=cfg.pseudo_epochs,
                               lr=cfg.pseudo_lr if cfg.pseudo_optimizer == "gd" else cfg.learning_rate,
                               batch_size=cfg.batch_size, scope=cfg.pseudo_params, probs=probs,
                               seed=self.seed(al_round, 7, fl_round))[None, :]
        if cfg.sketch_dim > 0:
            m = sketch(m, cfg.sketch_dim, sketch_seed)
        return dataclasses.replace(reply, pseudo={"m": m.astype(np.float32)})

    def acquire(self, state: StateDict | None, n: int, al_round: int, point_strategy: str) -> AcquireReply:
        """Run the point strategy on this client, ask the oracle for the labels of its picks and
        store them. ``state`` None: round 0, no model yet."""
        cfg = self.cfg
        pools = self.pools()
        t0 = time.perf_counter()

        def choose(pools: Pools) -> np.ndarray:
            k = min(n, pools.n_unlabeled)  # a client short of W gives all it has (docs/method.md, Protocol)
            self._require_labels(k)  # fail before choosing: there is nobody to ask
            strategy = acquisition.from_config(point_strategy, cfg)
            model = self.model(state) if state is not None else None
            view = self.local_view(pools, model, needs_local=strategy.needs_local_model, al_round=al_round)
            rng = np.random.default_rng(self.seed(al_round, 11))
            return (np.asarray(strategy.select(view, k, rng).indices, dtype=np.int64) if k > 0
                    else np.zeros(0, np.int64))

        # paid at most once: a retried or resumed round returns its points and labels without
        # asking the oracle again (a durable store commits them before this returns)
        done = self.store.acquire(al_round, choose, self.oracle, strategy=point_strategy, pools=pools)
        chosen, labels = done.indices, done.labels
        pools = self.pools()
        # the class histogram: an aggregate count per class, never per-point labels (README: privacy)
        per_class = (np.bincount(labels, minlength=self.data.num_classes).astype(int).tolist()
                     if cfg.report_label_histogram else None)
        return AcquireReply(self.data.partition_id, int(len(chosen)), pools.n_labeled, pools.n_unlabeled,
                            time.perf_counter() - t0, per_class)

    def local_view(self, pools: Pools, model, *, needs_local: bool, al_round: int) -> acquisition.LocalView:
        """Everything a point strategy may look at, computed on the client (docs/method.md,
        "Local batch")."""
        from fedal.training import predict, train_local

        x, cfg = self.data.x, self.cfg
        mask = pools.labeled_mask
        if model is None:  # round 0 (random initial labels): no model exists yet
            c = self.data.num_classes
            probs = np.full((len(x), c), 1.0 / c)
            emb = x.reshape(len(x), -1).astype(np.float32)
            w, b = np.zeros((c, emb.shape[1])), np.zeros(c)
        else:
            probs, emb = predict(model, x)
            w = model.head.classifier.weight.detach().cpu().numpy()
            b = model.head.classifier.bias.detach().cpu().numpy()
        labels = np.full(len(x), -1, dtype=np.int64)
        idx, lab = pools.labeled_arrays()
        labels[idx] = lab
        extra = {}
        if needs_local and len(idx) > 0:  # without local labels LoGo falls back to the global model
            local = self.model(None)
            train_local(local, x[idx], lab, epochs=cfg.local_epochs * cfg.fl_rounds,
                        batch_size=cfg.batch_size, lr=cfg.learning_rate, seed=self.seed(al_round, 13))
            extra["local_probs"], extra["local_embeddings"] = predict(local, x)
        return acquisition.LocalView(probs=probs, embeddings=emb, labeled=mask, head_weight=w, head_bias=b,
                                     inputs=x, labels=labels, **extra)


def _state_dict(arrays: dict | None) -> StateDict | None:
    return None if arrays is None else {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _labeling(worker: ClientWorker, req: LabelingRequest, arrays) -> LabelingReply:
    # labeling = "async": the site's query pool (fedal.async_labeling)
    from fedal.async_labeling import handle

    return LabelingReply(handle(worker, req, _state_dict(arrays)))


# the dispatch table of ClientWorker.handle: one step per request type (fedal.protocol)
_STEPS = {
    InfoRequest: lambda w, req, arrays: w.info(),
    TrainRequest: lambda w, req, arrays: w.train(_state_dict(arrays), req.al_round, req.server_round,
                                                 req.local_epochs),
    ProbeRequest: lambda w, req, arrays: w.probe(_state_dict(arrays), req.al_round, req.fl_round,
                                                 pseudo_update=req.need_embeddings, mix=req.need_mix,
                                                 sketch_seed=req.sketch_seed, pending=req.pending),
    AcquireRequest: lambda w, req, arrays: w.acquire(_state_dict(arrays), req.n, req.al_round, req.point_strategy),
    LabelingRequest: _labeling,
}
