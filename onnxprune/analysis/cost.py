"""Costs of a model as functions of the number of channels kept in every channel space.

- M (feature-map memory, Group Fisher's definition): elements of the outputs of every Conv,
  ConvTranspose, Gemm and MatMul node at the analysis shape (batch 1).
- MACs: numel(W) x positions for each Conv / ConvTranspose / Gemm / MatMul with a constant
  weight or one stored quantized (positions: output pixels for Conv, input pixels for
  ConvTranspose, rows for Gemm and MatMul), so a sliced W gives the pruned MACs directly.
- params: elements of the floating-point initializers and of the weights stored quantized
  (the integer data a DequantizeLinear reads), not the scales and zero points of
  quantization, so a QDQ model has the params of its float model; weight bytes: bytes of all
  initializers; both count each distinct initializer once, as the written file stores it
  (below).
- activations: elements of every tensor a node outputs.
- latency: predicted ms, once a latency term (onnxprune.latency: per-layer tables timed on a
  backend) is attached as `CostModel.latency`; None otherwise.

M and activations are linear in the kept counts; MACs and params are products of the kept
counts of each initializer's axes, evaluated in one vectorised step.

Stored once: the pruned file holds each distinct initializer once (`rewrite.share.reshare`
merges those of identical dtype, shape and bytes), so params and weight bytes count what the
files store, before as after. Normalisation copies a shared all-equal initializer per user (a
zero bias that exporters deduplicated); merging the copies back here gives the input file's
count. The planner predicts the merges from kept counts alone: at analysis, initializers are
put in *merge groups* (all-equal ones by dtype, rank and value; others by identical content),
and a group is stored once per distinct shape its members have after slicing. That is exact
for all-equal groups (two zero biases of different widths cut to one width merge too) and for
identical tensors that are unsliced or sliced alike; two identical non-uniform tensors under
different names, sliced apart to one shape, would be counted once but stored twice. Graph
inputs and outputs are never merged. MACs count every use: each node still computes.
The report's after-numbers are not predicted but counted in the written model
(`stored_costs`): values that change after planning (fine-tuning) and the shape constants that
surgery rewrites (int64, a few bytes) are known only there.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx

from onnxprune.analysis.context import dequantized_constants, static_shapes
from onnxprune.analysis.flow import param_key, tensor_key
from onnxprune.analysis.rules.contrib import standard_op_type
from onnxprune.analysis.units import Channels
from onnxprune.model.external import view

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_MAX_RANK = 8


@dataclass(frozen=True)
class Costs:
    mem: float
    macs: float
    params: float
    weight_bytes: float
    activations: float
    latency: float | None = None

    def as_dict(self) -> dict:
        counts = {k: int(v) for k, v in asdict(self).items() if k != "latency"}
        return counts if self.latency is None else {**counts, "latency": self.latency}


def _tensor_bytes(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's bytes as a (elements, itemsize) uint8 view (a memory map for a lazy
    tensor: nothing is read until looked at), or None for strings."""
    values = view(tensor)
    if values.dtype.kind in "OSU" or not values.dtype.itemsize:
        return None
    flat = np.ascontiguousarray(values).reshape(-1)
    return flat.view(np.uint8).reshape(flat.size, values.dtype.itemsize)


def identical_tensors(tensors: Sequence[onnx.TensorProto]) -> list[int]:
    """For each tensor, the index of the first one with the same dtype, shape and bytes (its
    own index if none). One tensor is read at a time: a fingerprint (dtype, shape, first and
    last bytes) sorts them, and only tensors whose fingerprints collide are hashed in full
    (SHA-256), so weights that differ in their first bytes are never read beyond them."""
    buckets: dict[tuple, list[int]] = {}
    for index, tensor in enumerate(tensors):
        data = _tensor_bytes(tensor)
        if data is None:
            continue
        head, tail = data[:8].tobytes(), data[-8:].tobytes()
        buckets.setdefault((tensor.data_type, tuple(tensor.dims), head, tail), []).append(index)
    first = list(range(len(tensors)))
    for members in buckets.values():
        if len(members) < 2:
            continue
        seen: dict[bytes, int] = {}
        for index in members:
            digest = hashlib.sha256(_tensor_bytes(tensors[index]).reshape(-1)).digest()
            first[index] = seen.setdefault(digest, index)
    return first


