"""Importance of each channel unit. Data-free criteria live here (numpy only):

- l1:  I_u = Σ_{producers p of u} Σ |W_p[i_u, ...]|      (norm of the unit's producer slices)
- l2:  I_u = Σ_{producers p of u} sqrt(Σ W_p[i_u, ...]²)
- lamp:  layer-adaptive magnitude (Lee et al., ICLR 2021, "LAMP"), per channel unit: with the
         units of a layer group sorted by their l2 score, n_1 <= n_2 <= ... <= n_k,
         I_(i) = n_i² / Σ_{j >= i} n_j². Scores lie in (0, 1], the strongest unit of every
         group scores 1, so groups compare on how a unit stands within its own layer rather
         than on raw norms, which differ across layers by orders of magnitude.
- random: I_u ~ U(0, 1), seeded — the baseline every benchmark includes.

Producers are the initializer axes a rule declared with Role.PRODUCER (Conv W rows and bias,
Gemm output columns and bias). Data criteria (fisher, hrank, taylor) are computed by the
`calibrate` package in PyTorch and imported only when asked for.
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.context import Dequantized, dequantized_constants
from onnxprune.analysis.flow import ParamKey, Role
from onnxprune.analysis.units import Channels
from onnxprune.config import Criterion
from onnxprune.errors import UserError
from onnxprune.model import external


def _slice_norms(value: np.ndarray, axis: int, criterion: Criterion) -> np.ndarray:
    """L1 or L2 norm of every slice along `axis`, in blocks of about 64 MB: a weight as large
    as the model must not get a same-sized temporary (external.py's memory goal)."""
    moved = np.moveaxis(value, axis, 0)
    n = moved.shape[0]
    step = max(1, (64 << 20) // max(1, moved[0].nbytes))
    norms = np.empty(n)
    for start in range(0, n, step):
        block = moved[start:start + step].reshape(min(step, n - start), -1)
        if criterion is Criterion.L1:
            norms[start:start + step] = np.abs(block).sum(axis=1, dtype=np.float64)
        else:
            norms[start:start + step] = np.sqrt(np.square(block, dtype=np.float64).sum(axis=1))
    return norms


def magnitude_scores(channels: Channels, criterion: Criterion) -> np.ndarray:
    """Norms of the producer slices; a weight stored quantized (QDQ) is measured dequantized,
    and its scale / zero point, which slice with it, are not weights of their own."""
    inits = {i.name: i for i in channels.model.graph.initializer}
    quantized = {d.data: d for d in dequantized_constants(channels.model).values()}
    aux = {name for d in quantized.values() for name in (d.scale, d.zero_point) if name}
    per_node = np.zeros(len(channels.labels))
    for key, info in channels.spaces.items():
        if (not isinstance(key, ParamKey) or info.role is not Role.PRODUCER
                or key.initializer in aux):
            continue
        value = _weight(inits, key.initializer, quantized)
        per_node[info.offset:info.offset + info.size] = _slice_norms(value, key.axis, criterion)
    return np.bincount(channels.labels, weights=per_node, minlength=channels.n_components)


def _weight(inits: dict, name: str, quantized: dict[str, Dequantized]) -> np.ndarray:
    value = external.value(inits[name])
    if name not in quantized:
        return value
    d = quantized[name]
    zero = external.value(inits[d.zero_point]) if d.zero_point else None
    return d.value(value, external.value(inits[d.scale]), zero)


def lamp_scores(l2: np.ndarray, groups) -> np.ndarray:
    """LAMP of every unit within its layer group (module docstring); units of no group keep
    their l2 score (they are blocked, never planned)."""
    out = l2.astype(np.float64).copy()
    for group in groups:
        units = group.units
        order = np.argsort(l2[units], kind="stable")
        squares = np.square(l2[units][order].astype(np.float64))
        tails = np.cumsum(squares[::-1])[::-1]
        out[units[order]] = squares / np.maximum(tails, 1e-300)
    return out


def data_free_scores(channels: Channels, criterion: Criterion, seed: int,
                     groups=None) -> np.ndarray:
    """One score per component (blocked ones included; the planner skips them). LAMP needs
    the layer `groups`."""
    if criterion is Criterion.RANDOM:
        return np.random.default_rng(seed).random(channels.n_components)
    if criterion in (Criterion.L1, Criterion.L2):
        return magnitude_scores(channels, criterion)
    if criterion is Criterion.LAMP:
        return lamp_scores(magnitude_scores(channels, Criterion.L2), groups or [])
    raise UserError(f"--criterion {criterion.value} needs calibration data (--data)")
