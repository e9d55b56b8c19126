"""A float64 second opinion for the oracle.

Some trained models amplify float32 rounding so much that two runs of the *same* model differ
by more than the oracle's tolerance (a recogniser fed random-normal images: 1e-7 of input noise
moved its output by 7.5e-5). When the float32 comparison fails, the oracle re-runs pruned and
reference models in float64 with onnx's reference evaluator, where rounding noise is ~1e-16 and
a real pruning error stays as large as it was.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxprune.model import external

_LOW = (TensorProto.FLOAT, TensorProto.FLOAT16)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64 (float32 / float16 tensors, I/O and casts become
    double)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type in _LOW:
            init.CopyFrom(numpy_helper.from_array(external.value(init).astype(np.float64),
                                                  init.name))
    for vi in list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type in _LOW:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i in _LOW:
                attr.i = TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _LOW:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
    return out


def run_float64(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    evaluator = ReferenceEvaluator(to_float64(model))
    feeds64 = {k: v.astype(np.float64) if v.dtype in (np.float32, np.float16) else v
               for k, v in feeds.items()}
    return evaluator.run(None, feeds64)
