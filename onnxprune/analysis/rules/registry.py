"""The rule table: ONNX op type -> Rule, a function(node, ctx) -> Flow | Block."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Flow

Rule: TypeAlias = Callable[[onnx.NodeProto, Ctx], Flow | Block]

RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register one function for an op family (a plain dict, no registry of registries)."""
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn
    return register
