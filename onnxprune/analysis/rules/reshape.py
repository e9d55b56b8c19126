"""Reshape, Flatten, Squeeze, Unsqueeze: one rule by flat positions.

A reshape keeps the row-major order of elements. For each flat position f we know its input
channel (f // post_in) % C and, for a candidate output axis b, its index (f // post_b) % D_b.
Linking every (input channel, output index) pair that shares a position makes each unit own
exactly the same set of positions on both sides, so removing a unit removes the same elements
before and after the reshape and the reshape stays valid with the new sizes. Among the output
axes we keep the one that yields the most units (the finest coupling):

- [N,C,H,W] -> [N,C,HW]: identity on axis 1;
- Flatten [N,C,H,W] -> [N,CHW]: channel c owns features [c*HW, (c+1)*HW);
- channel shuffle [N,C,H,W] -> [N,g,C/g,H,W]: axis 2 wins (C/g units, each spanning the g
  groups), the Transpose moves it, and the reshape back maps it to a permutation;
- attention [B,N,C] -> [B,N,(3,)H,Dh]: the head dim Dh has the most units, but q @ kT sums
  over it with no weight to slice, so the analysis maps such a reshape again on another axis,
  H (`Ctx.coarse_reshapes`, `best_axis`'s `skip`, units.find_channels): a unit is then a
  whole head, its q, k and v columns, its attention map and its rows of the output projection.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Fixup, FixupEdit, Flow
from onnxprune.analysis.rules.common import T
from onnxprune.analysis.rules.registry import rule
from onnxprune.analysis.unionfind import components

_MAX_POSITIONS = 1 << 25


def _pairs(in_shape, axis, out_shape, out_axis):
    """Unique (input channel, output index) pairs of positions shared by both."""
    flat = np.arange(int(np.prod(in_shape)), dtype=np.int64)
    c_in = (flat // int(np.prod(in_shape[axis + 1:]))) % in_shape[axis]
    c_out = (flat // int(np.prod(out_shape[out_axis + 1:]))) % out_shape[out_axis]
    pairs = np.unique(c_in * out_shape[out_axis] + c_out)
    return pairs // out_shape[out_axis], pairs % out_shape[out_axis]


def _unit_count(c_in, c_out, size_in, size_out) -> int:
    labels = components(size_in + size_out, c_in, size_in + c_out)
    return len(np.unique(labels))


def best_axis(in_shape, axis, out_shape, skip: int = 0):
    """(output axis, input idx, output idx) with the most units, or None if all are 1.

    With `skip` = k > 0, the k-th of the other axes with more than one unit (most units first,
    then the inner axis first: heads before the q / k / v axis of [B,N,3,H,Dh]); the finest
    when there are fewer. The analysis raises `skip` while the choice leaves the reshape's
    channels blocked by a product of two activations or all in one unit (units.find_channels).
    """
    found = []
    for out_axis, dim in enumerate(out_shape):
        if dim == 1:
            continue
        c_in, c_out = _pairs(in_shape, axis, out_shape, out_axis)
        found.append((_unit_count(c_in, c_out, in_shape[axis], dim), out_axis, c_in, c_out))
    if not found:
        return None
    finest = max(found, key=lambda f: (f[0], -f[1]))
    others = sorted((f for f in found if f is not finest and f[0] > 1),
                    key=lambda f: (f[0], f[1]), reverse=True)
    chosen = others[skip - 1] if 0 < skip <= len(others) else finest
    return chosen[1:]


def _reshape_fixup(out: str, out_axis: int, in_axis: int) -> Fixup:
    def fixup(node: onnx.NodeProto, edit: FixupEdit) -> None:
        shape = np.array(edit.const(node.input[1]), dtype=np.int64).reshape(-1)
        keep_zero = shape[out_axis] == 0 and out_axis == in_axis
        if shape[out_axis] != -1 and not keep_zero:
            shape[out_axis] = len(edit.kept(out))
        edit.set_input(node, 1, shape)
    return fixup


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """See the module docstring; Reshape's shape constant is rewritten after pruning."""
    x, out = node.input[0], node.output[0]
    space = ctx.space(x)
    in_shape, out_shape = ctx.shape(x), ctx.shape(out)
    if node.op_type == "Reshape" and ctx.const(node.input[1]) is None:
        return Block("Reshape shape is computed at run time")
    flow = Flow()
    flow.consts.update(n for n in node.input[1:] if n)
    if space is None:  # a scalar has no channels; whoever reads the result sees it opaque
        return flow
    if int(np.prod(in_shape)) > _MAX_POSITIONS:
        return Block("reshape of a tensor too large to map")
    found = best_axis(in_shape, space.axis, out_shape, ctx.coarse_reshapes.get(node.name, 0))
    if found is None and space.size == 1:  # a single element: any axis of size 1 carries it
        found = (min(1, len(out_shape) - 1), np.zeros(1, np.int64), np.zeros(1, np.int64))
    if found is None:
        return Block(f"{node.op_type} leaves no axis to carry the channels")
    out_axis, c_in, c_out = found
    flow.output(out, out_axis, out_shape[out_axis]).link(T(x), c_in, T(out), c_out)
    if node.op_type == "Reshape":
        flow.fixup = _reshape_fixup(out, out_axis, space.axis)
    return flow



