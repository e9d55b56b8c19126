"""The output head of the fuzz generator (models/fuzzgraphs.py's `_head`): Gemm features of
the leaves, their merge, and the pruning of nodes that do not reach the output.

`g` is fuzzgraphs' graph under construction and `x` one of its tensors (fields name, c, s);
these functions use only their methods and fields and draw from `g.rng` in a fixed order, so
a seed still gives the same graph. They do not import fuzzgraphs' types, to keep the imports
acyclic.
"""
from __future__ import annotations

import numpy as np


def gemm(g, a: str, k: int, n: int) -> str:
    """Gemm(transB=1) of a [1, k] tensor to [1, n], bias C optional (since opset 11)."""
    ins = [a, g.weight(g.rng.normal(0, 1 / np.sqrt(k), (n, k)))]
    if g.rng.random() < 0.7:
        ins.append(g.weight(g.rng.normal(0, 0.1, n)))
    return g.op("Gemm", ins, n, 0, keep=False, transB=1).name


def feature(g, x, flat: bool, n: int) -> str:
    """[1, n] of x: GlobalAveragePool -> Flatten -> Gemm, or Flatten of the whole map -> Gemm."""
    if flat and x.c * x.s * x.s <= 8192:
        f = g.op("Flatten", [x.name], 0, 0, keep=False, axis=1)
        return gemm(g, f.name, x.c * x.s * x.s, n)
    p = g.op("GlobalAveragePool", [x.name], x.c, 1, keep=False)
    f = g.op("Flatten", [p.name], 0, 0, keep=False, **({"axis": 1} if g.rng.random() < 0.5 else {}))
    return gemm(g, f.name, x.c, n)


def merge(g, names: list[str], add: bool) -> str:
    """Add chain or one Concat(axis=1) of several branch outputs."""
    if len(names) == 1:
        return names[0]
    if not add:
        return g.op("Concat", names, 0, 0, keep=False, axis=1).name
    out = names[0]
    for other in names[1:]:
        out = g.op("Add", [out, other], 0, 0, keep=False).name
    return out


def live(nodes: list, inits: list, out: str) -> tuple[list, list]:
    """Drop nodes (and initializers) that do not reach ``out``."""
    need, keep = {out}, []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    return keep[::-1], [t for t in inits if t.name in need]
