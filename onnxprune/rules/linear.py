"""Gemm and MatMul with a constant weight: input features are sunk, output features produced.

Flatten -> Gemm needs nothing special: the Flatten rule maps channel c to the feature block
[c*HW, (c+1)*HW), and Gemm sinks those columns of B.
"""
from __future__ import annotations

from ..flow import Block, Flow, Role
from .common import T, not_axis
from .registry import rule


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
def gemm(node, ctx):
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
def matmul(node, ctx):
    """A[..., K] @ W[K, N]: sink W[k], producer W[:, n]; channels on A's batch axes pass."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    weight = ctx.const(b)
    if weight is None or weight.ndim != 2:
        return Block("MatMul of two activations (or with a batched weight) mixes channels")
    space, rank_a, rank_out = ctx.space(a), ctx.rank(a), ctx.rank(out)
    n = weight.shape[1]
    if space.axis == rank_a - 1:
        flow = Flow().output(out, rank_out - 1, n)
        flow.param(b, 1, Role.PRODUCER, T(out), size=n)
        return flow.param(b, 0, Role.SINK, T(a), size=space.size)
    flow = Flow().output(out, space.axis + rank_out - rank_a, space.size)
    flow.consts.add(b)
    return flow.same(T(a), T(out), space.size)
