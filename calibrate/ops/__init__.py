"""The op table of the torch executor: one small builder per ONNX op, one module per family."""
from calibrate.ops import (  # noqa: F401
    control,
    conv,
    elementwise,
    index,
    linear,
    norm,
    pad,
    pool,
    reduce,
    resize,
    shape,
)
from calibrate.ops.registry import OPS, Spec, Unsupported, op

__all__ = ["OPS", "Spec", "Unsupported", "op"]
