"""The per-layer latency table: each compute layer timed alone at narrower widths.

Every Conv / ConvTranspose / Gemm / MatMul whose weight is an initializer becomes a one-node
model with the node's real attributes, input shape and weight shape, narrowed to the kept
fractions GRID of its input and output channels (5 x 5 widths; an axis nothing can prune is
not varied), and is timed on the chosen backend. The widths of one layer run interleaved with a
trivial probe model, so drift cancels and the backend's per-call overhead (the probe's median)
is subtracted. Grouped and depthwise convolutions lose whole groups (the group count scales
with the output fraction), so their latency depends on one fraction only.

Noise makes small layers non-monotone: each grid is made monotone (the mean of the running
minimum from the full width down and the running maximum from the narrowest width up, so the
correction is not biased either way).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.analysis.cost import COMPUTE_OPS
from onnxprune.bench.onnxruntime import interleave
from onnxprune.config import LatencyConfig
from onnxprune.model.graph import input_specs
from onnxprune.model.runtime import random_feeds

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)   # kept fractions of input / output channels


@dataclass(frozen=True)
class Layer:
    """One timed node: which weight axes carry its input and output channels."""
    node: str                 # the node's first output (unique in the graph)
    op: str
    weight: str               # the initializer whose kept axes give the fractions
    in_axis: int | None       # None: not varied (grouped convs, or nothing prunes it)
    out_axis: int | None


@dataclass
class LayerTable:
    layers: list[Layer]
    values: np.ndarray        # ms, [layer, input fraction, output fraction] over GRID
    model_ms: float           # the whole model, end to end
    overhead_ms: float        # the backend's per-call overhead (trivial model)
    cached: bool = False
    path: Path | None = None
    seconds: float = 0.0      # spent building (0 on a cache hit, apart from loading)


@dataclass(frozen=True)
class LayerSpec:
    """What a layer's one-node models are built from."""
    layer: Layer
    node: onnx.NodeProto
    x_shape: tuple[int, ...]
    x_axis: int               # the axis of the input that holds its channels
    w_shape: tuple[int, ...]
    w_in_axis: int            # the weight axes of the input and output channels
    w_out_axis: int
    bias_shape: tuple[int, ...] | None
    dtype: int                # TensorProto element type of the weight
    group: int
    opset: int


def layer_spec(node: onnx.NodeProto, shapes: dict, inits: dict, model_opset: int,
               prunable: Callable[[str, int], bool]) -> LayerSpec | None:
    """None for nodes the table does not describe (their time falls into the residual)."""
    if (node.op_type not in COMPUTE_OPS or len(node.input) < 2 or node.input[1] not in inits
            or node.input[0] in inits or node.input[0] not in shapes):
        return None
    x, w = shapes[node.input[0]], tuple(inits[node.input[1]].dims)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    group = int(attrs.get("group", 1))
    if node.op_type in ("Conv", "ConvTranspose"):
        if len(x) < 3 or len(w) != len(x):
            return None
        geometry = (1, 0) if node.op_type == "Conv" else (0, 1)
        axes = (None, 0) if group > 1 else geometry  # grouped: whole groups, on weight axis 0
        x_axis = 1
    elif node.op_type == "Gemm":
        if len(x) != 2 or len(w) != 2:
            return None
        geometry = axes = (1, 0) if attrs.get("transB", 0) else (0, 1)
        x_axis = 0 if attrs.get("transA", 0) else 1
    else:  # MatMul with a 2-D constant right-hand side
        if len(w) != 2 or len(x) < 2:
            return None
        geometry = axes = (0, 1)
        x_axis = len(x) - 1
    bias = None
    if len(node.input) > 2 and node.input[2] in inits:
        bias = tuple(inits[node.input[2]].dims)
    axes = tuple(a if a is not None and prunable(node.input[1], a) else None for a in axes)
    layer = Layer(node.output[0], node.op_type, node.input[1], *axes)
    return LayerSpec(layer, node, tuple(x), x_axis, w, *geometry, bias,
                 inits[node.input[1]].data_type, group, model_opset)


