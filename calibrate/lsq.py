"""Ridge least squares over streamed data, for the refit of sink layers (calibrate/refit.py).

A sink layer computes y = Θᵀ·[x; 1] per row (a Conv row is one output position, its x the
im2col patch of the kept input channels of one group; a Gemm / MatMul row is one sample or
token). Given rows (x'_r, y_r) — x' the *pruned* model's input, y the *original* model's
output of that layer — the refit solves, per group g,

    Θ_g(λ) = argmin ‖[X' 1]·Θ − Y‖² + λ·s·‖W‖²   =  (A + λ·s·D)⁻¹ B,
    A = Σ_r [x'_r; 1][x'_r; 1]ᵀ,  B = Σ_r [x'_r; 1] y_rᵀ,  D = diag(1, …, 1, 0)  (bias free),

with s = mean diag of A over the weights, so that λ is relative and one grid suits every layer
(He et al., "Channel Pruning", ICCV 2017; ThiNet, ICCV 2017). Only A, B and Σ‖y‖² are kept:
memory is O(groups · (k+1)²) whatever the number of samples, never the activations.

λ is chosen on held-out rows by their exact squared error, from their own sums alone:
    err(Θ) = Σ_g tr(Θ_gᵀ A_v Θ_g) − 2 tr(Θ_gᵀ B_v) + Σ‖y_v‖².
The layer's current weights Θ₀ are a candidate too: a refit that does not lower the held-out
error is not taken. The chosen λ is then refit on all rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LAMBDAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative ridge strengths tried


class Normal:
    """Streaming sums A [G, k+1, k+1], B [G, k+1, m] and Σ‖y‖² (float64)."""

    def __init__(self, groups: int, k: int, m: int, bias: bool):
        width = k + int(bias)
        self.bias = bias
        self.a = torch.zeros(groups, width, width, dtype=torch.float64)
        self.b = torch.zeros(groups, width, m, dtype=torch.float64)
        self.yy = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x [G, P, k], y [G, P, m]: P more rows of every group."""
        x, y = x.double(), y.double()
        if self.bias:
            x = torch.cat([x, x.new_ones(*x.shape[:2], 1)], dim=2)
        self.a += x.transpose(1, 2) @ x
        self.b += x.transpose(1, 2) @ y
        self.yy += float((y * y).sum())
        self.rows += x.shape[1]

    def __iadd__(self, other: Normal) -> Normal:
        self.a += other.a
        self.b += other.b
        self.yy += other.yy
        self.rows += other.rows
        return self

    @property
    def nbytes(self) -> int:
        return (self.a.numel() + self.b.numel()) * 8

    def error(self, theta: torch.Tensor) -> float:
        """Σ over these rows of ‖[x 1]·Θ − y‖² (exact, from the sums)."""
        quad = (theta * (self.a @ theta)).sum()
        return float(quad - 2 * (theta * self.b).sum()) + self.yy

    def solve(self, lam: float) -> torch.Tensor:
        """Θ(λ) [G, k+1, m], λ relative to the mean diagonal of A over the weights."""
        k = self.a.shape[1] - int(self.bias)
        diag = torch.diagonal(self.a, dim1=1, dim2=2)[:, :k]
        scale = diag.mean(dim=1).clamp_min(1e-12)  # per group
        penalty = torch.zeros_like(self.a)
        idx = torch.arange(k)
        penalty[:, idx, idx] = (lam * scale)[:, None]
        return torch.linalg.solve(self.a + penalty, self.b)


@dataclass
class Fit:
    """The outcome for one layer: Θ to write (None: keep the current weights)."""
    theta: torch.Tensor | None
    lam: float | None
    error_before: float    # held-out squared error of the current weights / Σ‖y‖²
    error_after: float     # held-out squared error of what is written / Σ‖y‖²


def choose(train: Normal, held: Normal, current: torch.Tensor) -> Fit:
    """The λ of LAMBDAS with the least held-out error, refit on all rows; or the current
    weights `current` [G, k+1, m] when no λ beats them on the held-out rows."""
    norm = max(held.yy, 1e-30)
    before = held.error(current) / norm
    best, best_lam = before, None
    for lam in LAMBDAS:
        try:
            err = held.error(train.solve(lam)) / norm
        except torch.linalg.LinAlgError:  # singular even with the ridge: try a larger λ
            continue
        if err < best:
            best, best_lam = err, lam
    if best_lam is None:
        return Fit(None, None, before, before)
    train += held
    return Fit(train.solve(best_lam), best_lam, before, best)
