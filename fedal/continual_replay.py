"""Replay selection for the continual-AL modes (seeds/002 Alg. 2, Eq. 6; docs/method.md, "Baselines
and training modes"): MIR's interference scores and SDS2's submodular greedy over a candidate set,
as pure tensor functions. Which candidates are drawn, and when, is the training loop's business
(``fedal.continual``); the readings where the paper is ambiguous are its numbered decisions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def _stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties → lower index."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def mir_scores(model: nn.Module, x_cur: torch.Tensor, y_cur: torch.Tensor, x_cand: torch.Tensor,
               y_cand: torch.Tensor, *, virtual_lr: float) -> torch.Tensor:
    """MIR interference scores of the candidates (decision 3 of the module docstring):

        θ_v = θ − η ∇_θ L_c(θ; B_current),   s_MIR(x) = ℓ(y, f(x; θ_v)) − ℓ(y, f(x; θ)).

    The virtual step is evaluated with ``torch.func.functional_call``: the model's parameters,
    their ``.grad`` and its buffers are left untouched. Forward passes run in the model's current
    train/eval mode (our models have neither dropout nor batch norm).
    """
    if x_cur.shape[0] == 0:
        raise ValueError("mir_scores needs a non-empty current batch for the virtual step")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x_cur), y_cur)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    virtual = {n: (p - virtual_lr * g if g is not None else p).detach()
               for (n, p), g in zip(named, grads)}
    with torch.no_grad():
        before = F.cross_entropy(model(x_cand), y_cand, reduction="none")
        after = F.cross_entropy(functional_call(model, virtual, (x_cand,)), y_cand,
                                reduction="none")
    return after - before


def mir_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k candidates with the largest s_MIR (ties → lower index)."""
    return _stable_top(scores, min(int(k), scores.shape[0]))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ p log p of softmax(logits), natural log (= ``fedal.uncertainty.entropy``)."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def sds2_similarity(embeddings: torch.Tensor, sigma: float) -> torch.Tensor:
    """w_ij = exp(−‖z_i − z_j‖² / 2σ²) (Eq. 6), in float64, exact 1 on the diagonal."""
    z = embeddings.detach().to(torch.float64)
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.exp(-(d ** 2) / (2.0 * sigma ** 2))


def sds2_objective(similarity: torch.Tensor, uncertainty: torch.Tensor, subset, *,
                   lam: float) -> float:
    """Eq. 6: G(S) = Σ_{i∈A} max_{j∈S} w_ij + λ log(1 + Σ_{i∈S} h(x_i)); G(∅) = 0."""
    idx = torch.as_tensor(list(subset), dtype=torch.long)
    if idx.numel() == 0:
        return 0.0
    fl = similarity[:, idx].max(dim=1).values.sum()
    h = uncertainty.to(torch.float64)[idx].sum()
    return float(fl + lam * torch.log1p(h))


def sds2_select(embeddings: torch.Tensor, uncertainty: torch.Tensor, k: int, *, sigma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy maximisation of Eq. 6 over the ground set A = the given candidates.

    Returns (indices into A in the order picked, the marginal gain of each pick). Each step adds
    argmax_j G(S ∪ {j}) − G(S) among unpicked j (ties → lower index); G is monotone submodular for
    h ≥ 0, so greedy is within 1 − 1/e of the optimum. Picks are distinct by construction.
    """
    n = embeddings.shape[0]
    if embeddings.dim() != 2 or uncertainty.shape != (n,):
        raise ValueError(f"embeddings must be (n, d) and uncertainty (n,); got "
                         f"{tuple(embeddings.shape)} and {tuple(uncertainty.shape)}")
    h = uncertainty.detach().to(torch.float64)
    if torch.any(h < 0) or not torch.all(torch.isfinite(h)):
        raise ValueError("uncertainty must be finite and >= 0 (Eq. 6's concave-over-modular term)")
    k = min(int(k), n)
    w = sds2_similarity(embeddings, sigma)
    cover = torch.zeros(n, dtype=torch.float64)        # max_{j∈S} w_ij per i ∈ A; 0 for S = ∅
    h_sum = torch.zeros((), dtype=torch.float64)
    picked = torch.zeros(n, dtype=torch.bool)
    order, gains = [], []
    for _ in range(k):
        fl_gain = torch.clamp(w - cover[:, None], min=0.0).sum(dim=0)
        unc_gain = lam * (torch.log1p(h_sum + h) - torch.log1p(h_sum))
        gain = (fl_gain + unc_gain).masked_fill(picked, -math.inf)
        j = int(torch.argmax(gain))                     # first maximum → lower index on ties
        order.append(j)
        gains.append(float(gain[j]))
        picked[j] = True
        cover = torch.maximum(cover, w[:, j])
        h_sum = h_sum + h[j]
    return torch.as_tensor(order, dtype=torch.long), torch.as_tensor(gains, dtype=torch.float64)
