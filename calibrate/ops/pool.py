"""Pools: MaxPool, AveragePool, LpPool and their Global forms.

torch's own pooling is used where it gives ONNX's result exactly (symmetric pads no larger
than half the kernel). Otherwise the input is padded explicitly (-inf for max, zeros for sums)
to exactly the extent ONNX's output size needs — ceil_mode windows that would start inside
the right padding are dropped, as in onnxruntime — and pooled without padding; averages divide
by a count pooled from a mask of the positions that count.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from calibrate.ops.conv import same_split, torch_pads
from calibrate.ops.registry import Spec, Unsupported, op

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class Window:
    """Kernel, strides, dilations, pads, auto_pad and ceil_mode of one pool node."""

    def __init__(self, spec: Spec):
        attrs = spec.attrs
        self.kernel = tuple(attrs["kernel_shape"])
        n = self.n = len(self.kernel)
        if n not in _MAX:
            raise Unsupported(f"{n}-D pooling is not implemented")
        self.strides = tuple(attrs.get("strides") or [1] * n)
        self.dilations = tuple(attrs.get("dilations") or [1] * n)
        pads = list(attrs.get("pads") or [0] * 2 * n)
        self.begins, self.ends = pads[:n], pads[n:]
        self.auto_pad = attrs.get("auto_pad", "NOTSET")
        self.ceil = bool(attrs.get("ceil_mode", 0))
        self._cache: dict = {}

    def torch_native(self) -> bool:
        """torch's pool with padding=begins gives ONNX's output (explicit pads not needed)."""
        half = all(b <= ((k - 1) * d + 1) // 2 for b, k, d in
                   zip(self.begins, self.kernel, self.dilations))
        return self.auto_pad == "NOTSET" and self.begins == self.ends and half

    def extents(self, sizes) -> tuple[list[int], list[int], list[int]]:
        """(begins, ends, declared ends) of the explicit padding for input `sizes`."""
        key = tuple(sizes)
        if key not in self._cache:
            self._cache[key] = self._extents(sizes)
        return self._cache[key]

    def _extents(self, sizes):
        begins, ends, declared = [], [], []
        for i, size in enumerate(sizes):
            k, s = (self.kernel[i] - 1) * self.dilations[i] + 1, self.strides[i]
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = math.ceil(size / s)
                lo, hi = same_split(max((out - 1) * s + k - size, 0), self.auto_pad)
            else:
                lo, hi = (0, 0) if self.auto_pad == "VALID" else (self.begins[i], self.ends[i])
                span = (size + lo + hi - k) / s
                out = (math.ceil(span) if self.ceil else math.floor(span)) + 1
                if self.ceil and (out - 1) * s >= size + lo:
                    out -= 1
            begins.append(lo)
            ends.append((out - 1) * s + k - size - lo)
            declared.append(hi)
        return begins, ends, declared


@op("MaxPool")
def max_pool(spec: Spec):
    spec.only_first_output(" (no Indices)")
    if spec.attrs.get("storage_order", 0):
        raise Unsupported("storage_order=1 only changes Indices, which are not implemented")
    win = Window(spec)
    fn = _MAX[win.n]
    if win.torch_native():
        args = (win.kernel, win.strides, tuple(win.begins), win.dilations, win.ceil)
        return lambda x: fn(x, *args)

    def general(x):
        begins, ends, _ = win.extents(x.shape[2:])
        x = F.pad(x, torch_pads(begins, ends), value=-math.inf)
        return fn(x, win.kernel, win.strides, 0, win.dilations)
    return general


def _sum_pool(x, win: Window, begins, ends):
    """Window sums of the input zero-padded by (begins, ends) (1-D viewed as 2-D:
    avg_pool1d has no divisor_override)."""
    x = F.pad(x, torch_pads(begins, ends))
    if win.n == 1:
        return F.avg_pool2d(x.unsqueeze(-2), (1,) + win.kernel, (1,) + win.strides,
                            divisor_override=1).squeeze(-2)
    return _AVG[win.n](x, win.kernel, win.strides, divisor_override=1)


def _counts(x, win: Window, include_pad: bool):
    """How many positions each window averages over (cached per input size): the input's,
    plus the declared pads with count_include_pad (never ceil_mode's extension)."""
    key = ("count", tuple(x.shape[2:]), x.device, x.dtype, include_pad)
    if key not in win._cache:
        begins, ends, declared = win.extents(x.shape[2:])
        mask = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        if include_pad:
            mask = F.pad(mask, torch_pads(begins, declared), value=1.0)
            begins, ends = [0] * win.n, [e - d for e, d in zip(ends, declared)]
        win._cache[key] = _sum_pool(mask, win, begins, ends)
    return win._cache[key]


def _sums(x, win: Window):
    begins, ends, _ = win.extents(x.shape[2:])
    return _sum_pool(x, win, begins, ends)


@op("AveragePool")
def average_pool(spec: Spec):
    win = Window(spec)
    if any(d != 1 for d in win.dilations):
        raise Unsupported("dilated average pooling has no torch equivalent")
    include = bool(spec.attrs.get("count_include_pad", 0))
    if win.torch_native() and not win.ceil:
        fn = _AVG[win.n]
        args = (win.kernel, win.strides, tuple(win.begins), False, include)
        return lambda x: fn(x, *args)
    return lambda x: _sums(x, win) / _counts(x, win, include)


@op("LpPool")
def lp_pool(spec: Spec):
    win = Window(spec)
    if any(d != 1 for d in win.dilations):
        raise Unsupported("dilated Lp pooling has no torch equivalent")
    p = spec.attrs["p"]
    return lambda x: _sums(x.abs() ** p, win) ** (1.0 / p)


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(spec: Spec):
    def dims(x):
        return tuple(range(2, x.dim()))
    if spec.op_type == "GlobalAveragePool":
        return lambda x: x.mean(dims(x), keepdim=True)
    if spec.op_type == "GlobalMaxPool":
        return lambda x: x.amax(dims(x), keepdim=True)
    p = spec.attrs["p"]
    return lambda x: (x.abs() ** p).sum(dims(x), keepdim=True) ** (1.0 / p)
