"""Resize and Upsample, computed per axis the way onnxruntime does.

For every resized axis the source coordinate of each output position is computed in float32
with the node's coordinate_transformation_mode (as onnxruntime does), then turned into source
indices and weights: one tap for nearest (with its nearest_mode), two for linear (coordinate
clamped to the input), four for cubic (cubic_coeff_a, exclude_outside). The output is the
weighted sum of `index_select`s along the axis, axis after axis: exact, differentiable, any
rank. Upsampling by a power of two in nearest / asymmetric / floor mode, and bilinear NCHW
resizes whose modes torch shares, use F.interpolate instead (same result, faster).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, Unsupported, op

_COORDS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
           "asymmetric", "tf_half_pixel_for_nn")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


class Resampler:
    """The per-node resize: attributes decoded once, per-shape taps cached."""

    def __init__(self, mode: str, coords: str, nearest: str, cubic_a: float,
                 exclude_outside: bool, axes=None, policy: str = "stretch"):
        if mode not in ("nearest", "linear", "cubic"):
            raise Unsupported(f"mode {mode!r} is not implemented")
        if coords not in _COORDS:
            raise Unsupported(f"coordinate_transformation_mode {coords!r} is not implemented")
        if nearest not in _NEAREST:
            raise Unsupported(f"nearest_mode {nearest!r} is not implemented")
        self.mode, self.coords, self.nearest = mode, coords, nearest
        self.cubic_a, self.exclude_outside = np.float32(cubic_a), exclude_outside
        self.axes, self.policy = axes, policy
        self._cache: dict = {}

    def __call__(self, x: torch.Tensor, scales=None, sizes=None) -> torch.Tensor:
        rank = x.dim()
        axes = [a + rank if a < 0 else a for a in (self.axes or range(rank))]
        key = (tuple(x.shape), tuple(scales or ()), tuple(sizes or ()), x.device, x.dtype)
        plan = self._cache.get(key)
        if plan is None:
            plan = self._cache[key] = self._plan(x, axes, scales, sizes)
        if callable(plan):
            return plan(x)
        for axis, index, weights in plan:
            if weights is None:
                x = x.index_select(axis, index)
            else:
                out = None
                for tap in range(index.shape[0]):
                    term = x.index_select(axis, index[tap]) * weights[tap]
                    out = term if out is None else out + term
                x = out
        return x

    def _plan(self, x, axes, scales, sizes):
        shape = list(x.shape)
        factors = {a: 1.0 for a in range(len(shape))}
        outs = list(shape)
        if sizes:
            ratios = [np.float32(sizes[i]) / np.float32(shape[a]) for i, a in enumerate(axes)]
            if self.policy in ("not_larger", "not_smaller"):
                pick = min(ratios) if self.policy == "not_larger" else max(ratios)
                ratios = [pick] * len(axes)
                sizes = [math.floor(pick * shape[a] + 0.5) for a in axes]
            for i, a in enumerate(axes):
                factors[a], outs[a] = ratios[i], sizes[i]
        else:
            for i, a in enumerate(axes):
                factors[a], outs[a] = scales[i], math.floor(shape[a] * scales[i])
        fast = self._interpolate(shape, outs, factors, sizes is not None)
        if fast is not None:
            return fast
        plan = []
        for a in range(len(shape)):
            if outs[a] != shape[a] or factors[a] != 1.0:
                index, weights = self._taps(shape[a], outs[a], np.float32(factors[a]))
                index = torch.as_tensor(index, device=x.device)
                if weights is not None:
                    weights = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
                    view = [1] * len(shape)
                    view[a] = -1
                    weights = weights.reshape((weights.shape[0],) + tuple(view))
                plan.append((a, index, weights))
        return plan

    def _interpolate(self, shape, outs, factors, by_size):
        """F.interpolate where it computes exactly what onnxruntime does, else None."""
        if len(shape) != 4 or outs[:2] != shape[:2] or min(outs[2:]) < 2:
            return None
        if self.mode == "nearest":
            powers = all(f >= 1 and float(f).is_integer() and (int(f) & (int(f) - 1)) == 0
                         and o == s * f for f, o, s in zip((factors[2], factors[3]), outs[2:],
                                                           shape[2:]))
            if powers and self.coords == "asymmetric" and self.nearest in ("floor", "simple"):
                size = tuple(outs[2:])
                return lambda x: F.interpolate(x, size=size, mode="nearest")
            return None
        if self.mode != "linear" or self.coords not in ("half_pixel", "pytorch_half_pixel",
                                                         "align_corners"):
            return None
        corners = self.coords == "align_corners"
        if by_size or corners:
            size = tuple(outs[2:])
            return lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=corners)
        factor = (factors[2], factors[3])
        return lambda x: F.interpolate(x, scale_factor=factor, mode="bilinear",
                                       align_corners=False, recompute_scale_factor=False)

    def _source(self, size: int, out: int, scale: np.float32) -> np.ndarray:
        """Source coordinate of every output position, in float32 like onnxruntime."""
        x = np.arange(out, dtype=np.float32)
        one, half = np.float32(1), np.float32(0.5)
        if self.coords == "asymmetric":
            return x / scale
        if self.coords == "tf_half_pixel_for_nn":
            return (x + half) / scale
        if self.coords == "align_corners":
            if out == 1:
                return np.zeros(1, np.float32)
            return x * np.float32(size - 1) / np.float32(out - 1)
        if self.coords == "pytorch_half_pixel" and out == 1:
            return np.zeros(1, np.float32)
        if self.coords == "half_pixel_symmetric":  # onnxruntime's order of operations
            adjustment = np.float32(out) / (scale * np.float32(size))
            offset = np.float32(size) / 2 * (one - adjustment)
            return ((offset + (x + half) / scale) - half).astype(np.float32)
        return ((x + half) / scale - half).astype(np.float32)

    def _taps(self, size: int, out: int, scale: np.float32):
        src = self._source(size, out, scale)
        if self.mode == "nearest":
            return np.clip(self._round(src, scale), 0, size - 1).astype(np.int64), None
        if self.mode == "linear":
            src = np.clip(src, 0, size - 1)
            low = np.minimum(src.astype(np.int64), size - 1)
            high = np.minimum(low + 1, size - 1)
            d_low, d_high = np.abs(src - low), np.abs(src - high)
            same = low == high
            d_low[same], d_high[same] = 0.5, 0.5
            return np.stack([low, high]), np.stack([d_high, d_low]).astype(np.float32)
        return self._cubic(src, size)

    def _round(self, src: np.ndarray, scale: np.float32) -> np.ndarray:
        if self.nearest == "simple":  # Resize-10 / Upsample
            return np.ceil(src) if scale < 1 else np.trunc(src)
        if self.nearest == "floor":
            return np.floor(src)
        if self.nearest == "ceil":
            return np.ceil(src)
        floor = np.floor(src)
        tie = src - floor == 0.5
        rounded = np.floor(src + 0.5)
        if self.nearest == "round_prefer_floor":
            return np.where(tie, floor, rounded)
        return rounded

    def _cubic(self, src: np.ndarray, size: int):
        a = self.cubic_a
        base = np.floor(src)
        s = (src - base).astype(np.float32)

        def outer(t):  # |t| in [1, 2)
            return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

        def inner(t):  # |t| in [0, 1)
            return ((a + 2) * t - (a + 3)) * t * t + 1
        weights = np.stack([outer(s + 1), inner(s), inner(1 - s), outer(2 - s)])
        index = base.astype(np.int64)[None, :] + np.arange(-1, 3)[:, None]
        if self.exclude_outside:
            weights = np.where((index < 0) | (index >= size), 0, weights)
            weights = weights / weights.sum(0, keepdims=True)
        return np.clip(index, 0, size - 1), weights.astype(np.float32)


@op("Resize")
def resize(spec: Spec):
    attrs = spec.attrs
    if attrs.get("antialias", 0) and attrs["mode"] != "nearest":
        raise Unsupported("antialias=1 has no exact torch equivalent")
    if spec.since < 11:
        sampler = Resampler(attrs["mode"], "asymmetric", "simple", -0.75, False)
        return _with_inputs(spec, sampler, scales_slot=1, sizes_slot=None)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        raise Unsupported("coordinate_transformation_mode 'tf_crop_and_resize' is not "
                          "implemented")
    sampler = Resampler(attrs["mode"], attrs["coordinate_transformation_mode"],
                        attrs["nearest_mode"], attrs["cubic_coeff_a"],
                        bool(attrs["exclude_outside"]), attrs.get("axes"),
                        attrs.get("keep_aspect_ratio_policy", "stretch"))
    return _with_inputs(spec, sampler, scales_slot=2, sizes_slot=3)


@op("Upsample")
def upsample(spec: Spec):
    mode = spec.attrs.get("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    sampler = Resampler(mode, "asymmetric", "simple", -0.75, False)
    if spec.since < 9:
        scales = [float(s) for s in spec.attrs["scales"]]
        return lambda x: sampler(x, scales=scales)
    return _with_inputs(spec, sampler, scales_slot=1, sizes_slot=None)


def _with_inputs(spec: Spec, sampler: Resampler, scales_slot: int, sizes_slot):
    """Read scales / sizes once when constant; an empty scales tensor means sizes are used."""
    def pick(x, args):
        scales = args[scales_slot - 1] if len(args) >= scales_slot else None
        sizes = args[sizes_slot - 1] if sizes_slot and len(args) >= sizes_slot else None
        if sizes is not None and sizes.numel():
            return sampler(x, sizes=[int(v) for v in sizes.tolist()])
        return sampler(x, scales=[float(v) for v in scales.tolist()])
    static_scales = spec.floats(scales_slot) if spec.has(scales_slot) else None
    static_sizes = spec.ints(sizes_slot) if sizes_slot and spec.has(sizes_slot) else None
    if static_sizes:
        return lambda x, *_: sampler(x, sizes=static_sizes)
    if static_scales and not (sizes_slot and spec.has(sizes_slot)):
        return lambda x, *_: sampler(x, scales=static_scales)
    return lambda x, *args: pick(x, args)
