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


_INTEGER = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
            onnx.TensorProto.UINT16, onnx.TensorProto.INT32)  # stored data of a quantized weight


@dataclass(frozen=True)
class Dequantized:
    """`DequantizeLinear(data, scale, zero_point)` of initializers: a weight stored quantized.

    `axis` is the axis of per-channel scale / zero point (1-D, one per index of that axis of
    `data`), None for per-tensor ones; `zero_point` is '' when absent (zero)."""
    data: str
    scale: str
    zero_point: str
    axis: int | None

    def value(self, data: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None):
        """The dequantized weight, (data - zero_point) * scale, in the scale's dtype."""
        shape = [1] * data.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        zero = 0 if zero_point is None else zero_point.astype(np.int64).reshape(shape)
        return ((data.astype(np.int64) - zero) * scale.reshape(shape)).astype(scale.dtype)


def dequantized_constants(model: onnx.ModelProto) -> dict[str, Dequantized]:
    """Output name -> `Dequantized` for every standard DequantizeLinear of initializers with a
    per-tensor or per-channel (not blocked) scale and zero point: the QDQ format's weights and
    biases. Rules read these outputs as constants (`Ctx.const`), declarations on them apply to
    the stored data (rules/quant.py), and constant folding leaves them alone (normalize.py)."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    integer = {i.name for i in model.graph.initializer if i.data_type in _INTEGER}
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        names = list(node.input) + [""] * (3 - len(node.input))
        data, scale, zero = names[:3]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (data not in integer or scale not in shapes or (zero and zero not in shapes)
                or attrs.get("block_size", 0)):
            continue
        rank, scale_shape = len(shapes[data]), shapes[scale]
        if zero and shapes[zero] != scale_shape:
            continue
        if int(np.prod(scale_shape)) == 1 and len(scale_shape) <= 1:  # per tensor
            found[node.output[0]] = Dequantized(data, scale, zero, None)
        elif len(scale_shape) == 1 and rank and scale_shape[0] == shapes[data][
                attrs.get("axis", 1) % rank]:
            found[node.output[0]] = Dequantized(data, scale, zero, attrs.get("axis", 1) % rank)
    return found


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
                 per_index_groups: frozenset[str] = frozenset(),
                 coarse_reshapes: Mapping[str, int] | None = None, head_dims: bool = False):
        self.model = model
        self.opset = opset
        # grouped convs whose whole-group units collapsed (see rules/conv.py)
        self.per_index_groups = per_index_groups
        # reshapes whose finest axis is summed by a product of two activations (attention:
        # the head dim of q @ kT) -> which other axis they map (rules/reshape.best_axis's skip)
        self.coarse_reshapes = dict(coarse_reshapes or {})
        # attention units are head dims: q @ kT's summed channel j is masked (rules/linear.py)
        self.head_dims = head_dims
        self.shapes = static_shapes(model)
        self._inits = {i.name: i for i in model.graph.initializer}
        self.dequantized = dequantized_constants(model)  # DQ outputs read as constants
        for name, dq in self.dequantized.items():
            self.shapes.setdefault(name, self.shapes[dq.data])
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
        """An initializer, or a weight stored quantized (`dequantized_constants`)."""
        return name in self._inits or name in self.dequantized

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer input (of a DequantizeLinear of initializers: the
        dequantized weight), or None for activations and absent inputs."""
        if not name or not self.is_const(name):
            return None
        if name in self._values:
            value = self._values[name]
        elif name in self.dequantized:
            dq = self.dequantized[name]
            value = dq.value(self._stored(dq.data), self._stored(dq.scale),
                             self._stored(dq.zero_point) if dq.zero_point else None)
            if not is_lazy(self._inits[dq.data]):
                self._values[name] = value
        else:
            value = self._stored(name)
        return np.transpose(value, self._perms[name]) if name in self._perms else value

    def _stored(self, name: str) -> np.ndarray:
        init = self._inits[name]
        if is_lazy(init):  # mapped, not read, and not cached: rules look at its shape
            return view(init)
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(init)
        return self._values[name]

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
