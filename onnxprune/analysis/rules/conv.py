"""Conv and ConvTranspose.

Group 1: output channels are new (producer W[o], B[o]); input channels are consumed (sink
W[:, c] for Conv, W[c] for ConvTranspose).

Grouped and depthwise (group > 1): **a whole conv group is one unit**, as in the Group Fisher
paper: the Cg input channels and the Og output channels of group g go together, the group
attribute shrinks by one per removed group, and W is sliced only along its output-channel
axis (its per-group input axis is untouched). A depthwise conv is the case Cg = 1, so input
channel c and its multiplier outputs [c*m, (c+1)*m) are one unit.

Fallback (Cg > 1 only): where whole-group units collapse into a single unit because something
downstream ties the groups together (ResNeSt sums its radix groups channel by channel), units.py
re-runs the analysis with **channel j of every group** as the unit for that conv: the group
count stays and every group shrinks alike (sink W[:, j], producer W[o]).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Fixup, FixupEdit, Flow, Role
from onnxprune.analysis.rules.common import T, not_axis
from onnxprune.analysis.rules.registry import rule


def _link_groups(flow: Flow, x: str, out: str, c_in: int, c_out: int, group: int) -> None:
    cg, og = c_in // group, c_out // group
    flow.link(T(x), np.arange(c_in), T(out), (np.arange(c_in) // cg) * og)
    flow.link(T(out), np.arange(c_out), T(out), (np.arange(c_out) // og) * og)


def _link_per_index(flow: Flow, w: str, x: str, out: str, c_in: int, c_out: int, group: int):
    """Channel j of every group is one unit: W loses column j (sink) or the rows of output j of
    every group (producer); the group count stays."""
    cg, og = c_in // group, c_out // group
    flow.param(w, 1, Role.SINK, T(x), size=cg)
    flow.link(T(x), np.arange(c_in), T(x), np.arange(c_in) % cg)
    return flow.link(T(out), np.arange(c_out), T(out), np.arange(c_out) % og)


def _group_fixup(out: str, og: int) -> Fixup:
    def fixup(node: onnx.NodeProto, edit: FixupEdit) -> None:
        edit.set_attr(node, "group", len(edit.kept(out)) // og)
    return fixup


def _operands(node, ctx):
    """(x, w, bias or '', out, W value), or None when W or the bias is not a constant."""
    x, w, out = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 else ""
    weight = ctx.const(w)
    if weight is None or (bias and ctx.const(bias) is None):
        return None
    return x, w, bias, out, weight


def _not_constant(node) -> Block:
    return Block(f"{node.op_type} weight or bias is not a constant initializer")


@rule("Conv")
def conv(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """group 1: producer W[o], B[o]; sink W[:, c]. group > 1: whole groups (module docstring)."""
    operands = _operands(node, ctx)
    if operands is None:
        return _not_constant(node)
    x, w, bias, out, weight = operands
    group, c_out = ctx.attrs(node)["group"], weight.shape[0]
    flow = Flow().output(out, 1, c_out).param(w, 0, Role.PRODUCER, T(out), size=c_out)
    if bias:
        flow.param(bias, 0, Role.PRODUCER, T(out), size=c_out)
    space = ctx.space(x)
    if space.axis != 1:
        if group > 1:
            return Block(not_axis("grouped Conv", space.axis))
        return flow.block(T(x), not_axis("Conv", space.axis))
    if group == 1:
        return flow.param(w, 1, Role.SINK, T(x), size=space.size)
    if node.name in ctx.per_index_groups:
        return _link_per_index(flow, w, x, out, space.size, c_out, group)
    _link_groups(flow, x, out, space.size, c_out, group)
    flow.fixup = _group_fixup(out, c_out // group)
    return flow


@rule("ConvTranspose")
def conv_transpose(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """W is [C_in, C_out/group, k...]: group 1 sinks W[c] and produces W[:, o]; grouped as Conv."""
    operands = _operands(node, ctx)
    if operands is None:
        return _not_constant(node)
    x, w, bias, out, weight = operands
    group = ctx.attrs(node)["group"]
    c_in, c_out = weight.shape[0], weight.shape[1] * group
    space = ctx.space(x)
    if space.axis != 1:
        return Block(not_axis("ConvTranspose", space.axis))
    flow = Flow().output(out, 1, c_out)
    if bias:
        flow.param(bias, 0, Role.PRODUCER, T(out), size=c_out)
    if group == 1:
        flow.param(w, 1, Role.PRODUCER, T(out), size=c_out)
        return flow.param(w, 0, Role.SINK, T(x), size=c_in)
    flow.param(w, 0, Role.PRODUCER, T(x), size=c_in)
    _link_groups(flow, x, out, c_in, c_out, group)
    flow.fixup = _group_fixup(out, c_out // group)
    return flow
