"""The self-attention block of the fuzz generator (models/fuzzgraphs.py's `b_attention`).

`g` is fuzzgraphs' graph under construction and `x` one of its 4-D tensors; these functions
use only their methods and fields and draw from `g.rng` in a fixed order, so a seed still
gives the same graph. They do not import fuzzgraphs' types, to keep the imports acyclic.
"""
from __future__ import annotations

import numpy as np


def _linear(g, x: str, k: int, m: int, s: int) -> str:
    """x [1, N, k] @ W [k, m], plus a bias Add (70 %)."""
    y = g.op("MatMul", [x, g.weight(g.rng.normal(0, 1 / np.sqrt(k), (k, m)))], m, s, keep=False)
    if g.rng.random() < 0.7:
        y = g.op("Add", [y.name, g.weight(g.rng.normal(0, 0.1, m))], m, s, keep=False)
    return y.name


def _heads(g, tok: str, c_in: int, n: int, heads: int, dh: int, s: int) -> list[str]:
    """q, k, v as [1, H, N, Dh]: a fused qkv projection split like timm's, or three."""
    c = heads * dh
    if g.rng.random() < 0.5:
        qkv = g.op("Reshape", [_linear(g, tok, c_in, 3 * c, s), g.ints([1, n, 3, heads, dh])],
                   c, s, keep=False)
        t = g.op("Transpose", [qkv.name], c, s, keep=False, perm=[2, 0, 3, 1, 4])
        parts, out = [g.fresh("t") for _ in range(3)], [g.fresh("t") for _ in range(3)]
        g.sized("Split", [t.name], parts, [1, 1, 1], axis=0)
        for part, name in zip(parts, out):
            g.sized("Squeeze", [part], [name], [0])
        return out
    return [g.op("Transpose", [g.op("Reshape", [_linear(g, tok, c_in, c, s), g.ints(
        [1, n, heads, dh])], c, s, keep=False).name], c, s, keep=False, perm=[0, 2, 1, 3]).name
        for _ in range(3)]


def self_attention(g, x) -> None:
    """Self-attention over the s*s positions of x as a ViT exports it: tokens [1,N,C], q / k
    / v in H heads of Dh, (q * scale) @ kT [+ a per-head bias table], Softmax, @ v, the heads
    merged by Transpose + Reshape, an output projection, back to [1,C',s,s]."""
    r = g.rng
    n, heads, dh = x.s * x.s, int(r.integers(1, 5)), int(r.integers(1, 7))
    a = g.op("Reshape", [x.name, g.ints([1, x.c, n])], x.c, x.s, keep=False)
    tok = g.op("Transpose", [a.name], x.c, x.s, keep=False, perm=[0, 2, 1])
    q, k, v = _heads(g, tok.name, x.c, n, heads, dh, x.s)
    kt = g.op("Transpose", [k], dh, x.s, keep=False, perm=[0, 1, 3, 2])
    qs = g.op("Mul", [q, g.floats(dh ** -0.5)], dh, x.s, keep=False)
    scores = g.op("MatMul", [qs.name, kt.name], heads, x.s, keep=False)
    if r.random() < 0.3:
        table = g.weight(r.normal(0, 0.5, (1, heads, n, n)))
        scores = g.op("Add", [scores.name, table], heads, x.s, keep=False)
    attn = g.op("Softmax", [scores.name], heads, x.s, keep=False, axis=-1)
    ctx = g.op("MatMul", [attn.name, v], heads, x.s, keep=False)
    ctx_t = g.op("Transpose", [ctx.name], heads, x.s, keep=False, perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [ctx_t.name, g.ints([1, n, heads * dh])], heads, x.s, keep=False)
    cout = g.chans()
    y = g.op("Transpose", [_linear(g, merged.name, heads * dh, cout, x.s)], cout, x.s,
             keep=False, perm=[0, 2, 1])
    g.op("Reshape", [y.name, g.ints([1, cout, x.s, x.s])], cout, x.s)
