"""Per-op channel rules, one small function per op family (see flow.py for what they answer).

An op without a rule blocks every channel it touches: nothing is assumed to pass through.
Rules are keyed by (domain, op type); contrib.py covers onnxruntime's contrib ops.
"""
from onnxprune.analysis.rules import (  # noqa: F401  (they register rules)
    contrib,
    conv,
    layout,
    linear,
    pointwise,
    quant,
    reshape,
    spatial,
)
from onnxprune.analysis.rules.registry import RULES, find_rule, op_name, rule

__all__ = ["RULES", "find_rule", "op_name", "rule"]
