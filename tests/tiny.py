"""Tiny graph factories for the per-rule tests, and helpers to read their channel units."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis.flow import param_key, tensor_key
from onnxprune.api import analyze, random_plan
from onnxprune.rewrite.surgery import apply_plan
from onnxprune.verify.oracle import verify

node = helper.make_node
_RNG = np.random.default_rng(0)


def make(nodes, inputs: dict, outputs: list[str], inits: dict | None = None, opset: int = 17):
    """A model from nodes; `inits` values are arrays, or shapes to fill with random floats."""
    tensors = []
    for name, value in (inits or {}).items():
        if isinstance(value, tuple):
            value = _RNG.standard_normal(value).astype(np.float32)
        tensors.append(numpy_helper.from_array(np.asarray(value), name))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8

    return model


def conv(x, out, w, c_in, c_out, k=1, group=1, bias=None):
    """A Conv node plus the weight shape it needs: (node, {w: shape})."""
    inputs = [x, w] + ([bias] if bias else [])
    n = node("Conv", inputs, [out], group=group, kernel_shape=[k, k], pads=[k // 2] * 4)
    shapes = {w: (c_out, c_in // group, k, k)}
    if bias:
        shapes[bias] = (c_out,)
    return n, shapes


class Units:
    """Component labels of each channel space of an analysed model."""

    def __init__(self, model):
        self.analysis = analyze(model)
        self.channels = self.analysis.channels

    def of(self, tensor: str) -> np.ndarray:
        return self.channels.labels[self.channels.nodes(tensor_key(tensor))]

    def of_param(self, name: str, axis: int) -> np.ndarray:
        return self.channels.labels[self.channels.nodes(param_key(name, axis))]

    def has_param(self, name: str, axis: int) -> bool:
        return param_key(name, axis) in self.channels.spaces

    def blocked(self, tensor: str) -> np.ndarray:
        return self.channels.blocked[self.of(tensor)]

    def reasons(self, tensor: str) -> list[str]:
        """Structural blocking reasons of the units holding `tensor`'s channels."""
        return self._per_unit(tensor, self.channels.reasons)

    def rule_errors(self, tensor: str) -> list[str]:
        """Rule errors (bugs in a rule) that block the units holding `tensor`'s channels."""
        return self._per_unit(tensor, self.channels.rule_error_reasons)

    def _per_unit(self, tensor: str, found: dict[int, list[str]]) -> list[str]:
        return sorted({r for c in np.unique(self.of(tensor)) for r in found.get(int(c), [])})

    def distinct(self, tensor: str) -> bool:
        return len(np.unique(self.of(tensor))) == len(self.of(tensor))


def prunes_exactly(model, plans: int = 4, seed: int = 0) -> int:
    """Apply random plans and check the oracle on each; returns how many removed something."""
    analysis = analyze(model)
    rng = np.random.default_rng(seed)
    effective = 0
    for _ in range(plans):
        removed = random_plan(analysis, rng)
        pruned, slices = apply_plan(analysis.channels, removed)
        verify(analysis.model, pruned, slices, runs=1, seed=seed)
        effective += bool(slices)
    return effective


def small_resnet(width: int = 16, classes: int = 10, size: int = 16, batch="N"):
    """Stem, a residual block, a strided stage with a projection shortcut, GAP-Flatten-Gemm."""
    w2 = 2 * width
    parts = [conv("input", "s", "ws", 3, width, k=3, bias="bs"),
             conv("sr", "a1", "wa1", width, width, k=3, bias="ba1"),
             conv("a1r", "a2", "wa2", width, width, k=3, bias="ba2"),
             conv("r1", "p", "wp", width, w2, bias="bp"),
             conv("r1", "c1", "wc1", width, w2, k=3, bias="bc1"),
             conv("c1r", "c2", "wc2", w2, w2, k=3, bias="bc2")]
    nodes = [n for n, _ in parts]
    inits = {k: v for _, shapes in parts for k, v in shapes.items()}
    for n in (nodes[3], nodes[4]):
        n.attribute.append(helper.make_attribute("strides", [2, 2]))
    nodes += [node("Relu", ["s"], ["sr"]), node("Relu", ["a1"], ["a1r"]),
              node("Add", ["a2", "sr"], ["r0"]), node("Relu", ["r0"], ["r1"]),
              node("Relu", ["c1"], ["c1r"]), node("Add", ["c2", "p"], ["r2"]),
              node("Relu", ["r2"], ["r3"]), node("GlobalAveragePool", ["r3"], ["g"]),
              node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1)]
    inits.update({"wf": (classes, w2), "bf": (classes,)})
    order = ["s", "sr", "a1", "a1r", "a2", "r0", "r1", "p", "c1", "c1r", "c2", "r2", "r3", "g",
             "f", "logits"]
    nodes.sort(key=lambda n: order.index(n.output[0]))
    return make(nodes, {"input": [batch, 3, size, size]}, ["logits"], inits)


