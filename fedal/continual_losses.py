"""The continual-AL losses (seeds/002 Eq. 1–5; docs/method.md, "Baselines and training modes"):
pure functions, logits in, scalar tensor out. An empty term contributes 0 and keeps the autograd
graph, so a client without new labels (``fedal.continual``, decision 1) trains on replay alone.
The readings where the paper is ambiguous are the numbered decisions of ``fedal.continual``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, y)


def current_loss(logits_new: torch.Tensor, y_new: torch.Tensor) -> torch.Tensor:
    """Eq. 1: L_c = E_{(x,y)∼B_current} ℓ(y, f(x; θ)), ℓ = cross-entropy."""
    return _ce(logits_new, y_new)


def er_loss(logits_new, y_new, logits_replay, y_replay) -> torch.Tensor:
    """CAL-ER (and CAL-MIR's update): B_current and B_replay are interleaved into one minibatch B
    of size m + m' and the gradient is computed on B:

        L_ER = (1 / (m + m')) Σ_{(x,y)∈B} ℓ(y, f(x; θ)) = (m·L_c + m'·L_r) / (m + m'),

    which is (L_c + L_r)/2 when m = m', and L_c when the replay batch is empty.
    """
    logits = torch.cat([logits_new, logits_replay])
    y = torch.cat([y_new, y_replay])
    if logits.shape[0] == 0:
        raise ValueError("er_loss needs at least one current or replay point")
    return F.cross_entropy(logits, y)


def der_loss(logits_new, y_new, logits_replay, y_replay, stored_logits, *, alpha: float,
             beta: float) -> torch.Tensor:
    """CAL-DER, Eq. 2 with the MSE reading of its distillation term (module decision 4):

        L_DER = L_c + E_{(x',y',z')∼B_replay}[ α (1/C)‖g(x'; θ) − z'‖²₂ + β ℓ(y', f(x'; θ)) ],

    g = pre-softmax logits, z' = the logits stored for x', C = number of classes; the expectation
    averages over the replay batch. The distillation term is exactly 0 when g(x'; θ) = z'.
    """
    if logits_replay.shape != stored_logits.shape:
        raise ValueError(f"stored_logits shape {tuple(stored_logits.shape)} != replay logits "
                         f"shape {tuple(logits_replay.shape)}")
    if logits_replay.shape[0]:
        distill = F.mse_loss(logits_replay, stored_logits)   # mean over batch and classes
    else:
        distill = logits_replay.sum() * 0.0
    return _ce(logits_new, y_new) + alpha * distill + beta * _ce(logits_replay, y_replay)


def sd_lambda(n_new: int, n_old: int) -> float:
    """Eq. 5: λ_t = 1 / (1 + |D_{1:t−1}| / |D_t|), written as |D_t| / (|D_t| + |D_{1:t−1}|) so
    that it is defined for |D_t| = 0 (λ_t = 0: a client with nothing new is purely stable).
    Empty history → 1 (pure plasticity: SD reduces to L_c)."""
    if n_new < 0 or n_old < 0 or n_new + n_old == 0:
        raise ValueError(f"sd_lambda needs counts >= 0 with a positive sum; got |D_t|={n_new}, "
                         f"|D_1:t-1|={n_old}")
    return n_new / (n_new + n_old)


def sd_replay_loss(logits_replay, y_replay, stored_logits, *, alpha: float) -> torch.Tensor:
    """Eq. 3: L_replay = E_{(x',y',z')∼B_replay}[ α D_KL(softmax(z') ‖ f(x'; θ))
    + (1 − α) ℓ(y', f(x'; θ)) ], KL averaged over the batch (``batchmean``)."""
    if logits_replay.shape != stored_logits.shape:
        raise ValueError(f"stored_logits shape {tuple(stored_logits.shape)} != replay logits "
                         f"shape {tuple(logits_replay.shape)}")
    if logits_replay.shape[0] == 0:
        return logits_replay.sum() * 0.0
    kl = F.kl_div(F.log_softmax(logits_replay, dim=1), F.log_softmax(stored_logits, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * kl + (1.0 - alpha) * F.cross_entropy(logits_replay, y_replay)


def sd_loss(logits_new, y_new, logits_replay, y_replay, stored_logits, *, alpha: float,
            lam: float) -> torch.Tensor:
    """CAL-SD (and CAL-SDS2), Eq. 4: L_SD = λ_t L_c + (1 − λ_t) L_replay (λ_t from ``sd_lambda``).
    An empty term contributes 0, so with λ_t = 1 this is exactly L_c."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1]; got {lam}")
    return lam * _ce(logits_new, y_new) + (1.0 - lam) * sd_replay_loss(
        logits_replay, y_replay, stored_logits, alpha=alpha)
