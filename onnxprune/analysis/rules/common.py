"""Small helpers shared by the rules."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.flow import Key, tensor_key

T = tensor_key


def present(names) -> list[str]:
    """Inputs or outputs that are not omitted (ONNX marks an omitted optional slot with '')."""
    return [n for n in names if n]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def int_list(value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def used_outputs(node: onnx.NodeProto) -> list[str]:
    return present(node.output)


def not_axis(op: str, axis: int, want: int = 1) -> str:
    return f"{op} works on channels at axis {want} but they are at axis {axis} here"


__all__ = ["Key", "T", "present", "norm_axis", "int_list", "used_outputs", "not_axis"]
