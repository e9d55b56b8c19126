"""Reductions and their relatives: Reduce*, ArgMax / ArgMin, TopK, Softmax, LogSoftmax,
Hardmax."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, as_ints, norm_axes, op


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


_REDUCE = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(x.sum(d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
}


# noop_with_empty_axes reduces over no axis: the element-wise part still applies
_NOOP = {"ReduceL1": torch.abs, "ReduceL2": torch.abs, "ReduceSumSquare": lambda x: x * x,
         "ReduceLogSum": torch.log}


@op(*_REDUCE)
def reduce(spec: Spec):
    fn, keep = _REDUCE[spec.op_type], bool(spec.attrs["keepdims"])
    noop = spec.attrs.get("noop_with_empty_axes", 0)
    elementwise = _NOOP.get(spec.op_type, lambda x: x)

    def run(x, axes):
        if not axes:
            if noop:
                return elementwise(x)
            axes = range(x.dim())
        return fn(x, tuple(norm_axes(axes, x.dim())), keep)
    from_input = spec.since >= 18 or (spec.op_type == "ReduceSum" and spec.since >= 13)
    if not from_input:
        axes = spec.attrs.get("axes") or []
        return lambda x: run(x, axes)
    if not spec.has(1):
        return lambda x: run(x, [])
    static = spec.ints(1)
    if static is not None:
        return lambda x, _: run(x, static)
    return lambda x, axes: run(x, as_ints(axes))


@op("ArgMax", "ArgMin")
def arg_extreme(spec: Spec):
    axis, keep = spec.attrs["axis"], bool(spec.attrs["keepdims"])
    last = spec.attrs.get("select_last_index", 0)
    fn = torch.argmax if spec.op_type == "ArgMax" else torch.argmin

    def run(x):
        if not last:
            return fn(x, axis, keepdim=keep)
        return x.shape[axis] - 1 - fn(x.flip(axis), axis, keepdim=keep)
    return run


@op("TopK")
def top_k(spec: Spec):
    axis, largest = spec.attrs["axis"], bool(spec.attrs.get("largest", 1))
    ordered = bool(spec.attrs.get("sorted", 1))
    if spec.since < 10:
        k = spec.attrs["k"]
        return lambda x: tuple(torch.topk(x, k, axis, largest, ordered))
    return lambda x, k: tuple(torch.topk(x, int(k.reshape(-1)[0]), axis, largest, ordered))


def _hardmax(x, axis):
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


_SOFTMAX = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax, "Hardmax": _hardmax}


@op(*_SOFTMAX)
def softmax(spec: Spec):
    fn, axis = _SOFTMAX[spec.op_type], spec.attrs["axis"]
    if spec.since >= 13:
        return lambda x: fn(x, axis)

    def coerced(x):  # before opset 13: over the flattened trailing axes [axis:]
        cut = axis + x.dim() if axis < 0 else axis
        flat = x.reshape(math.prod(x.shape[:cut]), math.prod(x.shape[cut:]))
        return fn(flat, 1).reshape(x.shape)
    return coerced
