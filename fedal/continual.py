"""Training modes for the local update: retrain, warm start and continual active learning (CAL).

Source: ``seeds/002_…`` ("Continual Active Learning"), docs/method.md, "Baselines and training modes". Equation numbers below are that
paper's. Notation: D_t = the client's labels that no global model has been trained on yet (the
labels it acquired since the last training phase, possibly none); D_{1:t−1} = the client's own
earlier labels (the history, "old"); m = current batch size, m' = replay batch size.

Modes (``MODES``)
-----------------
- ``retrain``    plain cross-entropy over the client's whole labeled set. The re-initialisation of
                 the global model at every AL round (Alg. 1 line 8) is the server's job, because
                 every client must start from the same initial weights; locally this mode is
                 identical to ``warm-start``.
- ``warm-start`` plain cross-entropy over D_t ∪ D_{1:t−1}, starting from the given (previous
                 global) weights ("AL w/ WS" in the paper).
- ``cal-er``     Experience replay: each minibatch interleaves m new points with m' points drawn
                 uniformly from the history; one cross-entropy over the m + m' points.
- ``cal-mir``    Maximally interfered retrieval: from C random history candidates replay the m'
                 whose loss grows the most under a virtual SGD step on the new batch; loss as ER.
- ``cal-der``    Dark experience replay, Eq. 2: CE(new) + α MSE(g(x'), z') + β CE(replay).
- ``cal-sd``     Scaled distillation, Eq. 3–5: λ_t CE(new) + (1 − λ_t)[α KL(σ(z')‖f) + (1−α) CE].
- ``cal-sds2``   SD whose replay batch maximises the submodular Eq. 6 over C random candidates.

One entry point, ``train_continual``, runs any mode on one client. It accepts only labeled arrays
— every x comes with its integer label, validated to lie in [0, C) — so an unlabeled point cannot
reach training (or replay) without someone inventing a label for it; the history (``old_*``) is
the only replay source and every replayed index is reported in the returned stats.

Decisions where the paper is silent or the federated setting differs (each also noted at its code)
-----------------------------------------------------------------------------------------------
1. *Client without new labels.* It trains on replay alone instead of being skipped. Under non-IID
   partitions the history of a client that acquired nothing this round exists nowhere else, and
   skipping it would let the FedAvg model forget its classes (the forgetting CAL exists to
   prevent, Fig. 1). SD's own rule agrees: λ_t = |D_t| / (|D_t| + |D_{1:t−1}|) = 0, i.e. pure
   stability. Per-mode loss with an empty current batch: ER/MIR → CE on the replay batch (MIR
   falls back to uniform replay: with no current batch its virtual step is the identity and every
   score is 0); DER → α MSE + β CE on replay; SD/SDS2 → L_replay. Such a client runs, per epoch,
   ⌈|D_{1:t−1}| / (m + m')⌉ steps of m' replay points, i.e. it revisits per epoch the fraction
   m'/(m + m') of its history that a CAL minibatch devotes to replay — bounded by one pass
   over its history, so never more work than warm start. ``steps_per_epoch`` overrides it (for
   example ⌈W / m⌉, the step count of a client that acquired the round's W points).
2. *λ_t counts* (Eq. 5) are the client's own |D_t| and |D_{1:t−1}| (the data its loss sees; no
   extra communication). ``lambda_t`` overrides it, e.g. with global counts sent by the server.
3. *MIR's sign.* The paper writes s_MIR(x) = ℓ(θ) − ℓ(θ_v) but describes (and the cited MIR,
   Aljundi et al. 2019, defines) the points "most likely to be forgotten": the ones whose loss
   *increases* most. We use s_MIR(x) = ℓ(f(x; θ_v), y) − ℓ(f(x; θ), y) and take the top m'.
   η (the virtual learning rate) defaults to the training learning rate, as the paper says; the
   virtual step is a plain SGD step even when training uses Adam (the paper does not say; for a
   small η the ranking is η-invariant to first order, s ≈ η ∇ℓ_x·∇L_c).
4. *DER's distillation term* is the mean squared error over the C logits, averaged over the replay
   batch: α · mean_{x'} (1/C)‖g(x'; θ) − z'‖²₂. Eq. 2 prints ‖·‖²₂ (a sum over classes), but the
   paper's text calls the term an "MSE based distillation loss", the reference DER code uses
   ``F.mse_loss`` (mean over classes) and the paper's α ∈ {0.1, 0.25} were tuned with it. The
   summed reading, i.e. a C-times larger α, also did worse in the toy check of docs/method.md,
   "Baselines and training modes".
5. *ER's loss* is one mean cross-entropy over the interleaved m + m' batch (the paper's "gradient
   computed on B"), which equals (m·CE_new + m'·CE_replay)/(m + m') — not CE_new + CE_replay.
6. *Which logits z' to store* is the caller's choice (``old_logits``). The paper's z' = g(x'; θ*_t')
   are the logits of the model obtained at the end of the round in which x' was trained on for the
   first time. The closest federated analogue is the global model received right after that
   round, evaluated on the client's (then) new labels; the logits of the model that *selected* the
   point (which never saw its label, and was uncertain about it by construction) are a weaker
   teacher. ``record_logits`` computes them; they never leave the client.
7. *SDS2* (Eq. 6): G(S) = Σ_{i∈A} max_{j∈S} w_ij + λ log(1 + Σ_{i∈S} h(x_i)) with
   w_ij = exp(−‖z_i − z_j‖² / 2σ²), z the penultimate embeddings (``model.embed``), h the entropy
   (natural log, the paper's uncertainty measure and ``fedal.uncertainty.entropy``), A a uniform
   random subset of C history points, greedy maximisation (ties → lower index), recomputed with
   the current parameters at every step like MIR (Alg. 2 line 5). Caveat: with the paper's σ = 0.1
   and unnormalised embeddings w_ij ≈ 0 for i ≠ j, so the facility-location gain is ≈ 1 for every
   candidate and SDS2 replays the most uncertain candidates; raise ``sds2_sigma`` (e.g. to the
   typical embedding distance) for a diversity effect.
8. *Replay sampling.* Each step draws its replay batch (or its C candidates) uniformly without
   replacement from the history, independently across steps (Alg. 2 line 5);
   m' = min(m', |history|).

Schedules (``SCHEDULES``; priors — the benchmark measures, these only have to be sensible)
-----------------------------------------------------------------------------------------
The retrain schedule is the caller's (e.g. 10 or 15 FL rounds × 2 local epochs over the whole
labeled set). The first AL round of every mode uses it too: there is no previous model to start
from. A mode's own schedule is capped at the retrain one (``resolve_schedule``). Later AL rounds:
- CAL modes: 8 FL rounds × 2 epochs. An epoch covers D_t plus m'/m as many replay points, ≈ 2W
  samples on a client that acquired W points, against |L_z| for retrain, so the saving per FL
  round grows with the AL round (as in the paper's tables: ≈1.5× at the first budget, 3–6× at the
  last). Local epochs stay at retrain's value because the paper trains CAL to the same
  convergence criterion as AL (the saving is the smaller task, not shorter training on it); the
  FL rounds shrink because the model starts from the previous global model, which already fits
  D_{1:t−1}, and only the ~V·W new labels must be absorbed — but each FL round revisits only a
  small replayed slice of the history, so not as far as warm start.
- ``warm-start``: 5 FL rounds × 2 epochs. Its epochs cover the whole labeled set like retrain's;
  its only saving is the good start (the paper measures 1.0–2.2× for it).
The two counts come from a small toy check, not a benchmark (its setting and numbers are in
docs/method.md, "Baselines and training modes"): CAL with 5 FL rounds fell short of retrain,
hence 8; warm start with 5, the fewest tried, already matched it. They are priors to re-measure
on the real protocol.

Code: the losses are in ``fedal.continual_losses``, MIR's and SDS2's replay scoring in
``fedal.continual_replay``, the hyperparameters, schedules and input checks in
``fedal.continual_setup``; this module holds the ``MODES`` registry, each mode's replay
selection and per-batch loss term, and every public name of the four is importable from here. The loop itself (batch order, optimizer step, divergence check) is the one every local
update shares, ``fedal.training.local_sgd``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fedal.continual_losses import (  # noqa: F401  (public names of fedal.continual)
    current_loss,
    der_loss,
    er_loss,
    sd_lambda,
    sd_loss,
    sd_replay_loss,
)
from fedal.continual_replay import (  # noqa: F401
    entropy_from_logits,
    mir_scores,
    mir_select,
    sds2_objective,
    sds2_select,
    sds2_similarity,
)
from fedal.continual_setup import (  # noqa: F401  (public names of fedal.continual)
    CALHyperParams,
    Schedule,
    _check_label_range,
    _device_of,
    _dtype_of,
    _labeled,
    _num_classes,
    _opt_int,
    _real,
)
from fedal.training import OPTIMIZERS, local_sgd  # noqa: F401  (OPTIMIZERS: public here too)
from fedal.validation import check_choice


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

def resolve_schedule(mode: str, retrain: Schedule, *, al_round: int) -> Schedule:
    """The schedule of ``mode`` in AL round ``al_round`` (0 = the first training, on the seed set).

    The first training of every mode starts from the initial weights — there is no previous
    global model to warm-start from — so it uses the retrain schedule. Later rounds use the
    mode's ``SCHEDULES`` entry, capped field-wise at the retrain schedule (a continual mode is
    never given more rounds or epochs than retraining from scratch).
    """
    _check_mode(mode)
    if not isinstance(retrain, Schedule):
        raise ValueError(f"retrain must be a Schedule; got {retrain!r}")
    if isinstance(al_round, bool) or not isinstance(al_round, int) or al_round < 0:
        raise ValueError(f"al_round must be an integer >= 0; got {al_round!r}")
    own = MODES[mode].schedule
    if own is None or al_round == 0:
        return retrain
    return Schedule(min(own.fl_rounds, retrain.fl_rounds),
                    min(own.local_epochs, retrain.local_epochs))


def _check_mode(mode: str) -> None:
    check_choice(mode, "mode", MODES)


# --------------------------------------------------------------------------------------------
# Stored logits z' (DER, SD)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def record_logits(model: nn.Module, x, *, batch_size: int = 512) -> torch.Tensor:
    """Logits g(x; θ) of ``model`` (eval mode, no grad), to be stored on the client next to the
    labels they belong to as DER/SD's z' (see decision 6 for *when* to record them)."""
    x = torch.as_tensor(x)
    was_training = model.training
    model.eval()
    try:
        device = _device_of(model)
        outs = [model(x[i:i + batch_size].to(device)).detach().cpu()
                for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros((0, _num_classes(model, x)), dtype=torch.float32)
    return torch.cat(outs)


# --------------------------------------------------------------------------------------------
# Local training
# --------------------------------------------------------------------------------------------

@dataclass
class _Ctx:
    model: nn.Module
    old_x: torch.Tensor
    old_y: torch.Tensor
    old_logits: torch.Tensor | None
    hp: CALHyperParams            # resolved
    generator: torch.Generator
    lam: float
    selection_samples: int = 0    # samples forwarded only to choose replay (MIR, SDS2)

    def uniform(self, k: int) -> torch.Tensor:
        n = self.old_x.shape[0]
        return torch.randperm(n, generator=self.generator)[:min(k, n)]


def _select_uniform(ctx: _Ctx, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """ER/DER/SD: m' points uniformly from the history (Alg. 2 line 5)."""
    return ctx.uniform(ctx.hp.replay_size)


