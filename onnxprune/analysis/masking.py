"""Which ops keep a masked unit exact: zero channels in, zero channels out.

A unit whose channels a product of two activations sums (q @ kT over the head dims,
`Flow.mask`) has no weight there to slice; the oracle's reference removes it by zeroing its
producer and per-channel parameters (role `mask`). That equals removal only if every node
between those parameters and the product maps zero channels to zero channels; units.py blocks
a masked unit that passes any other node.
"""
from __future__ import annotations

import onnx

from onnxprune.analysis.flow import Flow
from onnxprune.analysis.rules.contrib import standard_op_type

# ops that give zero channels from zero channels once the unit's own producer and per-channel
# parameters are zeroed (the reference of a masked unit; Add / Sub / Div: see keeps_zero)
_ZERO_KEEPING = frozenset({
    "MatMul", "Gemm", "Conv", "ConvTranspose", "BatchNormalization", "Reshape", "Flatten",
    "Transpose", "Split", "Squeeze", "Unsqueeze", "Gather", "Slice", "Concat", "Identity",
    "Dropout", "Cast", "Relu", "Mul", "MaxPool", "AveragePool"})


def keeps_zero(node: onnx.NodeProto, flow: Flow, ctx) -> bool:
    """Whether the node's channel outputs are zero where its channel inputs are (a masked
    unit's path from its producers to the product that sums it). Add / Sub keep zero when
    every constant operand is a per-channel parameter (zeroed too), Div when its divisor is a
    constant that is not (a scalar)."""
    op = standard_op_type(node)
    declared = {d.initializer for d in flow.params}
    consts = [n for n in node.input if n and ctx.is_const(n)]
    if op in ("Add", "Sub"):
        return all(n in declared for n in consts)
    if op == "Div":
        return len(node.input) > 1 and ctx.is_const(node.input[1]) and node.input[1] not in declared
    return op in _ZERO_KEEPING
