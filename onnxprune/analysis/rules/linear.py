"""Gemm and MatMul with a constant weight: input features are sunk, output features produced.

Flatten -> Gemm needs nothing special: the Flatten rule maps channel c to the feature block
[c*HW, (c+1)*HW), and Gemm sinks those columns of B.
"""
from __future__ import annotations

import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Flow, Role
from onnxprune.analysis.rules.common import T, not_axis
from onnxprune.analysis.rules.registry import rule


def _bias(flow: Flow, ctx, c: str, out: str, n: int) -> Flow | Block:
    """Gemm's C broadcasts to [M, N]: a per-feature C is a producer; scalars stay."""
    value = ctx.const(c)
    if value is None:
        return Block("Gemm with a non-constant C")
    flow.consts.add(c)
    if value.ndim >= 1 and value.shape[-1] == n and n > 1:
        flow.param(c, value.ndim - 1, Role.PRODUCER, T(out), size=n)
    return flow


@rule("Gemm")
def gemm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Y = A' B' + C. Sink: B's K axis; producer: B's N axis and a per-feature C."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    attrs = ctx.attrs(node)
    weight = ctx.const(b)
    if weight is None:
        return Block("Gemm with a non-constant B")
    k_axis, n_axis = (1, 0) if attrs["transB"] else (0, 1)
    n = weight.shape[n_axis]
    flow = Flow().output(out, 1, n).param(b, n_axis, Role.PRODUCER, T(out), size=n)
    space = ctx.space(a)
    want = 0 if attrs["transA"] else 1
    if space.axis == want:
        flow.param(b, k_axis, Role.SINK, T(a), size=space.size)
    else:
        flow.block(T(a), not_axis("Gemm", space.axis, want))
    if len(node.input) > 2 and node.input[2]:
        return _bias(flow, ctx, node.input[2], out, n)
    return flow


@rule("MatMul")
def matmul(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """A[..., K] @ W[K, N]: sink W[k], producer W[:, n]; channels on A's batch axes pass."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    weight = ctx.const(b)
    if weight is None and not ctx.is_const(a):
        return _matmul_activations(node, ctx)
    if weight is None or weight.ndim != 2:
        return Block("MatMul with a constant left operand or a batched weight")
    space, rank_a, rank_out = ctx.space(a), ctx.rank(a), ctx.rank(out)
    n = weight.shape[1]
    if space.axis == rank_a - 1:
        flow = Flow().output(out, rank_out - 1, n)
        flow.param(b, 1, Role.PRODUCER, T(out), size=n)
        return flow.param(b, 0, Role.SINK, T(a), size=space.size)
    flow = Flow().output(out, space.axis + rank_out - rank_a, space.size)
    flow.consts.add(b)
    return flow.same(T(a), T(out), space.size)


# why `_matmul_activations` blocks: a Reshape that put these channels on its finest axis is
# mapped on its next one in a second pass (units.find_channels: attention heads)
SUMMED = "MatMul sums over the channels of both operands"
APART = "MatMul operands carry channels on different axes"
NOT_OUTPUT = "MatMul sums over these channels or they are not the output's"
ACTIVATION_PRODUCT = (SUMMED, APART, NOT_OUTPUT)


def _side(ctx, name: str, out_rank: int, contracted: int, kept: int):
    """(space, aligned output axis) of a MatMul operand, or (space, None) when its channels
    are on the summed axis K."""
    space, rank = ctx.space(name), ctx.rank(name)
    if space is None or space.axis == rank + contracted:
        return space, None
    if space.axis == rank + kept:
        return space, out_rank + kept
    return space, space.axis + out_rank - rank


def _matmul_activations(node, ctx):
    """A[.., M, K] @ B[.., K, N] (attention). Channels on A's M axis, B's N axis or a shared
    batch axis (heads) pass to the output; channels summed over K are blocked: with no weight
    to slice, removing them is not a masking of the original (see verify.py)."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    out_shape = ctx.shape(out)
    if ctx.rank(a) < 2 or ctx.rank(b) < 2:
        return Block("MatMul with a vector operand")
    sa, oa = _side(ctx, a, len(out_shape), -1, -2)
    sb, ob = _side(ctx, b, len(out_shape), -2, -1)
    axis = oa if oa is not None else ob
    if axis is None and ctx.head_dims and sa.size == sb.size:
        return _masked_product(node, ctx)
    if axis is None:
        return Block(SUMMED)
    flow = Flow().output(out, axis, out_shape[axis])
    for name, space, aligned in ((a, sa, oa), (b, sb, ob)):
        if aligned == axis and space.size == out_shape[axis]:
            flow.same(T(name), T(out), space.size)
            continue
        in_axis = axis - (len(out_shape) - ctx.rank(name))
        if 0 <= in_axis < ctx.rank(name) - 2 and ctx.shape(name)[in_axis] > 1:
            return Block(APART)
        flow.block(T(name), NOT_OUTPUT)
    return flow


def _masked_product(node, ctx):
    """q @ kT with attention units of head dims: q's channel j and k's channel j are one
    channel, summed here with no weight; the pruned product drops the term, which equals
    zeroing both (`Flow.mask`). The product (the attention map) has no channel of theirs."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    size = ctx.space(a).size
    rank = ctx.rank(out)
    flow = Flow().output(out, rank - 1, ctx.shape(out)[-1]).same(T(a), T(b), size)
    flow.block(T(out), "the product of two activations has no channels of theirs")
    return flow.mask(a).mask(b)

