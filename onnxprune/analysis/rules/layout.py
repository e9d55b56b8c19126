"""Ops that move channels around: Concat, Split, Slice (index offsets), Transpose (axis moves).

Reshape, Flatten, Squeeze and Unsqueeze share one rule (reshape.py): it maps every element's
flat position to its input channel and output index, which covers Flatten -> Gemm (channel c
owns features [c*HW, (c+1)*HW)) and channel shuffle (a permutation) without special cases.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Fixup, FixupEdit, Flow, Role
from onnxprune.analysis.rules.common import T, int_list, norm_axis, present
from onnxprune.analysis.rules.registry import rule


def _const_or_same(flow, ctx, name, out, axis, size):
    if ctx.is_const(name):
        if ctx.shape(name)[axis] == size and size > 1:
            flow.param(name, axis, Role.PASSTHROUGH, T(out), size=size)
        flow.consts.add(name)
    else:
        flow.same(T(name), T(out), size)


@rule("Concat")
def concat(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """On the channel axis channels keep their identity at an offset; on another axis they pass."""
    out, inputs = node.output[0], present(node.input)
    rank = ctx.rank(out)
    axis = norm_axis(ctx.attrs(node)["axis"], rank)
    chans = {ctx.space(n).axis for n in inputs if not ctx.is_const(n)}
    if len(chans) != 1:
        return Block("Concat inputs carry channels on different axes")
    chan = chans.pop()
    size = ctx.shape(out)[chan]
    flow = Flow().output(out, chan, size)
    if chan != axis:
        for name in inputs:
            _const_or_same(flow, ctx, name, out, chan, size)
        return flow
    offset = 0
    for name in inputs:
        width = ctx.shape(name)[axis]
        idx = offset + np.arange(width)
        if ctx.is_const(name):
            flow.param(name, axis, Role.PASSTHROUGH, T(out), idx=idx)
        else:
            flow.link(T(name), np.arange(width), T(out), idx)
        offset += width
    return flow


def _split_fixup(outs: list[str], opset: int) -> Fixup:
    def fixup(node: onnx.NodeProto, edit: FixupEdit) -> None:
        sizes = np.array([len(edit.kept(o)) for o in outs], dtype=np.int64)
        if opset < 13:
            edit.set_attr(node, "split", [int(s) for s in sizes])
        else:
            edit.remove_attr(node, "num_outputs")
            edit.set_input(node, 1, sizes)
    return fixup


@rule("Split")
def split(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Split on the channel axis: output i owns input channels [offset_i, offset_i + size_i)."""
    x, outs = node.input[0], list(node.output)
    space = ctx.space(x)
    axis = norm_axis(ctx.attrs(node).get("axis", 0), ctx.rank(x))
    flow = Flow()
    flow.consts.update(present(node.input[1:]))
    if space is None:  # a scalar, or a constant left unfolded: readers see the result opaque
        return flow
    if space.axis != axis:
        for out in present(outs):
            flow.output(out, space.axis, space.size).same(T(x), T(out), space.size)
        return flow
    if len(node.input) > 1 and node.input[1] and not ctx.is_const(node.input[1]):
        return Block("Split sizes are computed at run time")
    offset = 0
    for out in outs:
        width = ctx.shape(out)[axis]
        flow.output(out, axis, width)
        flow.link(T(x), offset + np.arange(width), T(out), np.arange(width))
        offset += width
    flow.fixup = _split_fixup(outs, ctx.opset)
    return flow


def _slice_bounds(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return min(max(start, 0), size), min(max(end, 0), size)


def _slice_fixup(x: str, pos: int, start: int, end: int) -> Fixup:
    def fixup(node: onnx.NodeProto, edit: FixupEdit) -> None:
        kept = edit.kept(x)
        starts = np.array(edit.const(node.input[1]), dtype=np.int64).reshape(-1)
        ends = np.array(edit.const(node.input[2]), dtype=np.int64).reshape(-1)
        starts[pos] = int(np.sum(kept < start))
        ends[pos] = int(np.sum(kept < end))
        edit.set_input(node, 1, starts)
        edit.set_input(node, 2, ends)
    return fixup


@rule("Slice")
def slice_(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """A step-1 slice of the channel axis keeps channels [start, end); the bounds are recomputed."""
    x, out = node.input[0], node.output[0]
    space = ctx.space(x)
    values = [ctx.const(n) if n else None for n in list(node.input[1:]) + [""] * 4][:4]
    if any(n and v is None for n, v in zip(node.input[1:], values)):
        return Block("Slice bounds are computed at run time")
    starts, ends = int_list(values[0]), int_list(values[1])
    axes = range(len(starts)) if values[2] is None else int_list(values[2])
    axes = [norm_axis(a, ctx.rank(x)) for a in axes]
    steps = [1] * len(starts) if values[3] is None else int_list(values[3])
    flow = Flow()
    flow.consts.update(present(node.input[1:]))
    if space is None:  # a scalar, or a constant left unfolded: readers see the result opaque
        return flow
    if space.axis not in axes:
        return flow.output(out, space.axis, space.size).same(T(x), T(out), space.size)
    pos = axes.index(space.axis)
    if steps[pos] != 1:
        return Block("Slice with a step on the channel axis")
    start, end = _slice_bounds(starts[pos], ends[pos], space.size)
    width = max(end - start, 0)
    flow.output(out, space.axis, width)
    flow.link(T(x), start + np.arange(width), T(out), np.arange(width))
    flow.fixup = _slice_fixup(x, pos, start, end)
    return flow


@rule("Transpose")
def transpose(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """The channel axis moves to where `perm` puts it."""
    x, out = node.input[0], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    if space is None:  # a constant left unfolded: readers see the result opaque
        return Flow()
    perm = ctx.attrs(node).get("perm") or list(reversed(range(rank)))
    axis = list(perm).index(space.axis)
    return Flow().output(out, axis, space.size).same(T(x), T(out), space.size)


@rule("Gather")
def gather(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Constant indices on another axis (a class token x[:, 0], q = qkv[0]) pass the channels;
    the gathered axis is replaced by the indices' axes, so the channel axis may move."""
    x, indices, out = node.input[0], node.input[1], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    if space is None:  # a scalar, or a constant left unfolded: readers see the result opaque
        return Flow()
    value = ctx.const(indices)
    if value is None:
        return Block("Gather indices are computed at run time")
    axis = norm_axis(ctx.attrs(node).get("axis", 0), rank)
    if axis == space.axis:
        return Block("Gather picks channels by index")
    moved = space.axis if space.axis < axis else space.axis - 1 + value.ndim
    flow = Flow().output(out, moved, space.size).same(T(x), T(out), space.size)
    flow.consts.add(indices)
    return flow
