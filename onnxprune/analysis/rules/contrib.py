"""onnxruntime's contrib ops, as its graph optimisers write them (`optimized_model_filepath`,
extended level; `onnxruntime.transformers.optimizer`): each is a standard op, or a short chain
of standard ops, with the same inputs. A rule here rewrites the node into that *standard form*
and runs the standard rules on it, so no channel rule is stated twice:

- FusedConv = Conv(X, W, B) [+ Z], then `activation`; FusedGemm = Gemm, then `activation`;
- FusedMatMul / TransposeMatMul = MatMul of operands transposed by transA / transB /
  transBatchA / transBatchB (alpha scales): the MatMul rule reads them through a transposed view;
- BiasGelu, FastGelu, BiasAdd: element-wise with a bias broadcast on the last axis (a
  per-channel parameter where the channels are on that axis); Gelu, QuickGelu: unary;
- SkipLayerNormalization (and its Simplified form) = Add(input, skip, bias), then
  LayerNormalization over the last axis; SimplifiedLayerNormalization (onnxruntime registers it
  in the standard domain) = LayerNormalization: channels normalised together stay blocked.

Attributes the standard rule fixes (a grouped FusedConv's `group`) are fixed on the real node;
every other attribute stays as written. The oracle runs these ops in onnxruntime.
"""
from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from onnxprune.analysis.context import Ctx, Space
from onnxprune.analysis.flow import Block, Flow, Key, ParamDecl, ParamKey, param_key
from onnxprune.analysis.rules.conv import conv
from onnxprune.analysis.rules.linear import gemm, matmul
from onnxprune.analysis.rules.pointwise import broadcast, layer_norm, unary
from onnxprune.analysis.rules.registry import Rule, find_rule, op_key, op_name, rule

MS = "com.microsoft"
# the standard op each fused contrib op computes before its activation
_COMPUTES = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul",
             "TransposeMatMul": "MatMul"}

Step = tuple[onnx.NodeProto, Rule]

rule("BiasGelu", "FastGelu", "BiasAdd", domain=MS)(broadcast)
rule("Gelu", "QuickGelu", domain=MS)(unary)


def standard_op_type(node: onnx.NodeProto) -> str:
    """The standard op a node computes, for whoever counts ops by type (M and MACs count Conv /
    Gemm / MatMul outputs: a FusedConv is a Conv); `domain::op_type` for other custom ops, so
    a plugin named "Conv" is never taken for one."""
    domain = op_key((node.domain, node.op_type))[0]
    if domain == MS and node.op_type in _COMPUTES:
        return _COMPUTES[node.op_type]
    return op_name(node)


def standard(node: onnx.NodeProto, op_type: str, inputs: Sequence[str],
             outputs: Sequence[str]) -> onnx.NodeProto:
    """`node` as the standard op `op_type`: same name and attributes, the given tensors."""
    form = helper.make_node(op_type, list(inputs), list(outputs), name=node.name)
    form.attribute.extend(node.attribute)
    return form


def _merge(flow: Flow, step: Flow) -> None:
    flow.outputs.update(step.outputs)
    flow.links.extend(step.links)
    flow.params.extend(step.params)
    flow.consts |= step.consts
    flow.blocks.extend(step.blocks)
    if step.fixup is not None:
        if flow.fixup is not None:
            raise ValueError("two steps of a standard form fix up the node")
        flow.fixup = step.fixup


def chain(ctx: Ctx, steps: Sequence[Step]) -> Flow | Block:
    """Run standard rules in order, each seeing the spaces the earlier ones declared; their
    answers together are the node's. A step's tensors are the node's real tensors."""
    flow, view = Flow(), ctx
    for form, fn in steps:
        result = fn(form, view)
        if isinstance(result, Block):
            return result
        _merge(flow, result)
        view = view.view(declared={name: Space(axis, size)
                                   for name, (axis, size) in result.outputs.items()})
    return flow


def _activation(node: onnx.NodeProto, out: str) -> Step | Block:
    """The fused `activation` applied to `out` in place, with the rule of that standard op."""
    act = helper.get_attribute_value(next(a for a in node.attribute if a.name == "activation"))
    form = helper.make_node(act.decode(), [out], [out], name=node.name)
    if find_rule(form) is not unary:
        return Block(f"{node.op_type} activation {form.op_type} is not an element-wise op")
    return form, unary


