"""Pad: constant (F.pad, negative pads crop), reflect / edge / wrap (index_select with the
source index of every output position, so any axis and any pad size work exactly)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, Unsupported, as_ints, norm_axes, op

_MODES = ("constant", "reflect", "edge", "wrap")


def _source_index(size: int, begin: int, end: int, mode: str) -> np.ndarray:
    j = np.arange(-begin, size + end)
    if mode == "edge" or (mode == "reflect" and size == 1):
        return np.clip(j, 0, size - 1)
    if mode == "wrap":
        return j % size
    period = 2 * (size - 1)
    j = np.abs(j) % period
    return np.where(j >= size, period - j, j)


def pad_tensor(x: torch.Tensor, pads: list[int], mode: str, value=0.0, axes=None):
    axes = norm_axes(axes, x.dim()) if axes is not None else list(range(x.dim()))
    begins, ends = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    if mode == "constant":
        flat = []
        for axis in range(x.dim() - 1, min(axes, default=x.dim()) - 1, -1):
            flat += [begins.get(axis, 0), ends.get(axis, 0)]
        return F.pad(x, flat, value=value) if any(flat) else x
    for axis in axes:
        if begins[axis] or ends[axis]:
            index = _source_index(x.shape[axis], begins[axis], ends[axis], mode)
            x = x.index_select(axis, torch.as_tensor(index, device=x.device))
    return x


@op("Pad")
def pad(spec: Spec):
    mode = spec.attrs.get("mode", "constant")
    if mode not in _MODES:
        raise Unsupported(f"mode {mode!r} is not implemented")
    if spec.since < 11:
        pads, value = spec.attrs["pads"], spec.attrs.get("value", 0.0)
        return lambda x: pad_tensor(x, pads, mode, value)
    static_pads, static_axes = spec.ints(1), spec.ints(3)
    static_value = spec.const(2)
    if static_value is not None:
        static_value = static_value.reshape(-1)[0].item() if static_value.size else 0

    def run(x, pads, value=None, axes=None):
        pads = static_pads if static_pads is not None else as_ints(pads)
        if static_value is not None:
            value = static_value
        elif value is not None:
            value = value.reshape(-1)[0].item() if value.numel() else 0
        else:
            value = 0
        if axes is not None:
            axes = static_axes if static_axes is not None else as_ints(axes)
        return pad_tensor(x, pads, mode, value, axes)
    return run
