"""Element-wise ops, normalisations and softmax: channel c in is channel c out.

Multi-input element-wise ops broadcast numpy-style: every activation input whose channel axis
lines up with the output's is the same channel (that is how residual Add and squeeze-excite Mul
couple channels); a constant with the full channel dimension is a per-channel parameter of the
unit; a constant or activation of size 1 on that axis (or a scalar) broadcasts and stays.
"""
from __future__ import annotations

import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Flow, Role
from onnxprune.analysis.rules.common import T, norm_axis, not_axis, present, used_outputs
from onnxprune.analysis.rules.registry import rule

UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
         "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg",
         "Sqrt", "Reciprocal", "Cast", "Identity", "Dropout", "Floor", "Ceil", "Round", "Sign",
         "Sin", "Cos", "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Clip", "Swish")
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu",
             "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod")


@rule(*UNARY)
def unary(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Pass every channel through; extra inputs (Clip bounds, Dropout ratio) are constants."""
    x = node.input[0]
    space = ctx.space(x)
    flow = Flow()
    flow.consts.update(present(node.input[1:]))
    if space is None:  # a scalar, or a constant left unfolded: readers see the result opaque
        return flow
    for out in used_outputs(node):
        flow.output(out, space.axis, space.size).same(T(x), T(out), space.size)
    return flow


def _channel_axis(node, ctx, out_rank, out_shape):
    """The output axis that carries channels: that of the first non-broadcast activation
    (one with more than one channel if there is one)."""
    candidates = []
    for name in present(node.input):
        space = ctx.space(name)
        if space is not None:
            axis = space.axis + out_rank - ctx.rank(name)
            if out_shape[axis] == space.size:
                candidates.append((space.size == 1, axis))
    return min(candidates)[1] if candidates else None


def _couple_input(flow, ctx, name, out, axis, out_rank, size):
    shape = ctx.shape(name)
    in_axis = axis - (out_rank - len(shape))
    width = shape[in_axis] if in_axis >= 0 else 1
    if ctx.is_const(name):
        flow.consts.add(name)
        if in_axis >= 0 and width == size:
            flow.param(name, in_axis, Role.PASSTHROUGH, T(out), size=size)
        return None
    space = ctx.space(name)
    if space is None:  # an activation with no channel axis (a scalar) broadcasts
        return Block(f"input {name!r} has channels of unknown origin") if width > 1 else None
    if space.axis == in_axis and space.size == size:
        flow.same(T(name), T(out), size)
    elif width > 1:
        return Block("element-wise op combines channels laid out on different axes")
    else:
        flow.block(T(name), "broadcast across the channels of another tensor")
    return None


@rule(*BROADCAST)
def broadcast(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Inputs aligned numpy-style; see the module docstring."""
    out = node.output[0]
    out_shape = ctx.shape(out)
    axis = _channel_axis(node, ctx, len(out_shape), out_shape)
    if axis is None:
        return Block("no input carries the output's channels (all broadcast)")
    flow = Flow().output(out, axis, out_shape[axis])
    for name in present(node.input):
        blocked = _couple_input(flow, ctx, name, out, axis, len(out_shape), out_shape[axis])
        if blocked is not None:
            return blocked
    return flow


@rule("BatchNormalization", "InstanceNormalization")
def per_channel_norm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Per-channel statistics and affine parameters: all of them are sliced with the channel."""
    if len(used_outputs(node)) > 1:
        return Block(f"{node.op_type} in training mode (running-stat outputs)")
    x, out = node.input[0], node.output[0]
    space = ctx.space(x)
    if space.axis != 1:
        return Block(not_axis(node.op_type, space.axis))
    flow = Flow().output(out, 1, space.size).same(T(x), T(out), space.size)
    for name in present(node.input[1:]):
        if ctx.const(name) is None:
            return Block(f"{node.op_type} parameter {name} is not constant")
        flow.param(name, 0, Role.PASSTHROUGH, T(out), size=space.size)
    return flow


def _pass_but_block(x: str, out: str, space, reason: str) -> Flow:
    """Channel layout passes through (so later ops still see where channels are) but the
    channels cannot be removed: the op mixes them."""
    flow = Flow().output(out, space.axis, space.size).same(T(x), T(out), space.size)
    return flow.block(T(x), reason)


@rule("LayerNormalization")
def layer_norm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Statistics over axes [axis, rank): exact only if the channel axis is not among them."""
    x, out = node.input[0], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    flow = Flow()
    if space.axis >= norm_axis(ctx.attrs(node)["axis"], rank):
        flow = _pass_but_block(x, out, space, "LayerNormalization normalises over the channels: "
                               "removing one changes the statistics of the others")
    else:
        flow.output(out, space.axis, space.size).same(T(x), T(out), space.size)
    flow.consts.update(present(node.input[1:]))
    return flow


@rule("GroupNormalization")
def group_norm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    x, out = node.input[0], node.output[0]
    flow = _pass_but_block(x, out, ctx.space(x), "GroupNormalization shares statistics across "
                           "the channels of a group")
    flow.consts.update(present(node.input[1:]))
    return flow


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Along one axis (opset < 13: over all axes from `axis` on, flattened)."""
    x, out = node.input[0], node.output[0]
    space, rank = ctx.space(x), ctx.rank(x)
    default = -1 if ctx.opset >= 13 else 1
    axis = norm_axis(ctx.attrs(node).get("axis", default), rank)
    mixes = space.axis == axis if ctx.opset >= 13 else space.axis >= axis
    if mixes:
        return _pass_but_block(x, out, space, f"{node.op_type} normalises across the channels")
    return Flow().output(out, space.axis, space.size).same(T(x), T(out), space.size)
