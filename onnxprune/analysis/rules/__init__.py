"""Per-op channel rules, one small function per op family (see flow.py for what they answer).

An op without a rule blocks every channel it touches: nothing is assumed to pass through.
"""
from onnxprune.analysis.rules import conv, layout, linear, pointwise, reshape, spatial  # noqa: F401  (they register rules)
from onnxprune.analysis.rules.registry import RULES, rule

__all__ = ["RULES", "rule"]
