"""Local training, prediction and pseudo-parameter updates (docs/method.md, "Protocol", "Pseudo-updates"), in plain PyTorch.

Everything here runs on a client (or on the server for the central test set) and takes arrays,
so it is testable without Flower. Determinism: every function that draws randomness takes a
``seed`` and uses its own ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from fedal import numerics
from fedal.data.registry import resolve_backbone
from fedal.models import CNN1D, FedALModel, Identity, MLPBackbone


def load_small_backbone(bb: nn.Module, path: str) -> nn.Module:
    """Load a local state dict into a CNN1D/MLP backbone, strictly (every key, every shape).

    Accepts the backbone's own state dict or one nested under a prefix (``module.``,
    ``backbone.``, a whole ``FedALModel``'s keys: only the backbone's are taken). A missing file
    raises ``BackboneWeightsNotFound``; a file that does not fit raises ``BackboneWeightsError``
    naming the path and the missing/unexpected/mis-shaped keys.
    """
    from fedal.backbones import load_backbone_weights

    bb.backbone_name = type(bb).__name__
    load_backbone_weights(bb, path)
    return bb


def build_model(dataset: str, input_shape: tuple[int, ...], num_classes: int, backbone: str = "auto",
                backbone_weights: str = "", seed: int = 0, freeze_backbone: bool = False) -> FedALModel:
    """The same seed gives the same initial weights on every machine (retrain's f^0, docs/method.md, "Protocol").

    ``freeze_backbone``: the model is the head alone on cached backbone features (issue #5), so
    ``input_shape`` is then the feature shape (out_dim,).
    ``backbone_weights``: a local state-dict path, for the ResNets and for cnn1d/mlp alike; a
    loaded backbone keeps its weights (only the head is initialised).
    """
    torch.manual_seed(seed)
    backbone = resolve_backbone(dataset, backbone)
    if freeze_backbone:
        return FedALModel(Identity(int(np.prod(input_shape))), num_classes, init_backbone=False)
    if backbone in ("cnn1d", "mlp"):
        bb: nn.Module = (CNN1D(length=int(input_shape[-1])) if backbone == "cnn1d"
                         else MLPBackbone(int(np.prod(input_shape))))
        if backbone_weights:
            load_small_backbone(bb, backbone_weights)
        return FedALModel(bb, num_classes, init_backbone=not backbone_weights)
    else:
        from fedal.backbones import PixelInput, build_backbone, make_backbone_transform
        from fedal.image_meta import vision_meta

        net = build_backbone(backbone, backbone_weights or None, seed=seed)
        tf = make_backbone_transform(weights=backbone_weights or None, dataset_meta=vision_meta(dataset))
        bb = PixelInput(net, tf)
    # torchvision's ResNets come with their own init, and pretrained weights must stay as loaded
    return FedALModel(bb, num_classes, init_backbone=False)


def _tensor(x: np.ndarray, device=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    elif not t.is_floating_point() and t.dtype != torch.uint8:
        t = t.float()  # integer inputs other than image bytes are features
    return t if device is None else t.to(device)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


OPTIMIZERS: Mapping[str, Callable[..., torch.optim.Optimizer]] = MappingProxyType({
    "adam": lambda params, lr: numerics.adam(params, lr),  # torch's, or PortableAdam under portable numerics
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
})


def make_optimizer(params, lr: float, name: str = "adam") -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](params, lr)


# --------------------------------------------------------------------------------------------
# The local-training loop (docs/method.md, "Baselines and training modes")
# --------------------------------------------------------------------------------------------

def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  steps: int | None = None) -> list[torch.Tensor]:
    """The batch order of one epoch over rows 0..n−1 — the only place that decides it.

    ``steps`` None: one permutation ``torch.randperm(n, generator)`` cut into chunks of
    ``batch_size`` (the last may be smaller). Otherwise ``steps`` chunks of min(batch_size, n) cut
    from consecutive permutations (a chunk that straddles two permutations may hold an index twice;
    every index still appears equally often over whole permutations); with n = 0, ``steps`` empty
    batches (a CAL client without new labels trains on replay alone) and no draw.
    """
    if steps is None:
        perm = torch.randperm(n, generator=generator)
        return [perm[s:s + batch_size] for s in range(0, n, batch_size)]
    if n == 0:
        return [torch.zeros(0, dtype=torch.long)] * steps
    size = min(batch_size, n)
    need = steps * size
    perms = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))])
    return [perms[i * size:(i + 1) * size] for i in range(steps)]


# (x_batch, y_batch) on the model's device -> (the batch's loss, the samples it trained on)
BatchLoss = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, int]"]


@dataclass
class LoopStats:
    """What ``local_sgd`` did: optimizer steps, samples forwarded and backpropagated, and per epoch
    the sample-weighted mean batch loss (NaN for an epoch without samples)."""

    steps: int = 0
    samples: int = 0
    loss_per_epoch: list[float] = field(default_factory=list)

    @property
    def last_loss(self) -> float:
        return self.loss_per_epoch[-1] if self.loss_per_epoch else float("nan")


def local_sgd(model: nn.Module, x, y, *, epochs: int, batch_size: int, generator: torch.Generator,
              lr: float, optimizer: str = "adam", params=None, loss_term: BatchLoss | None = None,
              steps_per_epoch: int | None = None, what: str = "local training") -> LoopStats:
    """The one local-training loop: retrain, warm start, the CAL modes and the Adam pseudo-update
    all run it, so batch order, device moves, the optimizer step and the divergence check live here.

    Per epoch: the batches of ``epoch_batches(len(x), batch_size, generator, steps_per_epoch)``;
    per batch: x[b], y[b] to the model's device, ``loss_term(xb, yb)`` (default: mean
    cross-entropy of ``model(xb)``, counted as len(b) samples), a non-finite loss raises
    ``FloatingPointError`` before it reaches the weights, then zero_grad / backward / step of a
    fresh ``optimizer`` (``OPTIMIZERS``) over ``params`` (default: the trainable parameters).
    ``loss_term`` is where a mode plugs in more than cross-entropy (CAL's replay and
    distillation, ``fedal.continual``); it may draw from ``generator`` too (replay batches): the
    draws then interleave with the batch order deterministically. ``x``: a numpy array (converted as
    ``predict`` converts it: uint8 pixels stay bytes, other inputs become float32) or a tensor,
    used as it is; ``y``: integer labels.
    The model is left in the train/eval mode it came in.
    """
    xt = x if isinstance(x, torch.Tensor) else _tensor(x)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64) if not isinstance(y, torch.Tensor) else y,
                         dtype=torch.long)
    if len(xt) != len(yt):
        raise ValueError(f"x and y differ in length: {len(xt)} vs {len(yt)}")
    dev = _device(model)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, optimizer)
    if loss_term is None:
        def loss_term(xb, yb):
            return nn.functional.cross_entropy(model(xb), yb), len(yb)
    stats = LoopStats()
    was_training = model.training
    model.train()
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for b in epoch_batches(len(xt), batch_size, generator, steps_per_epoch):
                xb, yb = xt[b].to(dev), yt[b].to(dev)
                opt.zero_grad()
                loss, n = loss_term(xb, yb)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"{what} diverged: loss {value} at epoch {epoch + 1}, step {stats.steps + 1} "
                        f"(optimizer {optimizer}, lr {lr}, batch size {batch_size}); lower the learning rate")
                loss.backward()
                opt.step()
                total += value * n
                count += n
                stats.steps += 1
                stats.samples += n
            stats.loss_per_epoch.append(total / count if count else float("nan"))
    finally:
        model.train(was_training)
    return stats


def scheduled_lr(lr: float, schedule: str, step_rounds: int, fl_round: int) -> float:
    """The learning rate of FL round ``fl_round`` (1-based, counted within one AL round's
    training) under ``lr-schedule`` (docs/method.md, "The paper's training regime").

    ``step`` is the paper's "0.001, decayed by 0.1 at every 10th epoch", with one epoch read as
    one FL round: a round is one pass of the federation's labeled data into the global model
    (each client runs ``local-epochs`` local passes inside it). So lr × 0.1^⌊(t − 1)/step_rounds⌋;
    with retrain's 15 FL rounds: lr for rounds 1–10, lr/10 for 11–15. The schedule restarts with
    every AL round's training, as the paper retrains per AL round."""
    if schedule == "constant":
        return lr
    if schedule != "step":
        raise ValueError(f"lr-schedule = {schedule!r} is not valid; valid values: constant, step")
    if fl_round < 1 or step_rounds < 1:
        raise ValueError(f"fl_round ({fl_round}) and step_rounds ({step_rounds}) must be >= 1")
    return lr * 0.1 ** ((fl_round - 1) // step_rounds)


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                lr: float, seed: int, params=None) -> float:
    """Cross-entropy training on the client's labeled pool (``local_sgd`` with a generator seeded
    by ``seed``); returns the mean loss of the last epoch (NaN without data)."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        return float("nan")
    return local_sgd(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, params=params,
                     generator=torch.Generator().manual_seed(seed)).last_loss


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (n, C) and penultimate embeddings (n, d) of ``model`` on ``x``."""
    model.eval()
    dev = _device(model)
    probs, embs = [], []
    for s in range(0, len(x), batch_size):
        xb = _tensor(x[s:s + batch_size], dev)
        e = model.embed(xb)
        probs.append(torch.softmax(model.head.classifier(e), dim=1).cpu().numpy())
        embs.append(e.cpu().numpy())
    if not probs:
        c = model.head.classifier.out_features
        return np.zeros((0, c), np.float32), np.zeros((0, model.head.embed_dim), np.float32)
    return np.concatenate(probs), np.concatenate(embs)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a labeled set."""
    model.eval()
    dev = _device(model)
    correct, loss, n = 0, 0.0, len(y)
    for s in range(0, n, batch_size):
        logits = model(_tensor(x[s:s + batch_size], dev))
        yb = torch.from_numpy(np.asarray(y[s:s + batch_size], dtype=np.int64)).to(dev)
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / max(n, 1), loss / max(n, 1)


def pseudo_param_names(model: FedALModel, scope: str) -> list[str]:
    """Which parameters form the pseudo-parameter vector (docs/method.md, "Pseudo-updates" ``pseudo-params``)."""
    if scope == "all":
        return [n for n, p in model.named_parameters() if p.requires_grad]
    if scope == "head":
        return ["head." + n for n, p in model.head.named_parameters() if p.requires_grad]
    raise ValueError(f"pseudo-params = {scope!r} is not valid; valid values: head, all")


def recorded_rounds(fl_rounds: int) -> list[int]:
    """FL rounds after which clients take a pseudo-update: the last 25% of the AL round's
    training, at least one (the paper averages q "for the last 25% of the total epochs in each AL
    round"; docs/method.md, "Pseudo-updates"): T − ⌈T/4⌉ + 1 .. T."""
    if fl_rounds < 1:
        raise ValueError(f"fl-rounds = {fl_rounds} is invalid; valid range: >= 1")
    return list(range(fl_rounds - math.ceil(fl_rounds / 4) + 1, fl_rounds + 1))


PSEUDO_OPTIMIZERS = ("gd", "adam")


def pseudo_update(model: FedALModel, x_unlabeled: np.ndarray, *, optimizer: str, epochs: int, lr: float,
                  seed: int, scope: str = "head", batch_size: int = 32,
                  probs: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """One normalised pseudo-parameter update m = d/‖d‖ (Eq. 3–4), shape (D,); 0 if d = 0.

    Pseudo-labels ŷ = argmax f(x) over U come once from the model the update starts from, w_0.
    ``optimizer``:
    - ``"gd"``: the paper's Eq. 3 — ``epochs`` full-batch gradient-descent steps
      w ← w − lr·∇J̃(w) on the *summed* pseudo-label cross-entropy of Eq. 4 (gradients summed
      over chunks of ``chunk`` points, so memory does not grow with |U|);
    - ``"adam"``: ``epochs`` epochs of mini-batch Adam (``batch_size``), as local training.
    All trainable parameters move; ``scope`` only chooses which of them form d = w_E − w_0.
    With gd, one step and ``scope = "head"`` the head's gradient does not depend on whether the
    backbone could move, so the backbone runs without autograd: the same m, far cheaper.
    ``model`` is modified in place: pass a copy of the global model.
    """
    if optimizer not in PSEUDO_OPTIMIZERS:
        raise ValueError(f"pseudo-optimizer = {optimizer!r} is not valid; valid values: {', '.join(PSEUDO_OPTIMIZERS)}")
    names = pseudo_param_names(model, scope)
    params = dict(model.named_parameters())
    dim = sum(params[n].numel() for n in names)
    if len(x_unlabeled) == 0:
        return np.zeros(dim, dtype=np.float32)
    if probs is None:  # the caller may already hold the model's predictions on U (probe does)
        probs, _ = predict(model, x_unlabeled)
    y_hat = torch.from_numpy(probs.argmax(1).astype(np.int64))
    w0 = torch.cat([params[n].detach().flatten() for n in names]).clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    dev = _device(model)
    xt = _tensor(x_unlabeled)
    model.train()
    if optimizer == "gd":
        head_only = epochs == 1 and scope == "head"
        for _ in range(epochs):
            for p in trainable:
                p.grad = None
            for s in range(0, len(xt), chunk):
                xb, yb = xt[s:s + chunk].to(dev), y_hat[s:s + chunk].to(dev)
                if head_only:
                    with torch.no_grad():
                        feats = model.backbone(xb)
                    logits = model.head(feats)
                else:
                    logits = model(xb)
                nn.functional.cross_entropy(logits, yb, reduction="sum").backward()
            with torch.no_grad():
                for p in trainable:
                    if p.grad is not None:
                        p -= lr * p.grad
    else:
        local_sgd(model, xt, y_hat, epochs=epochs, batch_size=batch_size, lr=lr, params=trainable,
                  generator=torch.Generator().manual_seed(seed), what="the Adam pseudo-update")
    d = torch.cat([params[n].detach().flatten() for n in names]) - w0
    norm = float(d.norm())
    if not np.isfinite(norm):
        # gd on the *summed* loss takes steps that grow with |U|: several steps can diverge
        raise FloatingPointError(
            f"the pseudo-update diverged ({optimizer}, {epochs} steps, lr {lr}, {len(xt)} unlabeled "
            f"points); lower pseudo-lr or use pseudo-epochs = 1 (one step's direction needs no step size)")
    return (d / norm).cpu().numpy().astype(np.float32) if norm > 0 else np.zeros(dim, dtype=np.float32)