def _fill(tensor: onnx.TensorProto) -> bytes | None:
    """The bytes of the one value of an all-equal tensor (bytewise: +0 and -0 differ), else
    None."""
    data = _tensor_bytes(tensor)
    if data is None or not len(data) or (data[:64] != data[0]).any():
        return None
    return data[0].tobytes() if (data == data[0]).all() else None


def _merge_groups(model: onnx.ModelProto) -> np.ndarray:
    """A merge group per initializer (module docstring): equal ids are stored once per
    distinct shape after slicing."""
    inits = model.graph.initializer
    fixed = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    keys: list[tuple] = [("own", r) for r in range(len(inits))]
    others = []
    for r, init in enumerate(inits):
        fill = None if init.name in fixed else _fill(init)
        if fill is not None:
            keys[r] = ("fill", init.data_type, len(init.dims), fill)
        elif init.name not in fixed:
            others.append(r)
    for r, f in zip(others, identical_tensors([inits[r] for r in others])):
        keys[r] = ("own", others[f])
    ids: dict[tuple, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def stored_costs(costs: Costs, model: onnx.ModelProto) -> Costs:
    """`costs` with params and weight bytes counted in `model` itself, every initializer once
    (for a model `reshare` has run on: the file as written). The plan predicts them from kept
    counts; the written file can differ where values changed after planning (fine-tuning, BN
    re-estimation: copies that were equal may not be any more) and by the shape constants that
    surgery's fix-ups rewrote. Only shapes are read."""
    params = nbytes = 0
    quantized, qparams = quantization_roles(model)
    for init in model.graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
        count = int(np.prod(init.dims, dtype=np.int64))
        params += count if _is_param(init.name, dtype, quantized, qparams) else 0
        nbytes += count * dtype.itemsize
    return replace(costs, params=float(params), weight_bytes=float(nbytes))


def quantization_roles(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(weights stored quantized: what a DequantizeLinear of initializers reads as data,
    the scales and zero points of every QuantizeLinear / DequantizeLinear)."""
    quantized = {dq.data for dq in dequantized_constants(model).values()}
    qparams = {name for node in model.graph.node
               if node.op_type in ("QuantizeLinear", "DequantizeLinear")
               for name in node.input[1:3] if name}
    return quantized, qparams


def _is_param(name: str, dtype: np.dtype, quantized: set[str], qparams: set[str]) -> bool:
    """Parameters are the floating-point initializers and the weights stored quantized; scales
    and zero points of quantization are not (a QDQ model counts what its float model does)."""
    return name in quantized or (np.issubdtype(dtype, np.floating) and name not in qparams)


def _positions(node: onnx.NodeProto, shapes) -> float:
    out = shapes.get(node.output[0])
    if out is None:
        return 0.0
    op_type = standard_op_type(node)  # a FusedConv is a Conv; a plugin named Conv is not
    if op_type == "Conv":
        return float(np.prod(out)) / out[1]
    if op_type == "ConvTranspose":
        x = shapes[node.input[0]]
        return float(np.prod(x)) / x[1]
    return float(np.prod(out[:-1]))


class CostModel:
    latency = None  # onnxprune.latency.LatencyTerm once attached: total(kept), per_space()

    def __init__(self, channels: Channels):
        model = channels.model
        shapes = static_shapes(model)
        self.keys = list(channels.spaces)
        index = {k: i for i, k in enumerate(self.keys)}
        self.sizes = np.array([channels.spaces[k].size for k in self.keys], dtype=np.float64)
        self.node_space = np.repeat(np.arange(len(self.keys)), self.sizes.astype(np.int64))
        self._linear_terms(model, shapes, index)
        self._param_terms(model, shapes, index)

    def _linear_terms(self, model, shapes, index) -> None:
        n = len(self.keys)
        self.mem_w, self.act_w = np.zeros(n), np.zeros(n)
        self.mem_fixed = self.act_fixed = 0.0
        for node in model.graph.node:
            for pos, out in enumerate(o for o in node.output if o):
                numel = float(np.prod(shapes.get(out, (0,))))
                i = index.get(tensor_key(out))
                compute = standard_op_type(node) in COMPUTE_OPS and pos == 0
                if i is None:
                    self.act_fixed += numel
                    self.mem_fixed += numel if compute else 0.0
                else:
                    self.act_w[i] += numel / self.sizes[i]
                    self.mem_w[i] += numel / self.sizes[i] if compute else 0.0

    def _param_terms(self, model, shapes, index) -> None:
        inits = list(model.graph.initializer)
        self.dims = np.ones((len(inits), _MAX_RANK))
        self.axis_space = -np.ones((len(inits), _MAX_RANK), dtype=np.int64)
        self.itemsize = np.zeros(len(inits))
        self.is_param = np.zeros(len(inits), dtype=bool)
        self.mac_factor = np.zeros(len(inits))
        row = {}
        quantized, qparams = quantization_roles(model)
        for r, init in enumerate(inits):
            row[init.name] = r
            self.dims[r, :len(init.dims)] = init.dims
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
            self.itemsize[r] = dtype.itemsize
            self.is_param[r] = _is_param(init.name, dtype, quantized, qparams)
            for axis in range(len(init.dims)):
                i = index.get(param_key(init.name, axis))
                if i is not None:
                    self.axis_space[r, axis] = i
        dequantized = dequantized_constants(model)
        for node in model.graph.node:
            weight = node.input[1] if len(node.input) > 1 else ""
            weight = dequantized[weight].data if weight in dequantized else weight
            if standard_op_type(node) in COMPUTE_OPS and weight in row:
                self.mac_factor[row[weight]] += _positions(node, shapes)
        group = _merge_groups(model)
        sizes = np.bincount(group, minlength=len(group))
        self.merge_rows = np.flatnonzero(sizes[group] > 1)  # rows that may share storage
        self.merge_group = group[self.merge_rows]

    def _dims(self, kept: np.ndarray) -> np.ndarray:
        return np.where(self.axis_space >= 0, kept[np.maximum(self.axis_space, 0)], self.dims)

    def numel(self, kept: np.ndarray) -> np.ndarray:
        return np.prod(self._dims(kept), axis=1)

    def stored(self, kept: np.ndarray) -> np.ndarray:
        """Which initializer rows the written file holds: the first of each merge group and
        shape after slicing (module docstring)."""
        dims = self._dims(kept)
        keep = np.ones(len(dims), dtype=bool)
        if len(self.merge_rows):
            rows = np.column_stack([self.merge_group, dims[self.merge_rows]])
            _, first = np.unique(rows, axis=0, return_index=True)
            keep[self.merge_rows] = False
            keep[self.merge_rows[first]] = True
        return keep

    def costs(self, kept: np.ndarray | None = None) -> Costs:
        """Costs with `kept[i]` channels left in space i (default: the original model)."""
        kept = self.sizes if kept is None else kept
        numel = self.numel(kept)
        stored = np.where(self.stored(kept), numel, 0.0)  # params: as the file stores them
        return Costs(mem=self.mem_fixed + float(self.mem_w @ kept),
                     macs=float(self.mac_factor @ numel),
                     params=float(stored[self.is_param].sum()),
                     weight_bytes=float(self.itemsize @ stored),
                     activations=self.act_fixed + float(self.act_w @ kept),
                     latency=None if self.latency is None else self.latency.total(kept))

    def per_node_mem(self) -> np.ndarray:
        """ΔM of each channel node: the elements its channel holds in compute outputs."""
        return self.mem_w[self.node_space]

    def per_node_macs(self) -> np.ndarray:
        """First-order ΔMACs of each channel node (its slice of each weight x positions)."""
        full = self.numel(self.sizes)
        per_space = np.zeros(len(self.keys))
        rows, axes = np.nonzero(self.axis_space >= 0)
        np.add.at(per_space, self.axis_space[rows, axes],
                  self.mac_factor[rows] * full[rows] / self.dims[rows, axes])
        return per_space[self.node_space]

    def per_node_latency(self) -> np.ndarray:
        """Predicted ms each channel node removes (needs an attached latency term)."""
        if self.latency is None:
            raise ValueError("no latency term attached (onnxprune.latency.attach)")
        return self.latency.per_space()[self.node_space]
