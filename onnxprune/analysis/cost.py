"""Costs of a model as functions of the number of channels kept in every channel space.

- M (feature-map memory, Group Fisher's definition): elements of the outputs of every Conv,
  ConvTranspose, Gemm and MatMul node at the analysis shape (batch 1).
- MACs: numel(W) x positions for each Conv / ConvTranspose / Gemm / MatMul with a constant
  weight (positions: output pixels for Conv, input pixels for ConvTranspose, rows for Gemm and
  MatMul), so a sliced W gives the pruned MACs directly.
- params: elements of the floating-point initializers; weight bytes: bytes of all of them.
- activations: elements of every tensor a node outputs.
- latency: predicted ms, once a latency term (onnxprune.latency: per-layer tables timed on a
  backend) is attached as `CostModel.latency`; None otherwise.

M and activations are linear in the kept counts; MACs and params are products of the kept
counts of each initializer's axes, evaluated in one vectorised step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxprune.analysis.context import static_shapes
from onnxprune.analysis.flow import param_key, tensor_key
from onnxprune.analysis.units import Channels

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


def _positions(node: onnx.NodeProto, shapes) -> float:
    out = shapes.get(node.output[0])
    if out is None:
        return 0.0
    if node.op_type == "Conv":
        return float(np.prod(out)) / out[1]
    if node.op_type == "ConvTranspose":
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
                compute = node.op_type in COMPUTE_OPS and pos == 0
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
        self.is_float = np.zeros(len(inits), dtype=bool)
        self.mac_factor = np.zeros(len(inits))
        row = {}
        for r, init in enumerate(inits):
            row[init.name] = r
            self.dims[r, :len(init.dims)] = init.dims
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            self.itemsize[r] = np.dtype(dtype).itemsize
            self.is_float[r] = np.issubdtype(dtype, np.floating)
            for axis in range(len(init.dims)):
                i = index.get(param_key(init.name, axis))
                if i is not None:
                    self.axis_space[r, axis] = i
        for node in model.graph.node:
            if node.op_type in COMPUTE_OPS and len(node.input) > 1 and node.input[1] in row:
                self.mac_factor[row[node.input[1]]] += _positions(node, shapes)

    def numel(self, kept: np.ndarray) -> np.ndarray:
        dims = np.where(self.axis_space >= 0, kept[np.maximum(self.axis_space, 0)], self.dims)
        return np.prod(dims, axis=1)

    def costs(self, kept: np.ndarray | None = None) -> Costs:
        """Costs with `kept[i]` channels left in space i (default: the original model)."""
        kept = self.sizes if kept is None else kept
        numel = self.numel(kept)
        return Costs(mem=self.mem_fixed + float(self.mem_w @ kept),
                     macs=float(self.mac_factor @ numel),
                     params=float(numel[self.is_float].sum()),
                     weight_bytes=float(self.itemsize @ numel),
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
