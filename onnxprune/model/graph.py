"""Graph facts every stage reads: the default opset, the real inputs and their static shapes.

Loading and saving live in `onnxprune.model.io`; normalisation in `onnxprune.analysis.normalize`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import UserError

MIN_OPSET = 11
# metadata of a pruned file with dynamic dims: the shape it was analysed and verified at, in
# --input-shape's format; the default size of its dynamic dims (bench, latency, re-pruning)
ANALYSIS_SHAPE = "onnxprune.analysis_shape"


def opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UserError("model imports no default-domain opset")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (old exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def parse_input_shapes(text: str | None, input_names: list[str]) -> dict[str, tuple[int, ...]]:
    """`1x3x224x224` for a single input, `a:1x3x64x64,b:1x4` for several (trtexec style)."""
    if not text:
        return {}
    shapes = {}
    for part in text.split(","):
        name, _, dims = part.rpartition(":")
        if not name:
            if len(input_names) != 1:
                raise UserError(f"--input-shape {text!r}: name each input (name:1x3x224x224)")
            name = input_names[0]
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UserError(f"--input-shape {text!r}: dims must be integers like "
                            "1x3x224x224") from None
        if not shape or min(shape) <= 0:
            raise UserError(f"--input-shape {text!r}: dims must be positive")
        if name not in input_names:
            raise UserError(f"--input-shape names {name!r}, but the inputs are {input_names}")
        shapes[name] = shape
    return shapes


def format_input_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """The inverse of parse_input_shapes: `1x3x224x224`, or `a:1x3x64x64,b:1x4`."""
    parts = {name: "x".join(map(str, shape)) for name, shape in shapes.items()}
    return next(iter(parts.values())) if len(parts) == 1 else ",".join(
        f"{k}:{v}" for k, v in parts.items())


def recorded_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The analysis shape a pruned file records (metadata ANALYSIS_SHAPE), or {}."""
    for prop in model.metadata_props:
        if prop.key == ANALYSIS_SHAPE:
            try:
                return parse_input_shapes(prop.value, [i.name for i in graph_inputs(model)])
            except UserError:  # inputs renamed since: the record no longer applies
                return {}
    return {}


def static_shape(inp: onnx.ValueInfoProto, recorded: tuple[int, ...] | None = None) -> list[int]:
    """The input's dims, a dynamic one from `recorded` (the file's analysis shape) when given,
    else a dynamic batch (axis 0) as 1; any other dynamic dim is an error."""
    shape = []
    for axis, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        elif recorded is not None and len(recorded) > axis:
            shape.append(recorded[axis])
        elif axis == 0:
            shape.append(1)
        else:
            raise UserError(f"input {inp.name!r} has a dynamic dimension {d.dim_param or '?'!r} "
                            f"at axis {axis}: pass --input-shape (e.g. 1x3x640x640), the shape "
                            f"costs and verification use (the output keeps the dimension "
                            f"dynamic)")
    return shape


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every graph input a static shape, in place."""
    recorded = recorded_shapes(model)
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if inp.name in shapes:
            new = shapes[inp.name]
            if len(new) != len(dims):
                raise UserError(f"--input-shape for {inp.name!r} has rank {len(new)}, "
                                f"the model's input has rank {len(dims)}")
        else:
            new = static_shape(inp, recorded.get(inp.name))
        for d, v in zip(dims, new):
            d.Clear()
            d.dim_value = int(v)
    for out in model.graph.output:  # e.g. Paddle2ONNX stores -1: let inference decide
        tt = out.type.tensor_type
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in tt.shape.dim):
            tt.ClearField("shape")


@dataclass(frozen=True)
class InputSpec:
    """One real graph input at a static shape, batch first."""
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def input_specs(model: onnx.ModelProto, batch: int | None = None) -> list[InputSpec]:
    """Every real input at a static shape: axis 0 is `batch` when given, else the model's
    (a dynamic batch is 1); any other dynamic dimension takes the size the file records
    (`recorded_shapes`), else is a UserError (`static_shape`)."""
    specs, recorded = [], recorded_shapes(model)
    for vi in graph_inputs(model):
        tensor = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tensor.HasField("shape"):
            raise UserError(f"input {vi.name!r} has no tensor shape: pass --input-shape")
        shape = static_shape(vi, recorded.get(vi.name))
        if batch is not None and shape:  # a scalar input has no batch axis
            shape[0] = batch
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        specs.append(InputSpec(vi.name, tuple(shape), dtype))
    return specs


def static_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """{name: shape} of `input_specs`."""
    return {spec.name: spec.shape for spec in input_specs(model)}


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If / Loop / Scan bodies, at any depth) read from enclosing
    graphs: inputs of the node too, though absent from node.input. Order-independent: a name
    any node of the subgraph defines is the subgraph's own."""
    reads: set[str] = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs)
        for graph in graphs:
            defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            defined |= {o for inner in graph.node for o in inner.output}
            for inner in graph.node:
                reads |= (set(inner.input) | outer_reads(inner)) - defined - {""}
    return reads
