"""The data criteria, accumulated over calibration batches (DESIGN §4).

Masks m_u (ones, one per unit and sample) multiply channel c of unit u at every site
(`sites.py`). With L_n the loss of sample n:

- Group Fisher (Liu et al., ICML 2021):
      g_{n,u} = ∂L_n/∂m_{n,u}
              = Σ_{sites s of u} Σ_{c ∈ u at s} Σ_{h,w} x_{n,c,h,w} · ∂L_n/∂x_{n,c,h,w}
      F_u = Σ_n g_{n,u}²
  The coupled copies of a unit share one mask column, so autograd adds their contributions
  *before* the square, as the paper requires.
- Taylor (first order), per batch b with the batch-mean loss L_b = (1/N) Σ_n L_n:
      T_u = mean_b ( (1/N) Σ_n g_{n,u} )²
- HRank (Lin et al., CVPR 2020): R_u = mean over samples and over the unit's channels at its
  sites of rank(X_{n,c}), the matrix rank of the H×W map the sink sees. Maps with one spatial
  axis count as rank 1 if non-zero (likewise single features, e.g. after Flatten).

Samples are independent (the module runs in eval mode), so the gradient of the summed loss
with respect to the [N, K] mask is exactly the per-sample g_{n,u}.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from calibrate.sites import Site
from onnxprune.config import Criterion


class BatchAxisMismatch(RuntimeError):
    """A site tensor's first axis is not the batch: calibrate one sample at a time."""


@dataclass
class Totals:
    """Sums over every batch seen (by this process); all-reduced across processes."""
    k: int
    fisher: torch.Tensor = field(init=False)
    taylor: torch.Tensor = field(init=False)
    rank_sum: torch.Tensor = field(init=False)
    rank_count: torch.Tensor = field(init=False)
    batches: int = 0
    samples: int = 0

    def __post_init__(self):
        for name in ("fisher", "taylor", "rank_sum", "rank_count"):
            setattr(self, name, torch.zeros(self.k, dtype=torch.float64))

    def add_gradients(self, g: torch.Tensor) -> None:
        """g: per-sample mask gradients of one batch, [N, K]."""
        g = g.detach().double().cpu()
        self.fisher += (g * g).sum(0)
        self.taylor += g.mean(0) ** 2
        self.batches += 1
        self.samples += g.shape[0]

    def add_ranks(self, sums: torch.Tensor, counts: torch.Tensor, n: int) -> None:
        self.rank_sum += sums.double().cpu()
        self.rank_count += counts.double().cpu()
        self.batches += 1
        self.samples += n

    def as_vector(self) -> torch.Tensor:
        counters = torch.tensor([self.batches, self.samples], dtype=torch.float64)
        return torch.cat([self.fisher, self.taylor, self.rank_sum, self.rank_count, counters])

    def load_vector(self, v: torch.Tensor) -> None:
        k = self.k
        self.fisher, self.taylor = v[:k].clone(), v[k:2 * k].clone()
        self.rank_sum, self.rank_count = v[2 * k:3 * k].clone(), v[3 * k:4 * k].clone()
        self.batches, self.samples = int(v[4 * k].item()), int(v[4 * k + 1].item())

    def scores(self, criterion: Criterion) -> np.ndarray:
        if criterion is Criterion.FISHER:
            return self.fisher.numpy()
        if criterion is Criterion.TAYLOR:
            return (self.taylor / max(self.batches, 1)).numpy()
        if criterion is Criterion.HRANK:
            return (self.rank_sum / self.rank_count.clamp_min(1)).numpy()
        raise ValueError(f"{criterion.value} is not a data criterion")


def _columns(sites: list[Site], units: np.ndarray) -> list[torch.Tensor]:
    """Per site: the mask column of every channel; unscored channels get column K (ones)."""
    position = {int(u): i for i, u in enumerate(units.tolist())}
    k = len(units)
    return [torch.tensor([position.get(int(u), k) for u in s.units.tolist()], dtype=torch.long)
            for s in sites]


def _broadcast_shape(x: torch.Tensor, axis: int, n: int) -> list[int]:
    if axis == 0:
        if n != 1:
            raise BatchAxisMismatch("a site's channel axis is its first axis")
        return [x.shape[0]] + [1] * (x.ndim - 1)
    if x.shape[0] != n:
        raise BatchAxisMismatch(f"a site tensor has {x.shape[0]} rows for a batch of {n}")
    shape = [n] + [1] * (x.ndim - 1)
    shape[axis] = x.shape[axis]
    return shape


class SiteMasks:
    """Attach masks (Fisher, Taylor) or rank recorders (HRank) at every site of a module."""

    def __init__(self, sites: list[Site], units: np.ndarray, device: torch.device):
        self.sites = sites
        self.k = len(units)
        self.columns = [c.to(device) for c in _columns(sites, units)]
        self.device = device

    def attach_masks(self, module, n: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Ones [n, K] that require grad; every site multiplies its channels by its column,
        times `keep` (0 for units already removed, as the GFP schedule does)."""
        mask = torch.ones(n, self.k, device=self.device, requires_grad=True)
        factor = mask if keep is None else mask * keep.to(self.device)
        full = torch.cat([factor, torch.ones(n, 1, device=self.device)], dim=1)
        for site, cols in zip(self.sites, self.columns):
            module.input_transforms[(site.node, site.slot)] = _masker(full, cols, site.axis, n)
        return mask

    def attach_rank_recorders(self, module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of ranks, channel-sample count) per unit, filled as the module runs."""
        sums = torch.zeros(self.k + 1, device=self.device)
        counts = torch.zeros(self.k + 1, device=self.device)
        for site, cols in zip(self.sites, self.columns):
            module.input_transforms[(site.node, site.slot)] = _recorder(
                sums, counts, cols, site.axis, n)
        return sums[:self.k], counts[:self.k]

    def detach(self, module) -> None:
        for site in self.sites:
            module.input_transforms.pop((site.node, site.slot), None)


def _masker(full: torch.Tensor, cols: torch.Tensor, axis: int, n: int):
    def apply(x: torch.Tensor) -> torch.Tensor:
        shape = _broadcast_shape(x, axis, n)
        factor = full[0, cols] if axis == 0 else full[:, cols]
        return x * factor.reshape(shape).to(x.dtype)
    return apply


def channel_ranks(x: torch.Tensor, axis: int) -> torch.Tensor:
    """[N, C] matrix ranks of every channel's map (module docstring); axis 0 means N = 1."""
    x = x.detach().float()
    x = x.unsqueeze(0) if axis == 0 else x.movedim(axis, 1)
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    if len(spatial) < 2:
        return (x.reshape(n, c, -1).abs().amax(dim=2) > 0).float()
    maps = x.reshape(n, c, -1, spatial[-1])
    return torch.linalg.matrix_rank(maps).float()


def _recorder(sums: torch.Tensor, counts: torch.Tensor, cols: torch.Tensor, axis: int, n: int):
    def record(x: torch.Tensor) -> torch.Tensor:
        _broadcast_shape(x, axis, n)  # the same batch-axis check as the masks
        ranks = channel_ranks(x, axis)
        sums.index_add_(0, cols, ranks.sum(0))
        counts.index_add_(0, cols, torch.full((len(cols),), float(ranks.shape[0]),
                                              device=counts.device))
        return x
    return record
