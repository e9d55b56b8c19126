"""Work on a model without dragging its weights through protobuf serialisation.

Shape inference, the checker and onnxruntime all serialise the whole model; for a 500 MB VGG
that dominates the run time. `detach` turns every large initializer into a graph input of the
same type and shape, so those tools see a light graph; the weights travel as numpy arrays
(fed to onnxruntime as inputs) and `attach` puts them back as initializers.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.model.external import LAZY_MIN_ELEMENTS, value

LARGE = LAZY_MIN_ELEMENTS  # elements (1 MB of float32); shape and index constants stay light


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the graph's initializers and nodes."""
    light = onnx.ModelProto()
    graph = model.graph
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.producer_name = model.producer_name
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    return light


def detach(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """(light model whose large initializers are graph inputs, those initializers)."""
    light = _shell(model)
    large = []
    declared = {i.name for i in light.graph.input}
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) >= LARGE:
            large.append(init)
            if init.name not in declared:
                light.graph.input.append(
                    helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            light.graph.initializer.append(init)
    return light, large


def attach(light: onnx.ModelProto, large: list[onnx.TensorProto]) -> onnx.ModelProto:
    """Inverse of `detach` (the light model is modified and returned)."""
    names = {t.name for t in large}
    inputs = [i for i in light.graph.input if i.name not in names]
    del light.graph.input[:]
    light.graph.input.extend(inputs)
    light.graph.initializer.extend(large)
    return light


def feeds_of(large: list[onnx.TensorProto]) -> dict[str, np.ndarray]:
    return {t.name: value(t) for t in large}


def infer_shapes(model: onnx.ModelProto, data_prop: bool = True) -> onnx.ModelProto:
    """ONNX shape inference on the light graph; value_info copied back onto `model`."""
    light, _ = detach(model)
    del light.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=data_prop)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    names = {o.name: o for o in inferred.graph.output}
    for out in model.graph.output:
        if out.name in names:
            out.CopyFrom(names[out.name])
    return model


def check(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape-inference check, on the light graph."""
    light, _ = detach(model)
    onnx.checker.check_model(light, full_check=True)
