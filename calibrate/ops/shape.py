"""Shape ops: Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile,
ConstantOfShape, Range, DepthToSpace, SpaceToDepth, NonZero.

Shape values are int64 tensors; a constant shape input is read once (spec.ints), a computed
one with `.tolist()` per call."""
from __future__ import annotations

import math

import numpy as np
import torch
from onnx import numpy_helper

from calibrate.ops.registry import Spec, Unsupported, as_ints, norm_axes, op


def _static_or_runtime(spec: Spec, slot: int, fn):
    """fn(x, python ints) with the ints read at construction when the input is constant."""
    static = spec.ints(slot)
    if static is not None:
        return lambda x, *_: fn(x, static)
    return lambda x, value, *_: fn(x, as_ints(value))


@op("Shape")
def shape(spec: Spec):
    start, end = spec.attrs.get("start", 0), spec.attrs.get("end")
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


@op("Size")
def size(spec: Spec):
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@op("Reshape")
def reshape(spec: Spec):
    if spec.since < 5:
        raise Unsupported("Reshape-1 (shape as attribute) is not implemented")
    allowzero = spec.attrs.get("allowzero", 0)

    def run(x, target):
        if not allowzero:
            target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
        return x.reshape(target)
    static = spec.ints(1)
    if static is not None and (allowzero or 0 not in static):
        return lambda x, *_: x.reshape(static)
    return _static_or_runtime(spec, 1, run)


@op("Flatten")
def flatten(spec: Spec):
    axis = spec.attrs["axis"]

    def run(x):
        cut = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:cut]), math.prod(x.shape[cut:]))
    return run


@op("Squeeze")
def squeeze(spec: Spec):
    def run(x, axes):
        return x.squeeze(tuple(norm_axes(axes, x.dim()))) if axes else x.squeeze()
    if spec.since < 13:
        axes = spec.attrs.get("axes", [])
        return lambda x: run(x, axes)
    if not spec.has(1):
        return lambda x: x.squeeze()
    return _static_or_runtime(spec, 1, run)


@op("Unsqueeze")
def unsqueeze(spec: Spec):
    def run(x, axes):
        for axis in sorted(norm_axes(axes, x.dim() + len(axes))):
            x = x.unsqueeze(axis)
        return x
    if spec.since < 13:
        axes = spec.attrs["axes"]
        return lambda x: run(x, axes)
    return _static_or_runtime(spec, 1, run)


@op("Transpose")
def transpose(spec: Spec):
    perm = spec.attrs.get("perm")
    if perm is None:
        return lambda x: x.permute(tuple(reversed(range(x.dim()))))
    return lambda x: x.permute(perm)


@op("Expand")
def expand(spec: Spec):
    return _static_or_runtime(spec, 1, lambda x, s: x.expand(torch.broadcast_shapes(x.shape, s)))


@op("Tile")
def tile(spec: Spec):
    return _static_or_runtime(spec, 1, lambda x, repeats: x.repeat(repeats))


@op("ConstantOfShape")
def constant_of_shape(spec: Spec):
    value = spec.attrs.get("value")
    array = numpy_helper.to_array(value).copy() if value is not None else np.zeros(1, np.float32)
    fill, dtype = array.reshape(-1)[0].item(), torch.from_numpy(array).dtype
    return lambda shape: torch.full(as_ints(shape), fill, dtype=dtype, device=shape.device)


@op("Range")
def range_(spec: Spec):
    def run(start, limit, delta):
        if start.is_floating_point():
            a, b, d = start.item(), limit.item(), delta.item()
            count = max(math.ceil((b - a) / d), 0)
            return start + torch.arange(count, dtype=start.dtype, device=start.device) * delta
        return torch.arange(int(start), int(limit), int(delta), dtype=start.dtype,
                            device=start.device)
    return run


@op("DepthToSpace")
def depth_to_space(spec: Spec):
    bs, mode = spec.attrs["blocksize"], spec.attrs.get("mode", "DCR")

    def run(x):
        b, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(b, bs, bs, c // bs ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(b, c // bs ** 2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c // bs ** 2, h * bs, w * bs)
    return run


@op("SpaceToDepth")
def space_to_depth(spec: Spec):
    bs = spec.attrs["blocksize"]

    def run(x):
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(b, c * bs * bs, h // bs, w // bs)
    return run


@op("NonZero")
def nonzero(spec: Spec):
    return lambda x: torch.nonzero(x).t()