def _select_mir(ctx: _Ctx, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """MIR: C uniform candidates, keep the m' with the largest s_MIR (decision 3)."""
    if xb.shape[0] == 0:  # no current batch → no interference to measure (decision 1)
        return ctx.uniform(ctx.hp.replay_size)
    cand = ctx.uniform(ctx.hp.mir_candidates)
    dev = _device_of(ctx.model)
    scores = mir_scores(ctx.model, xb, yb, ctx.old_x[cand].to(dev), ctx.old_y[cand].to(dev),
                        virtual_lr=ctx.hp.mir_virtual_lr)
    ctx.selection_samples += xb.shape[0] + 2 * cand.numel()
    return cand[mir_select(scores.cpu(), ctx.hp.replay_size)]


def _select_sds2(ctx: _Ctx, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """SDS2: C uniform candidates A, greedy Eq. 6 on their current embeddings and entropies."""
    cand = ctx.uniform(ctx.hp.sds2_candidates)
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = ctx.old_x[cand].to(_device_of(model))
            emb = model.embed(x)
            # FedALModel: embed(x) is the input of head.classifier, so classifier(emb) = model(x)
            # without a second pass through the backbone.
            classifier = getattr(getattr(model, "head", None), "classifier", None)
            logits = classifier(emb) if classifier is not None else model(x)
    finally:
        model.train(was_training)
    ctx.selection_samples += cand.numel()
    picks, _ = sds2_select(emb.cpu(), entropy_from_logits(logits).cpu(), ctx.hp.replay_size,
                           sigma=ctx.hp.sds2_sigma, lam=ctx.hp.sds2_lambda)
    return cand[picks]


@dataclass(frozen=True)
class _ModeSpec:
    select: Callable[[_Ctx, torch.Tensor, torch.Tensor], torch.Tensor]
    # (ctx, logits_new, y_new, logits_replay, y_replay, stored_logits_replay) -> loss
    loss: Callable[..., torch.Tensor]
    needs_logits: bool
    uses_lambda: bool = False  # the loss weighs current against replay by SD's λ_t (Eq. 5)


@dataclass(frozen=True)
class TrainingMode:
    """One ``training-mode``: everything the rest of fedal asks about a mode is declared here,
    so adding a mode means adding one entry to ``MODES``.

    - ``warm_start``: each AL round starts from the previous global model (False: from the same
      initial weights f^0, which the server holds).
    - ``schedule``: FL rounds × local epochs after the first AL round (None: the caller's retrain
      schedule; reasoning in the module docstring, "Schedules").
    - ``replay``: the CAL replay selection and loss (None: plain cross-entropy over the client's
      whole labeled set).
    - ``config_keys``: run-config keys only this mode reads (none yet: every mode reads the
      training keys all runs share).
    """

    name: str
    warm_start: bool
    schedule: Schedule | None
    replay: _ModeSpec | None = None
    config_keys: tuple[str, ...] = ()

    @property
    def needs_logits(self) -> bool:
        """The client stores z', the logits of the global model on its earlier labels."""
        return self.replay is not None and self.replay.needs_logits


_CAL_SCHEDULE = Schedule(fl_rounds=8, local_epochs=2)
MODES: Mapping[str, TrainingMode] = MappingProxyType({m.name: m for m in (
    TrainingMode("retrain", warm_start=False, schedule=None),
    TrainingMode("warm-start", warm_start=True, schedule=Schedule(fl_rounds=5, local_epochs=2)),
    TrainingMode("cal-er", True, _CAL_SCHEDULE, _ModeSpec(
        _select_uniform, lambda c, ln, yn, lr, yr, z: er_loss(ln, yn, lr, yr), False)),
    TrainingMode("cal-mir", True, _CAL_SCHEDULE, _ModeSpec(
        _select_mir, lambda c, ln, yn, lr, yr, z: er_loss(ln, yn, lr, yr), False)),
    TrainingMode("cal-der", True, _CAL_SCHEDULE, _ModeSpec(_select_uniform, lambda c, ln, yn, lr, yr, z: der_loss(
        ln, yn, lr, yr, z, alpha=c.hp.der_alpha, beta=c.hp.der_beta), True)),
    TrainingMode("cal-sd", True, _CAL_SCHEDULE, _ModeSpec(_select_uniform, lambda c, ln, yn, lr, yr, z: sd_loss(
        ln, yn, lr, yr, z, alpha=c.hp.sd_alpha, lam=c.lam), True, uses_lambda=True)),
    TrainingMode("cal-sds2", True, _CAL_SCHEDULE, _ModeSpec(_select_sds2, lambda c, ln, yn, lr, yr, z: sd_loss(
        ln, yn, lr, yr, z, alpha=c.hp.sd_alpha, lam=c.lam), True, uses_lambda=True)),
)})
TRAINING_MODES = tuple(MODES)
CAL_MODES = tuple(m.name for m in MODES.values() if m.replay is not None)
# FL rounds × local epochs after the first AL round, by mode (None: the retrain schedule)
SCHEDULES: Mapping[str, Schedule | None] = MappingProxyType({m.name: m.schedule for m in MODES.values()})


def training_mode(name: str) -> TrainingMode:
    _check_mode(name)
    return MODES[name]


def train_continual(
    model: nn.Module,
    new_x, new_y, old_x, old_y, old_logits=None,
    *,
    mode: str,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    lr: float = 1e-3,
    optimizer: str = "adam",
    hp: CALHyperParams | None = None,
    lambda_t: float | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on one client's labeled data with ``mode``; return statistics.

    Arguments (labeled data only, rows aligned; arrays or tensors):
    - ``new_x`` (n_new, *F), ``new_y`` (n_new,): D_t, the labels not yet trained on (n_new ≥ 0).
    - ``old_x`` (n_old, *F), ``old_y`` (n_old,): D_{1:t−1}, this client's earlier labels — the only
      replay source. ``old_logits`` (n_old, C): their stored z' (needed by cal-der/sd/sds2 when
      n_old > 0; ignored otherwise).
    - ``epochs`` passes over D_t (CAL modes) or over D_t ∪ D_{1:t−1} (retrain, warm-start) in
      batches of m = ``batch_size``; ``steps_per_epoch`` replaces the one-pass step count by a
      fixed number of m-sized batches (a client without new labels: module docstring, decision 1).
    - ``generator``: the only source of randomness (batch order, replay draws).
    - ``optimizer`` ∈ ``fedal.training.OPTIMIZERS`` (fresh state per call, as usual for a FedAvg client), ``lr``.
    - ``hp``: ``CALHyperParams`` (defaults if None). ``lambda_t`` overrides SD's Eq. 5 value.

    Labels must be integers in [0, C). Raises ValueError on inconsistent shapes, bad labels,
    missing logits, an unknown mode/optimizer, or a client without any label.

    Returns a dict: mode, epochs, steps, n_new, n_old, batch_size, lambda_t (SD modes, else None),
    hp (resolved, as a dict), loss_per_epoch (per epoch the sample-weighted mean batch loss, as
    ``local_sgd`` reports it; a CAL batch counts its m + m' points), samples_trained (forward+backward samples),
    selection_samples (extra samples forwarded to choose replay), replay_draws (replayed points,
    with repetition), replay_indices (sorted unique positions in ``old_x`` that were replayed),
    wall_s.
    """
    t0 = time.perf_counter()
    _check_mode(mode)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}; got {optimizer!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    _opt_int("epochs", epochs, 0)
    _opt_int("batch_size", batch_size, 1)
    _opt_int("steps_per_epoch", steps_per_epoch, 1)
    _real("lr", lr, lo=0.0, lo_open=True, hi=None, rng="(0, inf)")
    if epochs is None or batch_size is None:
        raise ValueError("epochs and batch_size are required")
    hp = (hp if hp is not None else CALHyperParams()).resolve(batch_size, lr)
    for name in ("mir_candidates", "sds2_candidates"):
        if getattr(hp, name) < hp.replay_size:
            raise ValueError(f"{name}={getattr(hp, name)} must be >= replay_size={hp.replay_size}")

    # ---- validate the labeled arrays ---------------------------------------------------------
    dtype = _dtype_of(model)
    new_x, new_y = _labeled("new", new_x, new_y, dtype)
    old_x, old_y = _labeled("old", old_x, old_y, dtype)
    if new_x.shape[1:] != old_x.shape[1:]:
        raise ValueError(f"new_x and old_x must share the feature shape; got "
                         f"{tuple(new_x.shape[1:])} and {tuple(old_x.shape[1:])}")
    n_new, n_old = new_x.shape[0], old_x.shape[0]
    if n_new + n_old == 0:
        raise ValueError("the client has no labeled data (new and old are both empty)")
    num_classes = _num_classes(model, new_x if n_new else old_x)
    _check_label_range("new", new_y, num_classes)
    _check_label_range("old", old_y, num_classes)
    spec = MODES[mode].replay
    if spec is not None and spec.needs_logits and n_old > 0:
        if old_logits is None:
            raise ValueError(f"mode {mode!r} needs old_logits (the stored z' of every old point)")
        old_logits = torch.as_tensor(old_logits)
        if old_logits.shape != (n_old, num_classes) or not torch.is_floating_point(old_logits):
            raise ValueError(f"old_logits must be a float array of shape ({n_old}, {num_classes}); "
                             f"got {tuple(old_logits.shape)} {old_logits.dtype}")
        if not torch.all(torch.isfinite(old_logits)):
            raise ValueError("old_logits must be finite")
        old_logits = old_logits.to(dtype)
    else:
        old_logits = None
    if lambda_t is not None:
        _real("lambda_t", lambda_t, lo=0.0, lo_open=False, hi=1.0, rng="[0, 1]")
    lam = float(lambda_t) if lambda_t is not None else sd_lambda(n_new, n_old)

    device = _device_of(model)
    stats: dict[str, Any] = dict(
        mode=mode, epochs=epochs, n_new=n_new, n_old=n_old, batch_size=batch_size,
        lambda_t=lam if spec is not None and spec.uses_lambda else None, hp=dataclasses.asdict(hp),
        optimizer=optimizer, lr=float(lr), selection_samples=0, replay_draws=0)
    replayed = torch.zeros(n_old, dtype=torch.bool)
    if spec is None:
        # retrain / warm-start: plain CE over the client's whole labeled set, new rows first
        # (decision in the module docstring: re-initialisation for retrain is the server's)
        x, y, term = torch.cat([new_x, old_x]), torch.cat([new_y, old_y]), None
    else:
        ctx = _Ctx(model, old_x, old_y, old_logits, hp, generator, lam)
        if steps_per_epoch is None and n_new == 0:
            steps_per_epoch = math.ceil(n_old / (batch_size + hp.replay_size))  # decision 1
        empty = torch.zeros(0, dtype=torch.long)

        def term(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
            """CAL's per-batch loss: draw the replay batch, one interleaved forward (ER's B)."""
            rep = spec.select(ctx, xb, yb) if n_old > 0 else empty
            replayed[rep] = True
            stats["replay_draws"] += rep.numel()
            xr, yr = old_x[rep].to(device), old_y[rep].to(device)
            zr = old_logits[rep].to(device) if old_logits is not None else None
            if zr is None and spec.needs_logits:   # empty history: no replay term
                zr = torch.zeros((0, num_classes), device=device)
            logits = model(torch.cat([xb, xr]))
            ln, lr_ = logits[: xb.shape[0]], logits[xb.shape[0]:]
            return spec.loss(ctx, ln, yb, lr_, yr, zr), logits.shape[0]

        x, y = new_x, new_y
    loop = local_sgd(model, x, y, epochs=epochs, batch_size=batch_size, generator=generator, lr=lr,
                     optimizer=optimizer, loss_term=term, steps_per_epoch=steps_per_epoch,
                     what=f"training-mode {mode}")
    if spec is not None:
        stats["selection_samples"] = ctx.selection_samples
    stats.update(steps=loop.steps, samples_trained=loop.samples, loss_per_epoch=loop.loss_per_epoch)
    stats["replay_indices"] = torch.nonzero(replayed).flatten().numpy()
    stats["wall_s"] = time.perf_counter() - t0
    return stats

