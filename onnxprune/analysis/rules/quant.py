"""QDQ models: QuantizeLinear / DequantizeLinear, and weights stored quantized.

A weight in the QDQ format is `DequantizeLinear(data, scale, zero_point, axis)` of initializers
(`context.dequantized_constants`). Rules read its output as a constant (`Ctx.const` gives the
dequantized value), so Conv / Gemm / MatMul / element-wise rules work unchanged; their
declarations on it are then moved onto the stored data by `through_dequantize`: same axis, same
role. Where that axis is the DequantizeLinear axis, the per-channel scale and zero point are
declared on their axis 0 with the same role too (they slice with their weight); per-tensor ones
stay as they are. An int32 bias dequantized with per-channel scales is the same case.

On activations, a per-tensor QuantizeLinear / DequantizeLinear passes every channel through
(like Relu): removing a channel does not change the others' quantization. Per-channel scale and
zero point on the channel axis are per-channel parameters of the unit; on another axis the node
blocks. QOperator ops (QLinearConv ...) are refused at loading (normalize.py).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Flow, Key, ParamDecl, Role, param_key
from onnxprune.analysis.rules.common import T, norm_axis, present
from onnxprune.analysis.rules.registry import rule


@rule("QuantizeLinear", "DequantizeLinear")
def quantize_linear(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Activations: per-tensor passes channels; per-channel on the channel axis are parameters.
    A DequantizeLinear of initializers declares nothing: its readers see a constant."""
    x, out, qparams = node.input[0], node.output[0], present(node.input[1:3])
    flow = Flow()
    flow.consts.update(qparams)
    if out in ctx.dequantized:
        flow.consts.add(x)
        return flow
    space = ctx.space(x)
    if space is None:
        if ctx.is_const(x):  # Q(float weight) at run time, or a blocked / odd-shaped scale
            return Block(f"{node.op_type} of a constant that is not a weight stored quantized "
                         "(DequantizeLinear of integer initializers, per-tensor or per-channel)")
        return flow  # a scalar: no channels
    values = [ctx.const(name) for name in qparams]
    attrs = ctx.attrs(node)
    if any(v is None for v in values) or attrs.get("block_size", 0):
        return Block(f"{node.op_type} with a non-constant or blocked scale or zero point")
    flow.output(out, space.axis, space.size).same(T(x), T(out), space.size)
    if values[0].size == 1:
        return flow
    axis = norm_axis(attrs.get("axis", 1), ctx.rank(x))
    if axis != space.axis:
        return Block(f"per-channel {node.op_type} along axis {axis}, but the channels are on "
                     f"axis {space.axis}")
    for name in qparams:
        flow.param(name, 0, Role.PASSTHROUGH, T(out), size=space.size)
    return flow


def through_dequantize(flow: Flow, ctx: Ctx) -> Flow:
    """`flow` with every declaration on a weight stored quantized moved onto its stored data
    (and per-channel scale / zero point, module docstring); other declarations as they are."""
    if not any(decl.initializer in ctx.dequantized for decl in flow.params):
        return flow
    rename: dict[Key, Key] = {}
    params: list[ParamDecl] = []
    links = []
    for decl in flow.params:
        dq = ctx.dequantized.get(decl.initializer)
        if dq is None:
            params.append(decl)
            continue
        data = param_key(dq.data, decl.axis)
        rename[param_key(decl.initializer, decl.axis)] = data
        params.append(ParamDecl(dq.data, decl.axis, decl.role))
        if dq.axis != decl.axis:
            continue
        idx = np.arange(ctx.shape(dq.data)[decl.axis])
        for name in present([dq.scale, dq.zero_point]):
            params.append(ParamDecl(name, 0, decl.role))
            links.append((param_key(name, 0), idx, data, idx))
    links = [(rename.get(a, a), a_idx, rename.get(b, b), b_idx)
             for a, a_idx, b, b_idx in flow.links] + links
    blocks = [(rename.get(key, key), reason, idx) for key, reason, idx in flow.blocks]
    return replace(flow, params=params, links=links, blocks=blocks)
