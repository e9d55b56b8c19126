"""Ops that work on spatial axes only: pools, reductions, Resize / Upsample, Pad.

They pass channel c through unchanged, provided the channel axis is not one they operate on.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Fixup, FixupEdit, Flow
from onnxprune.analysis.rules.common import T, int_list, norm_axis, not_axis, present, used_outputs
from onnxprune.analysis.rules.registry import rule

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
         "GlobalLpPool")
REDUCES = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


def _passthrough(x: str, out: str, axis: int, size: int, consts=()) -> Flow:
    flow = Flow().output(out, axis, size).same(T(x), T(out), size)
    flow.consts.update(present(consts))
    return flow


@rule(*POOLS)
def pool(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Pools read each channel's own H x W window."""
    x, out = node.input[0], node.output[0]
    space = ctx.space(x)
    if space.axis != 1:
        return Block(not_axis(node.op_type, space.axis))
    if len(used_outputs(node)) > 1:
        return Block("MaxPool indices encode positions across channels")
    return _passthrough(x, out, 1, space.size)


def _reduce_axes(node, ctx) -> list[int] | None:
    attrs, rank = ctx.attrs(node), ctx.rank(node.input[0])
    if node.op_type in ("ArgMax", "ArgMin"):
        return [norm_axis(attrs["axis"], rank)]
    axes = attrs.get("axes")
    if len(node.input) > 1 and node.input[1]:
        value = ctx.const(node.input[1])
        if value is None:
            return None
        axes = int_list(value)
    if not axes:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return [norm_axis(a, rank) for a in axes]


@rule(*REDUCES)
def reduce(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Reduce over spatial axes only; the channel axis shifts left when keepdims=0."""
    x, out = node.input[0], node.output[0]
    space = ctx.space(x)
    axes = _reduce_axes(node, ctx)
    if axes is None:
        return Block(f"{node.op_type} axes are computed at run time")
    if space.axis in axes:
        return Block(f"{node.op_type} reduces over the channel axis")
    keep = ctx.attrs(node).get("keepdims", 1)
    axis = space.axis if keep else space.axis - sum(a < space.axis for a in axes)
    return _passthrough(x, out, axis, space.size, node.input[1:])


def _resize_fixup(sizes_slot: int, pos: int, out: str) -> Fixup:
    def fixup(node: onnx.NodeProto, edit: FixupEdit) -> None:
        sizes = np.array(edit.const(node.input[sizes_slot]), dtype=np.int64)
        sizes[pos] = len(edit.kept(out))
        edit.set_input(node, sizes_slot, sizes)
    return fixup


@rule("Resize", "Upsample")
def resize(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Scale 1 on the channel axis; an explicit `sizes` entry for it is rewritten after pruning."""
    x, out = node.input[0], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    axes = [norm_axis(a, rank) for a in ctx.attrs(node).get("axes") or range(rank)]
    flow = _passthrough(x, out, space.axis, space.size, node.input[1:])
    if space.axis not in axes:
        return flow
    pos = axes.index(space.axis)
    scales_slot = 1 if node.op_type == "Upsample" else 2
    slots = {scales_slot: "scales", 3: "sizes"}
    for slot, kind in slots.items():
        if slot >= len(node.input) or not node.input[slot]:
            continue
        value = ctx.const(node.input[slot])
        if value is None:
            return Block(f"{node.op_type} {kind} are computed at run time")
        if value.size == 0:
            continue
        if kind == "scales" and value.reshape(-1)[pos] != 1:
            return Block(f"{node.op_type} rescales the channel axis")
        if kind == "sizes":
            flow.fixup = _resize_fixup(slot, pos, out)
    return flow


@rule("Pad")
def pad(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Spatial padding passes channels; constant channels padded on (a Concat with a constant
    slab, e.g. linear attention's F.pad(v, (0, 1), value=1)) shift the others and stay."""
    x, out = node.input[0], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    if ctx.opset < 11:
        pads = ctx.attrs(node)["pads"]
        axes = list(range(rank))
    else:
        value = ctx.const(node.input[1])
        if value is None:
            return Block("Pad amounts are computed at run time")
        pads = int_list(value)
        axes_in = ctx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axes = (list(range(rank)) if axes_in is None
                else [norm_axis(a, rank) for a in int_list(axes_in)])
    before = after = 0
    if space.axis in axes:
        pos = axes.index(space.axis)
        before, after = pads[pos], pads[pos + len(axes)]
    if min(before, after) < 0 or ((before or after) and ctx.attrs(node).get("mode") != "constant"):
        return Block("Pad crops, reflects or repeats channels")
    flow = Flow().output(out, space.axis, space.size + before + after)
    flow.consts.update(present(node.input[1:]))
    flow.link(T(x), np.arange(space.size), T(out), before + np.arange(space.size))
    added = np.r_[np.arange(before), before + space.size + np.arange(after)]
    return flow.block(T(out), "channels added by Pad", added) if len(added) else flow
