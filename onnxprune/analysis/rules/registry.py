"""The rule table: (op domain, op type) -> Rule, a function(node, ctx) -> Flow | Block.

Keyed by domain as well as op type, so that a custom-domain node named like a standard op
(a plugin called "Conv") never gets the standard rule. "" and "ai.onnx" are the same domain;
a plain op type as key means that standard domain. An op of any other (domain, op type) has
no rule: its channels are blocked (units.py), nothing passes through by default.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import onnx

from onnxprune.analysis.context import Ctx
from onnxprune.analysis.flow import Block, Flow

Rule: TypeAlias = Callable[[onnx.NodeProto, Ctx], Flow | Block]
OpKey: TypeAlias = tuple[str, str]  # (domain, op type), the standard domain spelled ""

STANDARD_DOMAINS = ("", "ai.onnx")


def op_key(key: str | OpKey) -> OpKey:
    """(domain, op type) with "ai.onnx" spelled ""; a bare op type is a standard op."""
    domain, op_type = ("", key) if isinstance(key, str) else key
    return ("" if domain in STANDARD_DOMAINS else domain), op_type


def op_name(node: onnx.NodeProto) -> str:
    """`domain::op_type` for a custom-domain node, the bare op type for a standard one."""
    domain, op_type = op_key((node.domain, node.op_type))
    return f"{domain}::{op_type}" if domain else op_type


class RuleTable(dict):
    """A dict keyed by `op_key`: every access normalises its key, so RULES["Relu"] and
    RULES[("ai.onnx", "Relu")] are one entry (tests patch entries by bare op type)."""

    def __getitem__(self, key):
        return super().__getitem__(op_key(key))

    def __setitem__(self, key, fn: Rule) -> None:
        super().__setitem__(op_key(key), fn)

    def __delitem__(self, key) -> None:
        super().__delitem__(op_key(key))

    def __contains__(self, key) -> bool:
        return super().__contains__(op_key(key))

    def get(self, key, default=None):
        return super().get(op_key(key), default)


RULES: RuleTable = RuleTable()


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register one function for an op family of one domain (a plain dict, no registry of
    registries)."""
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[(domain, op)] = fn
        return fn
    return register


def find_rule(node: onnx.NodeProto) -> Rule | None:
    """The rule of this node's (domain, op type), or None: then its channels are blocked."""
    return RULES.get((node.domain, node.op_type))
