"""What a rule may read about the graph: shapes, constants, attributes with spec defaults,
and the channel space of each input tensor."""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.model.external import is_lazy, view


@dataclass(frozen=True)
class Space:
    axis: int
    size: int


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


class Ctx:
    """Read-only view of the normalised graph for rules, plus the tensors' channel spaces."""

    def __init__(self, model: onnx.ModelProto, opset: int,
                 space_of: Callable[[str], Space | None],
                 per_index_groups: frozenset[str] = frozenset()):
        self.model = model
        self.opset = opset
        # grouped convs whose whole-group units collapsed (see rules/conv.py)
        self.per_index_groups = per_index_groups
        self.shapes = static_shapes(model)
        self._inits = {i.name: i for i in model.graph.initializer}
        self._values: dict[str, np.ndarray] = {}
        self._space_of = space_of
        self._perms: dict[str, tuple[int, ...]] = {}  # operands seen transposed (`view`)
        self._declared: dict[str, Space] = {}  # spaces declared by earlier steps (`view`)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise KeyError(f"no static shape for tensor {name!r}")
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def is_const(self, name: str) -> bool:
        return name in self._inits

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer input, or None for activations and absent inputs."""
        if not name or name not in self._inits:
            return None
        init = self._inits[name]
        if is_lazy(init):  # mapped, not read, and not cached: rules look at its shape
            value = view(init)
        else:
            if name not in self._values:
                self._values[name] = numpy_helper.to_array(init)
            value = self._values[name]
        return np.transpose(value, self._perms[name]) if name in self._perms else value

    def space(self, name: str) -> Space | None:
        """Channel space of an activation (created blocked if its producer declared none)."""
        if not name or self.is_const(name):
            return None
        space = self._declared.get(name) or self._space_of(name)
        if space is None or name not in self._perms:
            return space
        return Space(self._perms[name].index(space.axis), space.size)

    def view(self, perms: Mapping[str, tuple[int, ...]] | None = None,
             declared: Mapping[str, Space] | None = None) -> Ctx:
        """This context as a rule applied to a node's standard form sees it (rules/contrib.py):
        `perms` operands read transposed (shape, value and channel axis; perm[i] is the input
        axis at position i), `declared` spaces of tensors an earlier step of the form declared."""
        perms, declared = perms or {}, declared or {}
        ctx = copy.copy(self)
        ctx._perms = {**self._perms, **perms}
        ctx._declared = {**self._declared, **declared}
        ctx.shapes = dict(self.shapes)
        for name, perm in perms.items():
            ctx.shapes[name] = tuple(self.shapes[name][p] for p in perm)
        return ctx

    def attrs(self, node: onnx.NodeProto) -> dict:
        """Node attributes with the defaults of the op's schema at this opset filled in."""
        values = {}
        schema = _schema(node.op_type, self.opset, node.domain)
        for name, attr in (schema.attributes.items() if schema else ()):
            if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                values[name] = helper.get_attribute_value(attr.default_value)
        for attr in node.attribute:
            values[attr.name] = helper.get_attribute_value(attr)
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _schema(op_type: str, opset: int, domain: str) -> onnx.defs.OpSchema | None:
    """The op's schema at this opset; for an op newer than the opset (onnxruntime's optimiser
    writes LayerNormalization into opset-13 models) its latest version; None if unknown."""
    for version in (opset, None):
        try:
            if version is None:
                return onnx.defs.get_schema(op_type, domain)
            return onnx.defs.get_schema(op_type, version, domain)
        except onnx.defs.SchemaError:
            continue
    return None
