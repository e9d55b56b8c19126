"""The op table: ONNX op type -> builder(spec) -> callable(*inputs).

A builder runs once, at construction: it reads the node's attributes (schema defaults already
filled in) and its constant inputs, and returns a small torch function that takes the node's
input tensors (None for an absent optional input) and returns one tensor or a tuple of them.
A builder that cannot reproduce the node exactly raises `Unsupported(reason)`. A function
marked with `@wants_run` also receives the forward's context first (`run.training`: the
module's train() state; `run.module`), for BatchNormalization, Dropout and If.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper

OPS: dict[str, Callable] = {}


class Unsupported(Exception):
    """This node (op, attribute value, or input form) has no exact torch implementation."""


def op(*op_types: str):
    """Register one builder for an op family (a plain dict, like onnxprune/rules/registry.py)."""
    def register(fn: Callable) -> Callable:
        for name in op_types:
            OPS[name] = fn
        return fn
    return register


@dataclass
class Spec:
    """What a builder may read about its node."""

    node: onnx.NodeProto
    attrs: dict
    since: int  # the schema version the node resolves to at the model's opset
    consts: list  # per input slot: numpy value of an initializer / Constant, else None
    outputs_used: list[bool]  # per output: consumed by a node or a graph output
    buffer_slots: frozenset = frozenset()  # input slots that are registered buffers
    compile: Callable | None = None  # GraphProto -> (run(dict) -> tuple, outer names)
    extra: dict = field(default_factory=dict)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def has(self, slot: int) -> bool:
        return slot < len(self.node.input) and bool(self.node.input[slot])

    def const(self, slot: int) -> np.ndarray | None:
        return self.consts[slot] if slot < len(self.consts) else None

    def ints(self, slot: int) -> list[int] | None:
        """A constant integer input as python ints (None when absent or computed)."""
        value = self.const(slot)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    def floats(self, slot: int) -> list[float] | None:
        value = self.const(slot)
        return None if value is None else [float(v) for v in value.reshape(-1)]

    def only_first_output(self, why: str = "") -> None:
        """Raise when a secondary output (indices, mask, saved statistics) is consumed."""
        if any(self.outputs_used[1:]):
            raise Unsupported(f"only the first output is implemented{why}")


def wants_run(fn: Callable) -> Callable:
    """Mark an op function that takes the forward's context as its first argument."""
    fn.wants_run = True
    return fn


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX TensorProto element type."""
    try:
        np_type = helper.tensor_dtype_to_np_dtype(onnx_type)
        return torch.from_numpy(np.zeros(0, dtype=np_type)).dtype
    except (KeyError, TypeError, ValueError):
        raise Unsupported(f"element type {helper.tensor_dtype_to_string(onnx_type)} has no "
                          f"torch equivalent") from None


def as_ints(value) -> list[int]:
    """A shape / axes / index tensor (or constant) as python ints."""
    if isinstance(value, list):
        return value
    return [int(v) for v in value.reshape(-1).tolist()]


def norm_axes(axes, rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]
