"""Adam whose square root is the correctly rounded one, for ``numerics = portable``.

PyTorch's CPU ``sqrt`` on float32 goes through MKL's vector math library, which is accurate to
about one unit in the last place but not correctly rounded, and which of the nearby floats it
returns depends on the code path MKL takes on a CPU: under QEMU's emulation of an Intel Haswell,
one element in six of Adam's denominator came out another float than on this project's AMD EPYC
machine, and a probe's pseudo-updates drifted from round 1 on. Taking the root in float64 and
rounding to float32 gives the correctly rounded float32 root on every CPU (a float64 root off by
an ulp is still far nearer to it than to any rounding boundary of float32), and the rest of
Adam's step is +, ×, / and fused multiply-adds, which IEEE 754 fixes to the bit.

The step is ``torch.optim.Adam``'s (Kingma & Ba, 2015; no weight decay, no AMSGrad): the same
moments, bias corrections and update, so it trains the same model up to those last bits.
``fedal.training.make_optimizer`` uses it while the process runs portable numerics
(``fedal/numerics.py``).
"""

from __future__ import annotations

import math

import torch


class PortableAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"PortableAdam: lr = {lr} and eps = {eps} must be > 0, betas = {betas} in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                root = v.double().sqrt_().to(v.dtype)  # the correctly rounded root (module docstring)
                denom = root.div_(math.sqrt(1 - beta2 ** t)).add_(group["eps"])
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
        return loss
