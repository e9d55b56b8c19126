"""Make every exporter's output look alike, and give every tensor a static shape.

TorchScript exports route shared tensors through `Identity`; PaddlePaddle keeps weights in
`Constant` nodes; the torch.export-based exporter computes some shapes at run time. After
`normalize` the graph has initializers for every constant, no Identity (except where it names
a graph output), shape arithmetic folded, nodes in topological order, and a static shape for
every tensor (by ONNX shape inference, or by running the model once when that falls short).
QuantizeLinear / DequantizeLinear are never folded: a QDQ model keeps its integer weights.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxprune.analysis.context import static_shapes
from onnxprune.errors import UserError
from onnxprune.model import (
    external,
    runtime,  # noqa: F401  (quiets onnxruntime, which the constant folder runs)
)
from onnxprune.model.check import check_structure
from onnxprune.model.graph import MIN_OPSET, fix_input_shapes, graph_inputs, opset
from onnxprune.model.weights import attach, detach, infer_shapes

_LOG = logging.getLogger(__name__)


def normalize(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Return a normalised copy; `model` itself is not modified."""
    version = opset(model)
    if version < MIN_OPSET:
        raise UserError(f"opset {version} is older than {MIN_OPSET}: convert the model first "
                        f"(onnx.version_converter.convert_version)")
    _reject_unsupported(model)
    check_structure(model)  # a malformed graph: one line, before any tool sees it
    light, large = detach(model)  # a new light model; `model` is never written to
    fix_input_shapes(light, input_shapes)
    del light.graph.value_info[:]
    for _ in range(3):  # static shapes let the folder turn Shape ops into constants
        count = len(light.graph.node)
        light = _fold(_infer_shapes(light))
        if len(light.graph.node) == count:
            break
    return attach(_infer_shapes(light), large)


# QOperator ops: weights, scales and requantisation fused into one node (QDQ models prune)
_QOPERATOR = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QGemm",
              "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}


def _reject_unsupported(model: onnx.ModelProto) -> None:
    found = sorted({n.op_type for n in model.graph.node
                    if n.op_type in _QOPERATOR or n.op_type.startswith("QLinear")})
    if found:
        raise UserError(f"quantized model in the QOperator format ({', '.join(found)}): its "
                        f"weights and requantisation are fused into one op; quantize to the QDQ "
                        f"format (quant_format=QDQ), or prune the float model, then quantize")
    for inp in graph_inputs(model):
        if not inp.type.HasField("tensor_type"):
            raise UserError(f"input {inp.name!r} is not a tensor")


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constants to initializers, fold constant sub-graphs, drop Identity, sort.

    `model` is light (weights.py): graphsurgeon and onnxruntime never copy the large weights,
    and sub-graphs that compute from a large initializer stay unfolded (a rule then sees a
    non-constant weight and blocks it, with that reason).
    """
    _fold_shape_slices(model)
    graph = gs.import_onnx(model)
    _drop_identity(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph.fold_constants(error_ok=True, should_exclude_node=_keeps_quantization)
        except Exception as exc:  # folding is an optimisation; analysis still works without
            _LOG.debug("constant folding failed: %s", exc)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    _constants_to_initializers(out)
    for index, node in enumerate(out.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    _unshare_uniform_initializers(out)
    return out


def _keeps_quantization(node: gs.Node) -> bool:
    """Quantize / DequantizeLinear stay as written: folding a weight's DequantizeLinear would
    store it in float and the written model would lose its quantization."""
    return node.op in ("QuantizeLinear", "DequantizeLinear")


def _fold_shape_slices(model: onnx.ModelProto) -> None:
    """`Shape` nodes with `start` / `end` (opset 15) of a static tensor become initializers.

    onnx-graphsurgeon 0.6 folds a Shape node to the whole shape, ignoring them: torch.export's
    `Shape(x, start=2, end=4)` (the H, W of a dynamic-size input) became all four dims."""
    shapes = static_shapes(model)
    keep = []
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type != "Shape" or not attrs or node.input[0] not in shapes:
            keep.append(node)
            continue
        dims = np.array(shapes[node.input[0]], dtype=np.int64)[attrs.get("start", 0):
                                                                attrs.get("end")]
        model.graph.initializer.append(numpy_helper.from_array(dims, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _unshare_uniform_initializers(model: onnx.ModelProto) -> None:
    """Give each use of a shared all-equal initializer its own copy.

    Exporters deduplicate identical initializers; with fresh BatchNorm statistics every folded
    bias is all zeros, so unrelated layers end up sharing one tensor, which would couple their
    channels. Real weight tying (different values) stays shared and stays coupled.
    """
    inits = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            value = external.value(inits[name])
            if value.size > 1 and np.all(value == value.reshape(-1)[0]):
                copy = f"{name}__{node.name}_{slot}"
                model.graph.initializer.append(numpy_helper.from_array(value, copy))
                node.input[slot] = copy


def _drop_identity(graph: gs.Graph) -> None:
    outputs = set(id(t) for t in graph.outputs)
    for node in graph.nodes:
        if node.op != "Identity" or id(node.outputs[0]) in outputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        for consumer in list(dst.outputs):
            for slot, tensor in enumerate(consumer.inputs):
                if tensor is dst:
                    consumer.inputs[slot] = src
        node.outputs.clear()


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """`Constant` nodes (PaddlePaddle, some folds) become initializers named like their output."""
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            try:
                value = _constant_value(node)
            except ValueError:
                keep.append(node)
                continue
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    scalars = {"value_float": np.float32, "value_int": np.int64,
               "value_floats": np.float32, "value_ints": np.int64}
    if attr.name in scalars:
        return np.asarray(onnx.helper.get_attribute_value(attr), dtype=scalars[attr.name])
    raise ValueError(attr.name)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference; shapes it leaves open are learned by running the model in ORT."""
    try:
        inferred = infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise UserError(f"ONNX shape inference failed on this model: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    static = static_shapes(inferred)
    missing = [n for n in _activation_names(inferred) if n not in static]
    if missing:
        _shapes_by_running(inferred, missing)
    return inferred


def _activation_names(model: onnx.ModelProto) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o]


def _shapes_by_running(model: onnx.ModelProto, names: list[str]) -> None:
    """Fill the shapes ONNX inference could not resolve by running the model once in ORT: the
    part of it onnxruntime can run (verify/partial.py). After a node it cannot run (a TensorRT
    plugin) shapes stay unknown, and the analysis blocks those nodes."""
    from onnxprune.model.runtime import run_with_intermediates
    from onnxprune.verify.partial import coverage, restrict

    cover = coverage(model)
    part = model if cover.complete else restrict(model, cover.proven_outputs)
    made = {o for node in part.graph.node for o in node.output}
    names = [n for n in names if n in made]
    values = run_with_intermediates(part, names) if names else {}
    kept = [vi for vi in model.graph.value_info if vi.name not in values]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    for name, value in values.items():  # graph outputs too: their declared type stays as is
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, value.shape))
