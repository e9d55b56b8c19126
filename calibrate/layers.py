"""The sink layers a refit can solve for, read from an ONNX node: Conv (1-D / 2-D, grouped and
depthwise per group), Gemm and MatMul with a float initializer weight of their own.

A `Layer` turns a captured input x into the rows of its least-squares problem (calibrate/lsq.py):
`rows(x, positions)` gives [G, P, k] (Conv: im2col patches of each group's input channels,
channel-major like the weight), `outputs(x)` the layer's own output for an input of the
*original* layer, and `theta()` / `write()` move between the ONNX weight + bias and the
solution Θ [G, k+1, m] (bias in the last row).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Layer:
    node: str                 # node name in the pruned model
    op: str                   # "Conv", "Gemm", "MatMul"
    weight: str               # initializer names (bias None: MatMul, or none to add)
    bias: str | None
    attrs: dict
    weight_array: np.ndarray  # the pruned weight
    bias_array: np.ndarray | None

    @property
    def groups(self) -> int:
        return int(self.attrs.get("group", 1)) if self.op == "Conv" else 1

    @property
    def fits_bias(self) -> bool:
        return self.op != "MatMul"

    # -------------------------------------------------------------- Θ <-> ONNX weights

    def _matrix(self) -> np.ndarray:
        """The weight as [G, k, m] (rows: inputs, columns: outputs)."""
        w = self.weight_array
        if self.op == "Conv":
            g = self.groups
            return w.reshape(g, w.shape[0] // g, -1).transpose(0, 2, 1)
        if self.op == "Gemm":
            w = w.T if self.attrs.get("transB", 0) else w
            return (w * self.attrs.get("alpha", 1.0))[None]
        return w[None]

    def theta(self) -> torch.Tensor:
        """The current weights (and bias) as Θ [G, k(+1), m], float64."""
        mat = torch.from_numpy(self._matrix().astype(np.float64))
        if not self.fits_bias:
            return mat
        g, _, m = mat.shape
        b = np.zeros(g * m) if self.bias_array is None else self.bias_array.reshape(-1)
        if self.op == "Gemm":
            b = b * self.attrs.get("beta", 1.0)
        return torch.cat([mat, torch.from_numpy(np.asarray(b, np.float64)).reshape(g, 1, m)], 1)

    def arrays(self, theta: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight, bias) in the ONNX layout and dtype for Θ."""
        dtype = self.weight_array.dtype
        mat = theta[:, :-1] if self.fits_bias else theta
        mat = mat.numpy()
        if self.op == "Conv":
            g, k, m = mat.shape
            w = mat.transpose(0, 2, 1).reshape(self.weight_array.shape)
        elif self.op == "Gemm":
            w = mat[0] / self.attrs.get("alpha", 1.0)
            w = w.T if self.attrs.get("transB", 0) else w
        else:
            w = mat[0]
        if not self.fits_bias:
            return w.astype(dtype), None
        b = theta[:, -1].reshape(-1).numpy()
        if self.op == "Gemm":
            b = b / self.attrs.get("beta", 1.0)
        shape = self.bias_array.shape if self.bias_array is not None else b.shape
        return w.astype(dtype), b.reshape(shape).astype(dtype)

    # -------------------------------------------------------------- rows of the problem

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """Conv input [N, C, *spatial] -> [N, G, k, L] im2col patches."""
        one_d = x.dim() == 3
        if one_d:
            x = x.unsqueeze(2)
        kernel = list(self.weight_array.shape[2:])
        pads = list(self.attrs.get("pads", [0] * (2 * len(kernel))))
        strides = list(self.attrs.get("strides", [1] * len(kernel)))
        dil = list(self.attrs.get("dilations", [1] * len(kernel)))
        if one_d:
            kernel, strides, dil = [1, *kernel], [1, *strides], [1, *dil]
            pads = [0, pads[0], 0, pads[1]]
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        cols = F.unfold(x, kernel, dilation=dil, stride=strides)
        return cols.reshape(cols.shape[0], self.groups, -1, cols.shape[-1])

    def rows(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """x (this layer's input) as [G, P, k]; `positions` picks output positions."""
        if self.op == "Conv":
            cols = self._patches(x)
            if positions is not None:
                cols = cols[..., positions]
            n, g, k, p = cols.shape
            return cols.permute(1, 0, 3, 2).reshape(g, n * p, k)
        flat = x.reshape(-1, x.shape[-1]) if positions is None else _tokens(x, positions)
        return flat[None]

    def targets(self, y: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """A layer output y (kept channels) as [G, P, m], rows as in `rows`."""
        if self.op == "Conv":
            n, o = y.shape[:2]
            flat = y.reshape(n, self.groups, o // self.groups, -1)
            if positions is not None:
                flat = flat[..., positions]
            g, m, p = flat.shape[1:]
            return flat.permute(1, 0, 3, 2).reshape(g, n * p, m)
        flat = y.reshape(-1, y.shape[-1]) if positions is None else _tokens(y, positions)
        return flat[None]

    def positions(self, x: torch.Tensor, most: int, gen: torch.Generator) -> tuple:
        """(positions to sample, how many exist) per sample of an input x: at most `most`."""
        if self.op == "Conv":
            total = self._patches(x[:1]).shape[-1]
        else:
            total = int(np.prod(x.shape[1:-1])) if x.dim() > 2 else 1
        if total <= most:
            return None, total
        return torch.randperm(total, generator=gen)[:most], total

    def output(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:
        """This node's output for input x and the given weight / bias (torch, exact)."""
        a = self.attrs
        if self.op == "Conv":
            nd = weight.dim() - 2
            pads = list(a.get("pads", [0] * 2 * nd))
            x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
            conv = F.conv1d if nd == 1 else F.conv2d
            return conv(x, weight, bias, stride=a.get("strides", 1),
                        dilation=a.get("dilations", 1), groups=a.get("group", 1))
        if self.op == "Gemm":
            w = weight.T if a.get("transB", 0) else weight
            y = a.get("alpha", 1.0) * (x @ w)
            return y if bias is None else y + a.get("beta", 1.0) * bias
        return x @ weight


def _tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1, x.shape[-1])[:, positions]
    return flat.reshape(-1, x.shape[-1])


def layer_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int]
             ) -> Layer | str:
    """The Layer of `node`, or why it cannot be refit."""
    attrs = _attrs(node)
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    if op not in ("Conv", "Gemm", "MatMul"):
        return f"{op} layers are not refit"
    if op == "Conv" and attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "Conv with auto_pad"
    if op == "Gemm" and attrs.get("transA", 0):
        return "Gemm with transA"
    weight = node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    for name in (weight, bias):
        if name is None:
            continue
        if name not in inits:
            return f"{name!r} is not an initializer (quantized or computed weight)"
        if uses.get(name, 0) > 1:
            return f"{name!r} is shared by {uses[name]} nodes"
        if inits[name].data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            return f"{name!r} is not a float tensor"
    w = numpy_helper.to_array(inits[weight])
    if op == "Conv" and w.ndim not in (3, 4):
        return f"Conv{w.ndim - 2}d layers are not refit"
    if op != "Conv" and w.ndim != 2:
        return "the weight is not a matrix"
    b = numpy_helper.to_array(inits[bias]) if bias else None
    if op == "Gemm" and b is not None and b.size != w.shape[0 if attrs.get("transB", 0) else 1]:
        return "Gemm bias is not one value per output"
    return Layer(node.name, op, weight, bias, attrs, w, b)
