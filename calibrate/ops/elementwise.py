"""Element-wise ops: unary maths and activations, broadcasting binary ops, variadic ops,
comparisons and logic, Where, Clip, Cast."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, Unsupported, op, torch_dtype

_UNARY = {
    "Identity": lambda x: x, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Floor": torch.floor,
    "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin,
    "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos,
    "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Softsign": F.softsign,
    "HardSwish": F.hardswish, "Mish": F.mish, "Softplus": F.softplus,
    "Not": torch.logical_not, "IsNaN": torch.isnan,
}
_COMPARE = {"Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
            "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
            "Xor": torch.logical_xor}


@op(*_UNARY)
def unary(spec: Spec):
    return _UNARY[spec.op_type]


@op("LeakyRelu")
def leaky_relu(spec: Spec):
    alpha = spec.attrs["alpha"]
    return lambda x: F.leaky_relu(x, alpha)


@op("Elu", "Celu")
def elu(spec: Spec):
    alpha = spec.attrs["alpha"]
    fn = F.elu if spec.op_type == "Elu" else F.celu
    return lambda x: fn(x, alpha)


@op("Selu")
def selu(spec: Spec):
    alpha, gamma = spec.attrs["alpha"], spec.attrs["gamma"]
    return lambda x: F.elu(x, alpha) * gamma


@op("ThresholdedRelu")
def thresholded_relu(spec: Spec):
    alpha = spec.attrs["alpha"]
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@op("HardSigmoid")
def hard_sigmoid(spec: Spec):
    alpha, beta = spec.attrs["alpha"], spec.attrs["beta"]
    return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)


@op("Gelu")
def gelu(spec: Spec):
    approximate = spec.attrs.get("approximate", "none")
    return lambda x: F.gelu(x, approximate=approximate)


@op("Swish")
def swish(spec: Spec):
    alpha = spec.attrs.get("alpha", 1.0)
    return lambda x: x * torch.sigmoid(x * alpha)


@op("IsInf")
def is_inf(spec: Spec):
    negative, positive = spec.attrs["detect_negative"], spec.attrs["detect_positive"]
    if negative and positive:
        return torch.isinf
    if positive:
        return torch.isposinf
    return torch.isneginf if negative else (lambda x: torch.zeros_like(x, dtype=torch.bool))


@op("PRelu")
def prelu(spec: Spec):
    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@op("Add", "Sub", "Mul")
def arithmetic(spec: Spec):
    return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[spec.op_type]


def _div(a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # C integer division


@op("Div")
def div(spec: Spec):
    return _div


def _pow(a, b):
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)


@op("Pow")
def power(spec: Spec):
    return _pow


@op("Mod")
def mod(spec: Spec):
    return torch.fmod if spec.attrs["fmod"] else torch.remainder


@op(*_COMPARE)
def compare(spec: Spec):
    return _COMPARE[spec.op_type]


@op("Where")
def where(spec: Spec):
    return torch.where


@op("Sum", "Max", "Min", "Mean")
def variadic(spec: Spec):
    combine = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum,
               "Min": torch.minimum}[spec.op_type]
    if spec.op_type != "Mean":
        return lambda *xs: functools.reduce(combine, xs)
    count = len(spec.node.input)
    return lambda *xs: functools.reduce(combine, xs) / count


def _clamp(x, lo, hi):
    """Clip by constants; hardtanh's backward is several times faster than clamp's."""
    if x.is_floating_point() and (lo is None or hi is None or lo <= hi):
        return F.hardtanh(x, -math.inf if lo is None else lo, math.inf if hi is None else hi)
    return torch.clamp(x, lo, hi)


@op("Clip")
def clip(spec: Spec):
    if spec.since < 11:
        lo, hi = spec.attrs.get("min"), spec.attrs.get("max")
        return lambda x: _clamp(x, lo, hi)
    lo, hi = spec.const(1), spec.const(2)
    if (lo is not None or not spec.has(1)) and (hi is not None or not spec.has(2)):
        lo = None if lo is None else lo.item()
        hi = None if hi is None else hi.item()
        if lo is None and hi is None:
            return lambda x, *_: x
        return lambda x, *_: _clamp(x, lo, hi)

    def run(x, lo=None, hi=None):
        if lo is not None and hi is not None:  # ONNX: min > max gives max everywhere
            return torch.minimum(torch.maximum(x, lo), hi)
        return torch.clamp(x, lo, hi)
    return run


@op("Cast")
def cast(spec: Spec):
    dtype = torch_dtype(spec.attrs["to"])
    return lambda x: x.to(dtype)


@op("CastLike")
def cast_like(spec: Spec):
    return lambda x, like: x.to(like.dtype)


@op("Constant")
def constant(spec: Spec):
    from onnx import numpy_helper

    attrs = spec.attrs
    if "value" in attrs:
        value = numpy_helper.to_array(attrs["value"])
    elif "value_float" in attrs or "value_int" in attrs:
        value = attrs.get("value_float", attrs.get("value_int"))
        dtype = torch.float32 if "value_float" in attrs else torch.int64
        return lambda: torch.tensor(value, dtype=dtype)
    elif "value_floats" in attrs or "value_ints" in attrs:
        value = attrs.get("value_floats", attrs.get("value_ints"))
        dtype = torch.float32 if "value_floats" in attrs else torch.int64
        return lambda: torch.tensor(list(value), dtype=dtype)
    else:
        raise Unsupported(f"only tensor / float / int values (got {sorted(attrs)})")
    if value.dtype.kind not in "biuf":
        raise Unsupported(f"a {value.dtype} constant has no torch equivalent")
    return lambda: torch.from_numpy(value.copy())