def zero_sinks(model, slices):
    """The report's oracle recipe in plain onnx + numpy, in place: every removed sink index of
    the report's `slices` set to zero (the masked original)."""
    inits = {i.name: i for i in model.graph.initializer}
    for s in slices:
        if s["role"] in ("sink", "mask"):
            value = numpy_helper.to_array(inits[s["initializer"]]).copy()
            np.moveaxis(value, s["axis"], 0)[s["removed"]] = 0
            inits[s["initializer"]].CopyFrom(numpy_helper.from_array(value, s["initializer"]))
    return model


def attention(heads: int = 4, head_dim: int = 4, tokens: int = 5, fused: bool = True,
              bias_table: bool = False):
    """x [1,C,N] -> tokens [1,N,C] -> multi-head self-attention as timm's ViT exports it ->
    proj -> y (a graph input's channels are on axis 1, hence the Transpose: a patch embedding).

    Fused: qkv = x @ Wqkv + b, Reshape [1,N,3,H,Dh], Transpose (2,0,3,1,4), Split into q, k, v,
    Squeeze. Separate: q / k / v = x @ W + b, each Reshape [1,N,H,Dh], Transpose (0,2,1,3).
    Then (q * scale) @ kT [+ a per-head bias table], Softmax, @ v, Transpose, Reshape [1,N,C],
    @ Wproj. Tensor names: q, k, v (heads on axis 1), attn, ctx, merged."""
    c, n = heads * head_dim, tokens
    nodes = [node("Transpose", ["x"], ["tokens"], perm=[0, 2, 1])]
    inits = {"scale": np.array(head_dim ** -0.5, np.float32),
                        "proj_w": (c, c), "merge_shape": np.array([1, n, c], np.int64)}
    if fused:
        inits.update({"qkv_w": (c, 3 * c), "qkv_b": (3 * c,), "split": np.ones(3, np.int64),
                      "axis0": np.zeros(1, np.int64),
                      "qkv_shape": np.array([1, n, 3, heads, head_dim], np.int64)})
        nodes += [node("MatMul", ["tokens", "qkv_w"], ["qkv_mm"]),
                  node("Add", ["qkv_mm", "qkv_b"], ["qkv"]),
                  node("Reshape", ["qkv", "qkv_shape"], ["qkv5"]),
                  node("Transpose", ["qkv5"], ["qkvt"], perm=[2, 0, 3, 1, 4]),
                  node("Split", ["qkvt", "split"], ["qs", "ks", "vs"], axis=0)]
        nodes += [node("Squeeze", [f"{t}s", "axis0"], [t]) for t in "qkv"]
    else:
        inits["head_shape"] = np.array([1, n, heads, head_dim], np.int64)
        for t in "qkv":
            inits.update({f"{t}_w": (c, c), f"{t}_b": (c,)})
            nodes += [node("MatMul", ["tokens", f"{t}_w"], [f"{t}_mm"]),
                      node("Add", [f"{t}_mm", f"{t}_b"], [f"{t}_lin"]),
                      node("Reshape", [f"{t}_lin", "head_shape"], [f"{t}4"]),
                      node("Transpose", [f"{t}4"], [t], perm=[0, 2, 1, 3])]
    nodes += [node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              node("Mul", ["q", "scale"], ["qs_"]), node("MatMul", ["qs_", "kt"], ["scores"])]
    if bias_table:
        inits["table"] = (1, heads, n, n)
        nodes.append(node("Add", ["scores", "table"], ["biased"]))
    nodes += [node("Softmax", ["biased" if bias_table else "scores"], ["attn"], axis=-1),
              node("MatMul", ["attn", "v"], ["ctx"]),
              node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              node("Reshape", ["ctxt", "merge_shape"], ["merged"]),
              node("MatMul", ["merged", "proj_w"], ["y"])]
    return make(nodes, {"x": [1, c, n]}, ["y"], inits)
