"""The rule table: ONNX op type -> function(node, ctx) -> Flow | Block."""
from __future__ import annotations

from collections.abc import Callable

RULES: dict[str, Callable] = {}


def rule(*op_types: str):
    """Register one function for an op family (a plain dict, no registry of registries)."""
    def register(fn: Callable) -> Callable:
        for op in op_types:
            RULES[op] = fn
        return fn
    return register
