"""Reading an ONNX graph for the executor (calibrate/executor.py): the default opset, the
initializers' values and roles, the names a graph consumes, and node attributes with their
schema defaults filled in. Errors are `UnsupportedModel` (one line for the user)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.errors import UserError
from onnxprune.model import external

_SCHEMA_DEFAULTS: dict[tuple[str, int], tuple[int, dict]] = {}
_CONTROL_SLOTS = {"Resize": (1, 2, 3), "Upsample": (1,)}  # float inputs that are not weights
_BN_STATS = (3, 4)


class UnsupportedModel(UserError):
    """A node (op, attribute value or input form) has no exact torch implementation."""



def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UnsupportedModel("the model imports no default-domain opset")


def to_array(init: onnx.TensorProto) -> np.ndarray:
    try:
        return external.value(init)  # lazy weights (onnxprune/external.py) are read here
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise UnsupportedModel(f"initializer {init.name!r}: cannot read it ({exc})") from None


def initializer_roles(graph: onnx.GraphProto) -> dict[str, str]:
    """BatchNormalization running statistics and Resize scales are buffers, not weights."""
    roles = {}
    for node in graph.node:
        slots = _BN_STATS if node.op_type == "BatchNormalization" else \
            _CONTROL_SLOTS.get(node.op_type, ())
        for slot in slots:
            if slot < len(node.input) and node.input[slot]:
                roles[node.input[slot]] = "buffer"
    return roles


def consumed(graph: onnx.GraphProto) -> set[str]:
    """Names read by some node (or its subgraphs) or listed as graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= consumed(sub)
    return names


def attributes(node: onnx.NodeProto, opset: int) -> tuple[int, dict]:
    """(schema version, attributes with the schema defaults at this opset filled in)."""
    key = (node.op_type, opset)
    if key not in _SCHEMA_DEFAULTS:
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            raise UnsupportedModel(f"{node.op_type} node {node.name!r}: not an ONNX op at "
                                   f"opset {opset}") from None
        defaults = {}
        for name, attr in schema.attributes.items():
            if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                defaults[name] = _decode(helper.get_attribute_value(attr.default_value))
        _SCHEMA_DEFAULTS[key] = (schema.since_version, defaults)
    since, defaults = _SCHEMA_DEFAULTS[key]
    values = dict(defaults)
    for attr in node.attribute:
        values[attr.name] = _decode(helper.get_attribute_value(attr))
    return since, values


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value