def _fused(node: onnx.NodeProto, ctx: Ctx, first: Sequence[Step]) -> Flow | Block:
    steps = list(first)
    if any(a.name == "activation" for a in node.attribute):
        act = _activation(node, node.output[0])
        if isinstance(act, Block):
            return act
        steps.append(act)
    return chain(ctx, steps)


@rule("FusedConv", domain=MS)
def fused_conv(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Conv(X, W, B), plus Z (a residual added before the activation), then `activation`."""
    out = node.output[0]
    steps: list[Step] = [(standard(node, "Conv", node.input[:3], [out]), conv)]
    if len(node.input) > 3 and node.input[3]:
        steps.append((standard(node, "Add", [out, node.input[3]], [out]), broadcast))
    return _fused(node, ctx, steps)


@rule("FusedGemm", domain=MS)
def fused_gemm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """Gemm, then `activation`."""
    return _fused(node, ctx, [(standard(node, "Gemm", node.input, node.output[:1]), gemm)])


def _perm(rank: int, batch: int, trans: int) -> tuple[int, ...]:
    """onnxruntime's order: transBatch moves axis 0 just before the last, trans swaps the two
    last axes."""
    perm = list(range(rank))
    if rank < 2:
        return tuple(perm)
    if batch:
        perm = perm[1:-1] + [0, rank - 1]
    if trans:
        perm[-2], perm[-1] = perm[-1], perm[-2]
    return tuple(perm)


def _unpermute(flow: Flow, perms: dict[str, tuple[int, ...]]) -> Flow:
    """Initializer axes the rule declared on the transposed view, back on the real tensor."""
    def key(k: Key) -> Key:
        if isinstance(k, ParamKey) and k.initializer in perms:
            return param_key(k.initializer, perms[k.initializer][k.axis])
        return k
    flow.params = [ParamDecl(d.initializer, perms[d.initializer][d.axis], d.role)
                   if d.initializer in perms else d for d in flow.params]
    flow.links = [(key(a), ai, key(b), bi) for a, ai, b, bi in flow.links]
    flow.blocks = [(key(k), reason, idx) for k, reason, idx in flow.blocks]
    return flow


@rule("FusedMatMul", "TransposeMatMul", domain=MS)
def fused_matmul(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """alpha · op(A) @ op(B), op a transpose: MatMul's rule on the transposed operands."""
    attrs = ctx.attrs(node)
    sides = [(name, _perm(ctx.rank(name), attrs.get(f"transBatch{side}", 0),
                          attrs.get(f"trans{side}", 0)))
             for name, side in zip(node.input[:2], "AB")]
    if sides[0][0] == sides[1][0] and sides[0][1] != sides[1][1]:
        return Block(f"{node.op_type} reads one tensor transposed two ways")
    perms = {name: perm for name, perm in sides if perm != tuple(range(len(perm)))}
    result = matmul(standard(node, "MatMul", node.input[:2], node.output[:1]), ctx.view(perms))
    return _unpermute(result, perms) if isinstance(result, Flow) else result


def _skip_layer_norm(bias_slot: int, norm_inputs: slice):
    """Add(input, skip, bias) into the sum output (or the output), then LayerNormalization over
    the last axis into the output. Mean and inverse-deviation outputs are left undeclared:
    whoever reads them sees them blocked."""
    def fn(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
        out = node.output[0]
        total = node.output[3] if len(node.output) > 3 and node.output[3] else out
        bias = [node.input[bias_slot]] if len(node.input) > bias_slot else []
        add = standard(node, "Add", [n for n in node.input[:2] + bias if n], [total])
        norm = standard(node, "LayerNormalization", [total] + list(node.input[norm_inputs]),
                        [out])
        return chain(ctx, [(add, broadcast), (norm, layer_norm)])
    return fn


rule("SkipLayerNormalization", domain=MS)(_skip_layer_norm(4, slice(2, 4)))
rule("SkipSimplifiedLayerNormalization", domain=MS)(_skip_layer_norm(3, slice(2, 3)))


@rule("SimplifiedLayerNormalization")
@rule("LayerNormalization", "SimplifiedLayerNormalization", domain=MS)
def contrib_layer_norm(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block:
    """LayerNormalization's rule, with its defaults (axis -1) whatever the opset."""
    return layer_norm(standard(node, "LayerNormalization", node.input, node.output[:1]), ctx)
