"""A batch-free copy of a static-batch model, checked against per-sample runs.

Normalisation fixes every shape at the analysis batch (1), and exporters bake that batch into
Reshape targets (`[1, -1]` before a classifier, `[1, g, C/g, H, W]` in a channel shuffle).
Calibration, fine-tuning and batched benchmarks need the same graph at batch N. The one
general rewrite: make dim 0 of every graph input and output symbolic, and where a Reshape of a
batch-carrying tensor starts its constant target with the analysis batch, write 0 there (ONNX:
"copy the input's dim 0"). Whatever else ties the graph to batch 1 (a constant Concat'ed along
the batch axis, a Reshape that merges batch into another axis) is caught by `batch_free_check`,
which compares a batch-2 run with two batch-1 runs; callers then stay at batch 1.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.graph import graph_inputs
from onnxprune.model.runtime import random_inputs, session

BATCH = "batch"


def _static_batch(model: onnx.ModelProto) -> int | None:
    dims = {i.type.tensor_type.shape.dim[0].dim_value for i in graph_inputs(model)
            if len(i.type.tensor_type.shape.dim) > 0}
    return dims.pop() if len(dims) == 1 and 0 not in dims else None


def _batched_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors whose value depends on a graph input (in topological order, as ONNX requires)."""
    batched = {i.name for i in graph_inputs(model)}
    for node in model.graph.node:
        if any(name in batched for name in node.input):
            batched.update(node.output)
    return batched


def _drop_allowzero(node: onnx.NodeProto) -> None:
    kept = [a for a in node.attribute if a.name != "allowzero"]
    del node.attribute[:]
    node.attribute.extend(kept)


def _free_dim0(value_infos) -> None:
    for vi in value_infos:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = BATCH


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of `Constant` nodes holding a tensor (the TorchScript exporter writes Reshape
    targets that way when it keeps them out of the initializers)."""
    found = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def batch_free(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose batch dim is symbolic, or None when the inputs have no common static batch."""
    b0 = _static_batch(model)
    if b0 is None:
        return None
    free = onnx.ModelProto()
    free.CopyFrom(model)
    graph = free.graph
    inits = {i.name: i for i in graph.initializer}
    consts = _constant_nodes(graph)
    batched = _batched_tensors(free)
    for node in graph.node:
        if (node.op_type != "Reshape" or node.input[0] not in batched
                or (node.input[1] not in inits and node.input[1] not in consts)):
            continue
        held = inits.get(node.input[1])  # decode only Reshape targets, never the weights
        target = (numpy_helper.to_array(held) if held is not None
                  else np.array(consts[node.input[1]])).copy()
        if target.ndim != 1 or len(target) == 0 or target[0] != b0 or (target == 0).any():
            continue
        _drop_allowzero(node)  # without zeros in the target it changes nothing; 0 must copy
        target[0] = 0
        name = f"{node.input[1]}__batch_free_{node.name or id(node)}"
        graph.initializer.append(numpy_helper.from_array(target.astype(np.int64), name))
        node.input[1] = name
    _free_dim0(i for i in graph.input if i.name not in inits)
    _free_dim0(graph.output)
    del graph.value_info[:]
    return free


def batch_free_check(model: onnx.ModelProto, free: onnx.ModelProto, seed: int = 0,
                     tolerance: float = 1e-4) -> str | None:
    """None when `free` at batch 2 equals `model` run on each sample; else the reason."""
    samples = [random_inputs(model, seed + k) for k in range(2)]
    try:
        fixed = session(model, optimize=False, quiet=True)
        singles = [fixed.run(None, s) for s in samples]
        stacked = {n: np.concatenate([s[n] for s in samples]) for n in samples[0]}
        both = session(free, optimize=False, quiet=True).run(None, stacked)
    except Exception as exc:  # onnxruntime raises its own types; any failure means "no"
        return f"batch 2 does not run: {str(exc).splitlines()[0][:200]}"
    for k, out in enumerate(both):
        reference = np.concatenate([s[k] for s in singles])
        if out.shape != reference.shape:
            return f"output {k} has shape {out.shape} at batch 2, expected {reference.shape}"
        scale = max(1.0, float(np.abs(reference).max(initial=0)))
        if float(np.abs(out - reference).max(initial=0)) > tolerance * scale:
            return f"output {k} at batch 2 differs from two batch-1 runs"
    return None


def make_batch_free(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(batch-free model, None) when the rewrite is proven on random inputs; else
    (the original model, reason)."""
    free = batch_free(model)
    if free is None:
        return model, "the inputs have no common static batch size"
    reason = batch_free_check(model, free)
    return (free, None) if reason is None else (model, reason)

