"""Conv and ConvTranspose (1-D, 2-D, 3-D; groups, dilations, asymmetric pads, auto_pad,
output_padding, output_shape)."""
from __future__ import annotations

import math

import torch.nn.functional as F

from calibrate.ops.registry import Spec, Unsupported, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def torch_pads(begins, ends) -> list[int]:
    """ONNX (begins, ends) per spatial axis -> F.pad's order (last axis first)."""
    out = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def same_split(total: int, auto_pad: str) -> tuple[int, int]:
    """SAME_UPPER puts the odd padding at the end, SAME_LOWER at the beginning."""
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def _spatial_rank(spec: Spec) -> int:
    for name in ("kernel_shape", "strides", "dilations"):
        if spec.attrs.get(name):
            return len(spec.attrs[name])
    if spec.attrs.get("pads"):
        return len(spec.attrs["pads"]) // 2
    weight = spec.const(1)
    if weight is None:
        raise Unsupported("the spatial rank is unknown (no kernel_shape and a computed weight)")
    return weight.ndim - 2


def _geometry(spec: Spec):
    n = _spatial_rank(spec)
    if n not in _CONV:
        raise Unsupported(f"{n}-D convolution is not implemented")
    attrs = spec.attrs
    strides = tuple(attrs.get("strides") or [1] * n)
    dilations = tuple(attrs.get("dilations") or [1] * n)
    pads = list(attrs.get("pads") or [0] * 2 * n)
    return n, strides, dilations, pads[:n], pads[n:], attrs.get("auto_pad", "NOTSET")


@op("Conv")
def conv(spec: Spec):
    n, strides, dilations, begins, ends, auto_pad = _geometry(spec)
    group, fn = spec.attrs["group"], _CONV[n]
    if auto_pad == "VALID":
        begins = ends = [0] * n
    if auto_pad in ("NOTSET", "VALID"):
        if begins == ends:
            padding = tuple(begins)
            return lambda x, w, b=None: fn(x, w, b, strides, padding, dilations, group)
        pad = torch_pads(begins, ends)
        return lambda x, w, b=None: fn(F.pad(x, pad), w, b, strides, 0, dilations, group)

    def same(x, w, b=None):
        begin, end = [], []
        for size, k, s, d in zip(x.shape[2:], w.shape[2:], strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            lo, hi = same_split(total, auto_pad)
            begin.append(lo)
            end.append(hi)
        if begin == end:
            return fn(x, w, b, strides, tuple(begin), dilations, group)
        return fn(F.pad(x, torch_pads(begin, end)), w, b, strides, 0, dilations, group)
    return same


def _transpose_pads(spec, x, w, strides, dilations, begins, ends, out_pad, auto_pad):
    """(begins, ends) cropped from the full transposed-conv output, as onnxruntime does."""
    shape = spec.attrs.get("output_shape")
    if not shape and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return begins, ends
    begins, ends = [], []
    n = len(strides)
    targets = shape[-n:] if shape else [size * s for size, s in zip(x.shape[2:], strides)]
    for size, k, s, d, a, target in zip(x.shape[2:], w.shape[2:], strides, dilations, out_pad,
                                        targets):
        total = s * (size - 1) + a + (k - 1) * d + 1 - target
        if total < 0:
            raise Unsupported(f"output_shape {list(shape)} is larger than the full output")
        lo, hi = same_split(total, auto_pad)  # NOTSET with output_shape: as SAME_LOWER
        begins.append(lo)
        ends.append(hi)
    return begins, ends


@op("ConvTranspose")
def conv_transpose(spec: Spec):
    n, strides, dilations, begins, ends, auto_pad = _geometry(spec)
    group, fn = spec.attrs["group"], _CONV_T[n]
    out_pad = tuple(spec.attrs.get("output_padding") or [0] * n)
    if auto_pad == "VALID":
        begins = ends = [0] * n
    simple = not spec.attrs.get("output_shape") and auto_pad in ("NOTSET", "VALID")
    if simple and begins == ends and all(a < max(s, d) for a, s, d in
                                         zip(out_pad, strides, dilations)):
        padding = tuple(begins)
        return lambda x, w, b=None: fn(x, w, b, strides, padding, out_pad, group, dilations)

    def general(x, w, b=None):
        lo, hi = _transpose_pads(spec, x, w, strides, dilations, begins, ends, out_pad, auto_pad)
        y = fn(x, w, None, strides, 0, 0, group, dilations)
        # the output is the full one cropped by the pads, extended by output_padding zeros
        y = F.pad(y, torch_pads([-v for v in lo], [a - v for a, v in zip(out_pad, hi)]))
        return y if b is None else y + b.reshape((1, -1) + (1,) * n)
    return general