def _scaled(n: int, f: float) -> int:
    return max(1, round(n * f))


def _narrowed(spec: LayerSpec, f_in: float, f_out: float):
    """(input shape, weight shape, bias shape, group) at the kept fractions."""
    w, x, group = list(spec.w_shape), list(spec.x_shape), spec.group
    if group > 1:  # whole groups go: the group axis (0) and the group count scale together
        group = _scaled(spec.group, f_out)
        w[0] = spec.w_shape[0] // spec.group * group
        x[1] = w[0] if spec.layer.op == "ConvTranspose" else w[1] * group
    else:
        for axis, f in ((spec.layer.in_axis, f_in), (spec.layer.out_axis, f_out)):
            if axis is not None:
                w[axis] = _scaled(spec.w_shape[axis], f)
        x[spec.x_axis] = w[spec.w_in_axis]
    bias = spec.bias_shape
    if bias and bias[-1] == _out_channels(spec, spec.w_shape, spec.group):
        bias = bias[:-1] + (_out_channels(spec, w, group),)
    return tuple(x), tuple(w), bias, group


def _out_channels(spec: LayerSpec, w, group: int) -> int:
    if spec.layer.op == "ConvTranspose":
        return w[1] * group
    return w[spec.w_out_axis]


def layer_model(spec: LayerSpec, f_in: float, f_out: float) -> onnx.ModelProto:
    """A one-node model of `spec` at the given kept fractions (random weights)."""
    x, w, bias, group = _narrowed(spec, f_in, f_out)
    rng = np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(spec.dtype)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(w).astype(np_type), "w")]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(bias).astype(np_type), "b"))
    node = onnx.NodeProto()
    node.CopyFrom(spec.node)
    del node.input[:], node.output[:]
    node.input.extend(["x", "w"] + (["b"] if bias is not None else []))
    node.output.append("y")
    for attr in node.attribute:
        if attr.name == "group":
            attr.i = group
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", spec.dtype, x)],
                              [helper.make_tensor_value_info("y", spec.dtype, [None] * len(x))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)])
    model.ir_version = min(model.ir_version, 8)
    return model


def _probe() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def model_timer(backend, model: onnx.ModelProto, seed: int):
    """A timer for `interleave` (one run, elapsed ms) on `random_feeds` of the static shapes."""
    specs = input_specs(model)
    batch = specs[0].shape[0] if specs else 1
    return backend.timer(backend.prepare(model, batch, False), random_feeds(specs, seed))


def time_models(backend, models: list[onnx.ModelProto], config: LatencyConfig,
                seed: int) -> np.ndarray:
    """Median ms of each model minus the backend's per-call overhead, interleaved with a probe;
    the last entry is the overhead itself."""
    timers = [model_timer(backend, m, seed) for m in [*models, _probe()]]
    times = interleave(timers, runs=config.table_runs, warmup=min(config.warmup, 2))
    medians = np.array([np.median(t) for t in times])
    return np.r_[np.maximum(medians[:-1] - medians[-1], 0.0), medians[-1]]


def time_layer(backend, spec: LayerSpec, config: LatencyConfig, seed: int) -> np.ndarray:
    """The layer's [input fraction, output fraction] grid of ms (module docstring)."""
    ins = GRID if spec.layer.in_axis is not None else (1.0,)
    outs = GRID if spec.layer.out_axis is not None else (1.0,)
    points = [(fi, fo) for fi in ins for fo in outs]
    ms = time_models(backend, [layer_model(spec, fi, fo) for fi, fo in points], config, seed)
    values = np.broadcast_to(ms[:-1].reshape(len(ins), len(outs)), (len(GRID), len(GRID)))
    return _monotone(np.array(values))


def _monotone(values: np.ndarray) -> np.ndarray:
    """Non-decreasing in both fractions, without a bias either way (module docstring)."""
    for axis in (0, 1):
        down = np.flip(np.minimum.accumulate(np.flip(values, axis), axis=axis), axis)
        up = np.maximum.accumulate(values, axis=axis)
        values = (down + up) / 2
    return values
