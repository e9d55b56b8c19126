"""Matrix products: MatMul, Gemm, Einsum."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, op


@op("MatMul")
def matmul(spec: Spec):
    return torch.matmul


@op("Gemm")
def gemm(spec: Spec):
    alpha, beta = spec.attrs["alpha"], spec.attrs["beta"]
    trans_a, trans_b = spec.attrs["transA"], spec.attrs["transB"]

    def general(a, b, c=None):
        y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        if alpha != 1.0:
            y = y * alpha
        if c is None:
            return y
        return y + (c if beta == 1.0 else c * beta)
    if alpha != 1.0 or beta != 1.0 or trans_a:
        return general

    def linear(a, b, c=None):  # the exporters' Flatten -> Gemm(transB=1)
        if c is not None and c.dim() != 1:
            return general(a, b, c)
        return F.linear(a, b if trans_b else b.t(), c)
    return linear


@op("Einsum")
def einsum(spec: Spec):
    equation = spec.attrs["equation"].replace(" ", "")
    return lambda *xs: torch.einsum(equation, *xs)
