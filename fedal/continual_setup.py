"""What a continual-mode local update (``fedal.continual.train_continual``) is set up with: the
CAL hyperparameters (the paper's appendix A.2 defaults), the FL-round schedules, and the checks
that every array it trains on is labeled (the module docstring of ``fedal.continual`` gives the
reasons and the decisions)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CALHyperParams:
    """CAL hyperparameters, defaults from the paper's appendix A.2.

    The defaults are the values the paper uses on most of its six datasets:
    - ``replay_size`` m' ∈ {m, 2m}; ``None`` → m, the value of the Adam-trained setups (MedMNIST,
      Amazon, COLA); our default optimiser is Adam.
    - ``der_alpha`` = 0.1, ``der_beta`` = 1 (4 of 6 datasets).
    - ``sd_alpha`` = 0.25 (FMNIST, CIFAR-10; SDS2 also uses 0.25 on 4 of 6) — used by SD and SDS2.
    - ``mir_candidates`` / ``sds2_candidates`` C: "not tuned"; the paper's values are ≈ 2m'
      (256 for m' = 128, 50 for m' = 25, 100 for m' = 40); ``None`` → 2m'.
    - ``mir_virtual_lr`` η: "the learning rate"; ``None`` → the training learning rate.
    - ``sds2_sigma`` = 0.1, ``sds2_lambda`` = 1 (4 of 6 datasets).
    """

    replay_size: int | None = None
    der_alpha: float = 0.1
    der_beta: float = 1.0
    sd_alpha: float = 0.25
    mir_candidates: int | None = None
    mir_virtual_lr: float | None = None
    sds2_candidates: int | None = None
    sds2_sigma: float = 0.1
    sds2_lambda: float = 1.0

    def __post_init__(self) -> None:
        _opt_int("replay_size", self.replay_size, 1)
        _opt_int("mir_candidates", self.mir_candidates, 1)
        _opt_int("sds2_candidates", self.sds2_candidates, 1)
        _real("der_alpha", self.der_alpha, lo=0.0, lo_open=False, hi=None, rng="[0, inf)")
        _real("der_beta", self.der_beta, lo=0.0, lo_open=False, hi=None, rng="[0, inf)")
        _real("sd_alpha", self.sd_alpha, lo=0.0, lo_open=False, hi=1.0, rng="[0, 1]")
        _real("sds2_sigma", self.sds2_sigma, lo=0.0, lo_open=True, hi=None, rng="(0, inf)")
        _real("sds2_lambda", self.sds2_lambda, lo=0.0, lo_open=False, hi=None, rng="[0, inf)")
        if self.mir_virtual_lr is not None:
            _real("mir_virtual_lr", self.mir_virtual_lr, lo=0.0, lo_open=True, hi=None,
                  rng="(0, inf)")
        for name in ("mir_candidates", "sds2_candidates"):
            c = getattr(self, name)
            if c is not None and self.replay_size is not None and c < self.replay_size:
                raise ValueError(
                    f"{name} must be >= replay_size (the m' replayed points are chosen among the C "
                    f"candidates); got {name}={c}, replay_size={self.replay_size}")

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "CALHyperParams":
        """Build from a mapping with kebab-case or snake_case keys (``"der-alpha"``); unknown keys
        raise ValueError listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, val in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown CAL hyperparameter {key!r}; known: {sorted(known)}")
            kwargs[name] = val
        return cls(**kwargs)

    def resolve(self, batch_size: int, lr: float) -> "CALHyperParams":
        """Fill the ``None`` defaults that depend on the batch size m and learning rate."""
        m_prime = self.replay_size if self.replay_size is not None else int(batch_size)

        def pick(value, default):
            return value if value is not None else default

        return dataclasses.replace(
            self,
            replay_size=m_prime,
            mir_candidates=pick(self.mir_candidates, 2 * m_prime),
            sds2_candidates=pick(self.sds2_candidates, 2 * m_prime),
            mir_virtual_lr=pick(self.mir_virtual_lr, float(lr)),
        )


def _opt_int(name: str, v, lo: int) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo} or None; got {v!r}")


def _real(name: str, v, *, lo: float, lo_open: bool, hi: float | None, rng: str) -> None:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
    ok = ok and math.isfinite(float(v))
    if ok:
        x = float(v)
        ok = (x > lo if lo_open else x >= lo) and (hi is None or x <= hi)
    if not ok:
        raise ValueError(f"{name} must be a real number in {rng}; got {v!r}")


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """FL rounds per AL round and local epochs per FL round."""

    fl_rounds: int
    local_epochs: int

    def __post_init__(self) -> None:
        _opt_int("fl_rounds", self.fl_rounds, 1)
        _opt_int("local_epochs", self.local_epochs, 0)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and torch.is_floating_point(p) else torch.float32


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    c = getattr(model, "num_classes", None)
    if c is not None:
        return int(c)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(x[:1].to(_device_of(model))).shape[1])
    finally:
        model.train(was_training)


def _labeled(name: str, x, y, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.dim() < 2:
        raise ValueError(f"{name}_x must have shape (n, *features); got {tuple(x.shape)}")
    if x.dtype != torch.uint8:           # uint8 pixels stay bytes (PixelInput normalises them)
        x = x.to(dtype)                  # numpy float64 / integer features → the model's dtype
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must have shape ({x.shape[0]},) to label every row of "
                         f"{name}_x; got {tuple(y.shape)}")
    if y.dtype == torch.bool or torch.is_floating_point(y) or torch.is_complex(y):
        raise ValueError(f"{name}_y must hold integer class labels; got dtype {y.dtype}")
    return x, y.to(torch.long)


def _check_label_range(name: str, y: torch.Tensor, num_classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name}_y must hold labels in [0, {num_classes}) — an unlabeled "
                         f"sentinel such as -1 is not a label; got range "
                         f"[{int(y.min())}, {int(y.max())}]")
