"""Indexing ops: Concat, Split, Slice, Gather, GatherElements, GatherND, ScatterND,
ScatterElements."""
from __future__ import annotations

import math

import torch

from calibrate.ops.registry import Spec, Unsupported, as_ints, op


@op("Concat")
def concat(spec: Spec):
    axis = spec.attrs["axis"]
    return lambda *xs: torch.cat(xs, axis)


@op("Split")
def split(spec: Spec):
    axis, count = spec.attrs.get("axis", 0), len(spec.node.output)
    if spec.since < 13:
        static = spec.attrs.get("split") or None
    else:
        static = spec.ints(1) if spec.has(1) else None
    if spec.has(1) and static is None and spec.since >= 13:
        return lambda x, sizes: torch.split(x, as_ints(sizes), axis)
    if static is not None:
        return lambda x, *_: torch.split(x, static, axis)
    count = spec.attrs.get("num_outputs", count)

    def equal(x, *_):  # opset 18: the last chunk may be smaller
        chunk = math.ceil(x.shape[axis] / count)
        return torch.split(x, chunk, axis)
    return equal


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def slice_tensor(x: torch.Tensor, starts, ends, axes, steps) -> torch.Tensor:
    """ONNX Slice with python ints: negative / huge starts and ends, negative steps."""
    index = [slice(None)] * x.dim()
    backwards = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + x.dim() if axis < 0 else axis
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(_clamp(start, 0, dim), _clamp(end, 0, dim), step)
        elif step < 0:
            backwards.append((axis, _clamp(start, 0, dim - 1), _clamp(end, -1, dim - 1), step))
        else:
            raise ValueError("Slice step 0")
    x = x[tuple(index)]
    for axis, start, end, step in backwards:
        x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x


@op("Slice")
def slice_(spec: Spec):
    if spec.since < 10:
        starts, ends = spec.attrs["starts"], spec.attrs["ends"]
        axes = spec.attrs.get("axes") or list(range(len(starts)))
        return lambda x: slice_tensor(x, starts, ends, axes, [1] * len(starts))
    static = [spec.ints(slot) for slot in range(1, 5)]
    present = [spec.has(slot) for slot in range(1, 5)]
    if all(value is not None or not has for value, has in zip(static, present)):
        starts, ends, axes, steps = static
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        return lambda x, *_: slice_tensor(x, starts, ends, axes, steps)

    def run(x, starts, ends, axes=None, steps=None):
        starts, ends = as_ints(starts), as_ints(ends)
        axes = as_ints(axes) if axes is not None else list(range(len(starts)))
        steps = as_ints(steps) if steps is not None else [1] * len(starts)
        return slice_tensor(x, starts, ends, axes, steps)
    return run


def _wrap(index: torch.Tensor, size) -> torch.Tensor:
    """Negative indices count from the end."""
    return torch.where(index < 0, index + size, index)


@op("Gather")
def gather(spec: Spec):
    axis = spec.attrs["axis"]
    static = spec.const(1)
    if static is not None and static.ndim == 0:
        position = int(static)
        return lambda x, _: x.select(axis, position)

    def run(x, index):
        ax = axis + x.dim() if axis < 0 else axis
        flat = _wrap(index.reshape(-1), x.shape[ax])
        out = x.index_select(ax, flat)
        return out.reshape(x.shape[:ax] + index.shape + x.shape[ax + 1:])
    return run


@op("GatherElements")
def gather_elements(spec: Spec):
    axis = spec.attrs["axis"]
    return lambda x, index: torch.gather(x, axis, _wrap(index, x.shape[axis]))


@op("GatherND")
def gather_nd(spec: Spec):
    batch = spec.attrs.get("batch_dims", 0)

    def run(x, index):
        depth = index.shape[-1]
        count = math.prod(x.shape[:batch])
        data = x.reshape((count,) + x.shape[batch:])
        idx = index.reshape(count, -1, depth)
        sizes = torch.tensor(x.shape[batch:batch + depth], device=idx.device)
        idx = _wrap(idx, sizes)
        rows = torch.arange(count, device=idx.device)[:, None].expand(count, idx.shape[1])
        out = data[(rows,) + tuple(idx.unbind(-1))]
        return out.reshape(index.shape[:-1] + x.shape[batch + depth:])
    return run


@op("ScatterND")
def scatter_nd(spec: Spec):
    reduction = spec.attrs.get("reduction", "none")
    if reduction not in ("none", "add"):
        raise Unsupported(f"reduction {reduction!r} is not implemented")
    accumulate = reduction == "add"
    return lambda x, index, updates: x.index_put(tuple(index.unbind(-1)), updates, accumulate)


@op("ScatterElements")
def scatter_elements(spec: Spec):
    axis, reduction = spec.attrs["axis"], spec.attrs.get("reduction", "none")
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    if reduction != "none" and reduction not in reduce:
        raise Unsupported(f"reduction {reduction!r} is not implemented")

    def run(x, index, updates):
        index = _wrap(index, x.shape[axis])
        if reduction == "none":
            return x.scatter(axis, index, updates)
        return x.scatter_reduce(axis, index, updates, reduce[reduction], include_self=True)
    return run
