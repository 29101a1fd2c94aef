"""Diffusion coverage: fedal's own client batch rule (docs/method.md, "Diffusion coverage").

Why a new rule. Algorithm 1's greedy (``fedal.diffusion``) scores a client by its own uncertainty g_z
plus its impact v_z = Σ_{y≠z} [P^H]_zy g_y. After a pick o only g_o is zeroed, so a neighbour z of
o loses [P^H]_zo · g_o from its impact (about a tenth of g_o at δ = 0.1, H = 5) and keeps its own
g_z in full: the next pick is very often o's neighbour, and a round's V picks crowd into one region
of the client graph (measured in reports/: a quarter of the pairs among a round's picks share
their dominant class).

Coverage instead asks how much *residual* uncertainty a pick would resolve around itself. With
D = diag(P^H) and the kernel

    κ = D^{-1/2} P^H D^{-1/2}        (κ_zz = 1; κ_yz ∈ [0, 1]; symmetric)

the greedy is

    r ← g;   repeat V times:  o = argmax_z Σ_y κ_yz r_y  (eligible z, not picked yet)
                              r ← r ⊙ (1 − κ_{·o})

A pick removes its own residual and most of its close neighbours', so a second pick in the same
tight region gains little while an untouched region still holds all of its g. The batch maximises
F(S) = Σ_y g_y (1 − Π_{o∈S} (1 − κ_yo)), a weighted coverage function: monotone and submodular,
and each greedy gain above is exactly F's marginal gain, so the greedy is within 1 − 1/e of the
best batch.

Which κ. The first sketch of this rule divided each column of P^H by its diagonal entry. That κ is
not symmetric and can exceed 1 (a low-degree y next to a hub z keeps more of z's heat than z
does), so it must be clipped, and then the matrix-vector gain Σ_y κ_yz r_y is no longer F's
marginal gain. For a symmetric P (the unnormalised and the symmetric Laplacian) and an even H,
P^H = (P^{H/2})ᵀ P^{H/2}, so κ_yz above is the cosine between the heat profiles P^{H/2} e_y and
P^{H/2} e_z: at most 1 by Cauchy–Schwarz, symmetric (y covers z as much as z covers y), and the
gains are exact without clipping. Hence H must be even and the Laplacian symmetric.

The horizon H (``coverage-steps``, 20 by default) is longer than Algorithm 1's 5 so that κ reaches
past direct neighbours: at H = 5 and δ = 0.1 the heat barely leaves a node's first ring.

Cost: no dense matrix. The gains (H sparse mat-vecs on D^{-1/2} r) and the column κ_{·o} (H more)
per pick, diag(P^H) once per round (``fedal.diffusion.diag_of_power``): 2·V·H mat-vecs a round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedal.diffusion import TIE_RTOL, apply_power, diag_of_power


@dataclass(frozen=True)
class CoverageSelection:
    """A coverage batch: ``order`` (node indices in pick order) and ``gains`` (the residual
    uncertainty each pick covered when it was made: F's marginal gains, non-increasing)."""

    order: np.ndarray
    gains: np.ndarray

    def __len__(self) -> int:
        return len(self.order)


KERNELS = ("cosine", "column")


@dataclass(frozen=True)
class CoverageKernel:
    """κ = D^{-1/2} P^H D^{-1/2}, never formed: ``gain(r)`` = κ r and ``column(o)`` = κ_{·o}.

    ``kind = "column"`` is the first sketch, κ = P^H D^{-1} clipped to [0, 1], kept only to
    compare the two (``simulations/coverage_variants.py``): its gains are not F's marginal gains."""

    P: sp.csr_matrix
    steps: int
    inv_sqrt_diag: np.ndarray
    kind: str = "cosine"

    @classmethod
    def of(cls, P: sp.spmatrix, steps: int, kind: str = "cosine") -> "CoverageKernel":
        if kind not in KERNELS:
            raise ValueError(f"kind = {kind!r} is not valid; valid values: {', '.join(KERNELS)}")
        if steps < 2 or steps % 2:
            raise ValueError(f"coverage-steps = {steps} is invalid; valid: an even integer >= 2 (κ is a "
                             "cosine of heat profiles P^(H/2) e_z only for even H)")
        P = sp.csr_matrix(P, dtype=np.float64)
        asym = abs(P - P.T)
        if asym.nnz and asym.max() > 1e-12:
            raise ValueError("diffusion coverage needs a symmetric P (laplacian = unnormalized or sym); "
                             "the random-walk Laplacian gives an asymmetric one")
        diag = diag_of_power(P, steps)
        if np.any(diag <= 0):
            # P^H = (P^{H/2})ᵀ P^{H/2}: its diagonal holds squared norms of columns of an
            # invertible-or-not but never zero-column P^{H/2} (P_zz > 0 in the stable δ range)
            raise ValueError("diag(P^H) must be positive; is δ in the stable range?")
        return cls(P, steps, 1.0 / np.sqrt(diag), kind)

    @property
    def n(self) -> int:
        return self.P.shape[0]

    def gain(self, r: np.ndarray) -> np.ndarray:
        """Σ_y κ_yz r_y for every z."""
        if self.kind == "column":  # Σ_y [P^H]_yz r_y / [P^H]_zz (P symmetric), unclipped
            return self.inv_sqrt_diag**2 * apply_power(self.P, r, self.steps)
        return self.inv_sqrt_diag * apply_power(self.P, self.inv_sqrt_diag * r, self.steps)

    def column(self, o: int) -> np.ndarray:
        """κ_{·o}, in [0, 1] (for "cosine" clipped against rounding only; κ_oo = 1 exactly)."""
        e = np.zeros(self.n)
        e[o] = 1.0
        heat = apply_power(self.P, e, self.steps)
        scale = self.inv_sqrt_diag * self.inv_sqrt_diag[o] if self.kind == "cosine" else self.inv_sqrt_diag[o] ** 2
        col = np.clip(heat * scale, 0.0, 1.0)
        col[o] = 1.0
        return col

    def dense(self) -> np.ndarray:
        """The whole κ (n × n): tests and diagnostics on small graphs only."""
        return np.stack([self.column(o) for o in range(self.n)], axis=1)


def _argmax(values: np.ndarray, available: np.ndarray) -> int:
    """Maximiser among available nodes; ties within TIE_RTOL go to the lowest index (as Algorithm 1's)."""
    cand = np.flatnonzero(available)
    vals = values[cand]
    best = vals.max()
    return int(cand[np.argmax(vals >= best - TIE_RTOL * max(1.0, abs(best)))])


def coverage_greedy(kernel: CoverageKernel, g, n: int, eligible: np.ndarray | None = None) -> CoverageSelection:
    """The greedy of the module docstring: ``n`` picks among ``eligible`` nodes (all if None).

    Ineligible nodes still hold residual uncertainty that eligible neighbours cover (as they still
    diffuse in Algorithm 1); they are only never picked."""
    r = np.asarray(g, dtype=np.float64).copy()
    if r.ndim != 1 or r.shape[0] != kernel.n:
        raise ValueError(f"g must have one value per graph node ({kernel.n}); got shape {r.shape}")
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError("g (mean entropies) must be finite and non-negative")
    available = np.ones(len(r), bool) if eligible is None else np.asarray(eligible, bool).copy()
    if not 0 <= n <= int(available.sum()):
        raise ValueError(f"n = {n} is invalid; valid: 0..{int(available.sum())} (the eligible nodes)")
    order = np.empty(n, np.int64)
    gains = np.empty(n)
    for i in range(n):
        gain = kernel.gain(r)
        o = _argmax(gain, available)
        order[i], gains[i] = o, gain[o]
        available[o] = False
        r *= 1.0 - kernel.column(o)
    return CoverageSelection(order, gains)


def coverage_value(kernel: CoverageKernel, g, picks) -> float:
    """F(S) = Σ_y g_y (1 − Π_{o∈S}(1 − κ_yo)): what a batch covers (tests and diagnostics)."""
    g = np.asarray(g, dtype=np.float64)
    r = g.copy()
    for o in picks:
        r *= 1.0 - kernel.column(int(o))
    return float(g.sum() - r.sum())
