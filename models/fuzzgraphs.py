"""Seeded random generator of small ONNX CNNs, for property-based fuzzing of the pruner.

``random_cnn(seed)`` grows a DAG from the input "input" [1, C, H, W] (H == W) by
repeatedly picking an existing 4-D tensor (biased towards recent, unconsumed ones)
and applying one random block; then a random head turns the unconsumed tensors
into the single output "output", and nodes that do not reach it are dropped.

Three independent random streams are spawned from the seed (model settings,
growth, head), so ``random_cnn(s, k)`` grows a prefix of ``random_cnn(s, k + 1)``:
hypothesis shrinking of ``max_nodes`` really gives smaller versions of one graph.
``max_nodes`` is a soft cap on non-Constant nodes before the head (a block may
overshoot it by a few nodes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.models.fuzzattention import self_attention
from onnxprune.models.fuzzhead import feature, live, merge

OPSETS = (11, 13, 17, 18, 21)
INT64_MAX = 2**63 - 1
MAX_C = 64  # channel cap, keeps concat chains and flatten heads small


@dataclass(frozen=True)
class T:
    """A 4-D activation [1, c, s, s] in the graph."""

    name: str
    c: int
    s: int


class _G:
    """Graph under construction: nodes, initializers and the pool of 4-D tensors."""

    def __init__(self, rng: np.random.Generator, opset: int, const_nodes: bool):
        self.rng, self.opset, self.const_nodes = rng, opset, const_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool: list[T] = []
        self.used: set[str] = set()
        self._n = 0

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def n_ops(self) -> int:
        return sum(n.op_type != "Constant" for n in self.nodes)

    def raw(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(op + "_"), **attrs))
        self.used.update(i for i in inputs if i)

    def sized(self, op: str, inputs: list[str], outputs: list[str], values: list[int],
              **attrs) -> None:
        """Split sizes / Squeeze axes: an input from opset 13, an attribute before."""
        if self.opset >= 13:
            self.raw(op, inputs + [self.ints(values)], outputs, **attrs)
        else:
            self.raw(op, inputs, outputs, **{"split" if op == "Split" else "axes": values},
                     **attrs)

    def op(self, op: str, inputs: list[str], c: int, s: int, keep: bool = True, **attrs) -> T:
        """Add a single-output node; ``keep`` puts the result in the pick pool."""
        t = T(self.fresh("t"), c, s)
        self.raw(op, inputs, [t.name], **attrs)
        if keep:
            self.pool.append(t)
        return t

    def weight(self, arr) -> str:
        name = self.fresh("w")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def const(self, arr) -> str:
        """A small non-weight constant (shapes, axes, scales): initializer or Constant node."""
        name = self.fresh("k")
        tensor = numpy_helper.from_array(np.asarray(arr), name)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64))

    def floats(self, values) -> str:
        return self.const(np.asarray(values, np.float32))

    def pick(self, ok=lambda t: True) -> T | None:
        """A random pool tensor satisfying ``ok``, favouring recent and unconsumed ones."""
        cands = [t for t in self.pool if ok(t)]
        if not cands:
            return None
        w = np.array([(i + 1) ** 2 * (1 if t.name in self.used else 3)
                      for i, t in enumerate(cands)], float)
        return cands[self.rng.choice(len(cands), p=w / w.sum())]

    def chans(self, lo: int = 3, hi: int = 24) -> int:
        return int(self.rng.integers(lo, hi + 1))


def conv(g: _G, x: T, cout: int, k: int = 3, group: int = 1, stride: int = 1,
         pad: int | None = None, keep: bool = True) -> T:
    """Conv with random bias presence and randomly omitted default attributes."""
    rng = g.rng
    pad = k // 2 if pad is None else pad
    fan_in = x.c // group * k * k
    ins = [x.name, g.weight(rng.normal(0, 1 / np.sqrt(fan_in), (cout, x.c // group, k, k)))]
    if rng.random() < 0.5:
        ins.append(g.weight(rng.normal(0, 0.1, cout)))
    attrs: dict = {"pads": [pad] * 4} if pad or rng.random() < 0.5 else {}
    if rng.random() < 0.8:
        attrs["kernel_shape"] = [k, k]
    if stride > 1 or rng.random() < 0.5:
        attrs["strides"] = [stride, stride]
    if group > 1 or rng.random() < 0.3:
        attrs["group"] = group
    return g.op("Conv", ins, cout, (x.s + 2 * pad - k) // stride + 1, keep, **attrs)


def bn(g: _G, x: T) -> T:
    r, c = g.rng, x.c
    ins = [x.name, g.weight(r.uniform(0.5, 1.5, c)), g.weight(r.normal(0, 0.2, c)),
           g.weight(r.normal(0, 0.2, c)), g.weight(r.uniform(0.5, 2.0, c))]
    attrs = {"epsilon": float(r.choice([1e-5, 1e-3]))} if r.random() < 0.5 else {}
    return g.op("BatchNormalization", ins, c, x.s, **attrs)


def act(g: _G, x: T) -> T:
    kinds = (["Relu", "Relu", "Sigmoid", "LeakyRelu", "Clip"]
             + (["HardSwish"] if g.opset >= 14 else []))
    kind = g.rng.choice(kinds)
    if kind == "LeakyRelu":
        return g.op(kind, [x.name], x.c, x.s, alpha=float(g.rng.uniform(0.01, 0.3)))
    if kind == "Clip":  # min / max are optional scalar inputs since opset 11
        lo = g.floats(0.0) if g.rng.random() < 0.8 else ""
        hi = g.floats(float(g.rng.choice([1.0, 6.0]))) if not lo or g.rng.random() < 0.7 else ""
        return g.op(kind, [x.name, lo, hi] if hi else [x.name, lo], x.c, x.s)
    return g.op(str(kind), [x.name], x.c, x.s)


def _with_divisor(g: _G, x: T, cands: list[int], hi: int) -> tuple[T, int]:
    """(x, group) with x.c divisible by group; projects x by a 1x1 conv if needed."""
    ok = [d for d in range(2, min(hi, x.c - 1) + 1) if x.c % d == 0]
    if ok:
        return x, int(g.rng.choice(ok))
    grp = int(g.rng.choice(cands))
    return conv(g, x, grp * int(g.rng.integers(2, 7)), k=1), grp


# ---------------------------------------------------------------- blocks
def b_conv(g: _G, x: T) -> None:
    """Conv (1x1/3x3, sometimes stride 2), optionally followed by BN and an activation."""
    stride = 2 if x.s >= 4 and g.rng.random() < 0.15 else 1
    y = conv(g, x, g.chans(), k=int(g.rng.choice([1, 3])), stride=stride)
    if g.rng.random() < 0.4:
        y = bn(g, y)
    if g.rng.random() < 0.5:
        act(g, y)


def b_depthwise(g: _G, x: T) -> None:
    mult = 2 if x.c <= MAX_C // 2 and g.rng.random() < 0.4 else 1
    y = conv(g, x, x.c * mult, k=int(g.rng.choice([3, 3, 1])), group=x.c)
    if g.rng.random() < 0.4:
        act(g, y)


def b_grouped(g: _G, x: T) -> None:
    x, grp = _with_divisor(g, x, [2, 3, 4], 8)
    conv(g, x, grp * int(g.rng.integers(1, 7)), k=int(g.rng.choice([1, 3])), group=grp)


def b_residual(g: _G, x: T) -> None:
    """Add / Mul of two same-shape tensors: an existing pair, or x and a conv branch of x."""
    op = "Add" if g.rng.random() < 0.75 else "Mul"
    y = g.pick(lambda t: t != x and (t.c, t.s) == (x.c, x.s))
    if y is None or g.rng.random() < 0.4:
        y = conv(g, x, x.c, k=int(g.rng.choice([1, 3])))
        if g.rng.random() < 0.5:
            y = act(g, y)
    pair = [x.name, y.name] if g.rng.random() < 0.5 else [y.name, x.name]
    g.op(op, pair, x.c, x.s)


def b_const_binary(g: _G, x: T) -> None:
    """Add / Mul with a per-channel constant [C,1,1] / [1,C,1,1], or Add of a scalar."""
    r = g.rng
    if r.random() < 0.25:
        shape: tuple = () if r.random() < 0.5 else (1,)
        op = "Add"
    else:
        shape = (x.c, 1, 1) if r.random() < 0.5 else (1, x.c, 1, 1)
        op = "Add" if r.random() < 0.5 else "Mul"
    val = r.normal(0, 0.3, shape) if op == "Add" else r.uniform(0.5, 1.5, shape)
    ins = [x.name, g.weight(val)]
    g.op(op, ins if r.random() < 0.7 else ins[::-1], x.c, x.s)


def b_se(g: _G, x: T) -> None:
    """Squeeze-excite: (GlobalAveragePool | ReduceMean) -> Conv -> Relu -> Conv -> Sigmoid
    -> Mul."""
    if g.rng.random() < 0.7:
        p = g.op("GlobalAveragePool", [x.name], x.c, 1, keep=False)
    elif g.opset >= 18:
        p = g.op("ReduceMean", [x.name, g.ints([2, 3])], x.c, 1, keep=False, keepdims=1)
    else:
        p = g.op("ReduceMean", [x.name], x.c, 1, keep=False, axes=[2, 3], keepdims=1)
    mid = int(g.rng.integers(1, max(2, x.c // 2) + 1))
    h = g.op("Relu", [conv(g, p, mid, k=1, pad=0, keep=False).name], mid, 1, keep=False)
    gate = g.op("Sigmoid", [conv(g, h, x.c, k=1, pad=0, keep=False).name], x.c, 1, keep=False)
    g.op("Mul", [x.name, gate.name] if g.rng.random() < 0.7 else [gate.name, x.name], x.c, x.s)


def b_concat(g: _G, x: T) -> None:
    """Concat (axis 1) of 2-3 same-spatial tensors; sometimes a concat of that concat."""
    for _ in range(1 + (g.rng.random() < 0.3)):
        parts = [x]
        for _ in range(int(g.rng.integers(1, 3))):
            room = MAX_C - sum(p.c for p in parts)
            y = g.pick(lambda t, x=x, room=room, parts=parts: t.s == x.s and t.c <= room
                       and (t not in parts or g.rng.random() < 0.1))
            if y is None and room >= 3:
                y = conv(g, x, min(room, g.chans()), k=1)
            if y is not None:
                parts.append(y)
        if len(parts) < 2:
            return
        g.rng.shuffle(parts)
        x = g.op("Concat", [p.name for p in parts], sum(p.c for p in parts), x.s, axis=1)


def _cuts(g: _G, c: int, n: int) -> list[int]:
    cuts = sorted(g.rng.choice(np.arange(1, c), n - 1, replace=False).tolist())
    return [b - a for a, b in zip([0] + cuts, cuts + [c])]


def b_split(g: _G, x: T) -> None:
    """Split on axis 1 with explicit sizes (attribute before opset 13, input after)."""
    if x.c < 3:
        x = conv(g, x, g.chans(), k=1)
    sizes = _cuts(g, x.c, int(g.rng.integers(2, 4)))
    outs = [T(g.fresh("t"), c, x.s) for c in sizes]
    g.sized("Split", [x.name], [o.name for o in outs], sizes, axis=1)
    g.pool.extend(outs)


def b_slice(g: _G, x: T) -> None:
    """Slice on axis 1, step 1; bounds sometimes negative / INT64_MAX, axis sometimes -3."""
    r = g.rng
    if x.c < 2:
        x = conv(g, x, g.chans(), k=1)
    start = int(r.integers(0, x.c))
    end = int(r.integers(start + 1, x.c + 1 - (start == 0)))
    s_in = start - x.c if start and r.random() < 0.2 else start
    e_in = (INT64_MAX if end == x.c and r.random() < 0.5
            else (end - x.c if end < x.c and r.random() < 0.2 else end))
    ins = [x.name, g.ints([s_in]), g.ints([e_in]), g.ints([1 if r.random() < 0.8 else -3])]
    if r.random() < 0.4:
        ins.append(g.ints([1]))
    g.op("Slice", ins, end - start, x.s)


def b_shuffle(g: _G, x: T) -> None:
    """Channel shuffle: Reshape [1,g,C/g,H,W] -> Transpose (0,2,1,3,4) -> Reshape [1,C,H,W]."""
    x, grp = _with_divisor(g, x, [2, 3, 4], 4)
    a = g.op("Reshape", [x.name, g.ints([1, grp, x.c // grp, x.s, x.s])], x.c, x.s, keep=False)
    b = g.op("Transpose", [a.name], x.c, x.s, keep=False, perm=[0, 2, 1, 3, 4])
    g.op("Reshape", [b.name, g.ints([1, x.c, x.s, x.s])], x.c, x.s)


def b_pool(g: _G, x: T) -> None:
    """MaxPool / AveragePool 2x2 stride 2 (s >= 4), or a size-keeping MaxPool 3x3 pad 1."""
    op = str(g.rng.choice(["MaxPool", "AveragePool"]))
    if x.s >= 4 and g.rng.random() < 0.8:
        g.op(op, [x.name], x.c, x.s // 2, kernel_shape=[2, 2], strides=[2, 2])
    else:
        g.op("MaxPool", [x.name], x.c, x.s, kernel_shape=[3, 3], pads=[1] * 4)


def b_resize(g: _G, x: T) -> None:
    """Resize x2 via scales (nearest) or an explicit sizes input; often pooled right away."""
    r = g.rng
    if x.s > 16:
        return b_pool(g, x)
    roi = g.floats(np.zeros(0)) if g.opset < 13 or r.random() < 0.5 else ""
    if r.random() < 0.6:
        ins = [x.name, roi, g.floats([1, 1, 2, 2])]
        attrs = {"mode": "nearest"}
    else:
        scales = g.floats(np.zeros(0)) if g.opset < 13 else ""
        ins = [x.name, roi, scales, g.ints([1, x.c, 2 * x.s, 2 * x.s])]
        attrs = {"mode": str(r.choice(["nearest", "linear"]))}
    if r.random() < 0.3:
        attrs["coordinate_transformation_mode"] = "asymmetric"
        if attrs["mode"] == "nearest":
            attrs["nearest_mode"] = "floor"
    y = g.op("Resize", ins, x.c, 2 * x.s, **attrs)
    if r.random() < 0.5:
        b_pool(g, y)


def b_pad_conv(g: _G, x: T) -> None:
    """Pad H/W by 1 (constant/reflect/edge; pads + axes inputs differ by opset) -> valid 3x3
    Conv."""
    r = g.rng
    mode = str(r.choice(["constant", "reflect", "edge"]))
    if g.opset >= 18 and r.random() < 0.5:
        ins = [x.name, g.ints([1, 1, 1, 1]), "", g.ints([2, 3])]
    else:
        ins = [x.name, g.ints([0, 0, 1, 1, 0, 0, 1, 1])]
    if mode == "constant" and r.random() < 0.5:
        ins[2:3] = [g.floats(float(r.choice([0.0, 0.5])))]
    p = g.op("Pad", ins, x.c, x.s + 2, keep=False, mode=mode)
    conv(g, p, g.chans(), k=3, pad=0)


def b_attention(g: _G, x: T) -> None:
    """Self-attention over the positions (models/fuzzattention.py); above 8x8, a pool."""
    if x.s > 8:
        return b_pool(g, x)
    self_attention(g, x)


BLOCKS = [(b_conv, 6), (b_depthwise, 2), (b_grouped, 2), (bn, 1), (act, 2), (b_residual, 3),
          (b_const_binary, 2), (b_se, 1.5), (b_concat, 2.5), (b_split, 1.5), (b_slice, 1.5),
          (b_shuffle, 1.5), (b_pool, 1.5), (b_resize, 1), (b_pad_conv, 1), (b_attention, 1.5)]


# ---------------------------------------------------------------- head and assembly
def _head(g: _G, rng: np.random.Generator) -> tuple[str, list[int]]:
    """Turn the unconsumed tensors into one output; returns (name, shape)."""
    g.rng = rng
    leaves = [t for t in g.pool if t.name not in g.used and t.name != "input"] or [g.pool[-1]]
    kind = rng.choice(["gap", "flat", "conv"], p=[0.45, 0.2, 0.35])
    n = int(rng.integers(1, 17))
    if kind == "conv":  # final Conv on the merge of the newest leaves sharing its spatial size
        same = [t for t in leaves if t.s == leaves[-1].s][-3:]
        x = same[-1]
        if len(same) > 1:
            add = all(t.c == x.c for t in same) and rng.random() < 0.5
            x = T(merge(g, [t.name for t in same], add),
                  x.c if add else sum(t.c for t in same), x.s)
        y = conv(g, x, n, k=int(rng.choice([1, 3])), keep=False)
        return y.name, [1, n, y.s, y.s]
    leaves = leaves[-4:]
    add = rng.random() < 0.5
    ns = [n if add else int(rng.integers(1, 17)) for _ in leaves]
    feats = [feature(g, t, kind == "flat", k) for t, k in zip(leaves, ns)]
    return merge(g, feats, add), [1, n if add else sum(ns)]


def random_cnn(seed: int, max_nodes: int = 14) -> onnx.ModelProto:
    """A random small CNN; deterministic in (seed, max_nodes). See the module docstring."""
    r_cfg, r_grow, r_head = (np.random.default_rng(s)
                             for s in np.random.SeedSequence(seed).spawn(3))
    opset = int(r_cfg.choice(OPSETS))
    c, s = int(r_cfg.integers(1, 7)), int(r_cfg.choice([8, 12, 16]))
    g = _G(r_grow, opset, const_nodes=bool(r_cfg.random() < 0.25))
    g.pool.append(T("input", c, s))
    fns, weights = zip(*BLOCKS)
    p = np.array(weights) / sum(weights)
    for _ in range(10 * max_nodes):
        if g.n_ops() >= max_nodes:
            break
        fns[g.rng.choice(len(fns), p=p)](g, g.pick())
    out, shape = _head(g, r_head)
    for node in g.nodes:
        if node.output[0] == out:
            node.output[0] = "output"
    nodes, inits = live(g.nodes, g.inits, "output")
    graph = helper.make_graph(
        nodes, f"random_cnn_{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, s, s])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    return helper.make_model_gen_version(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzzgraphs",
        doc_string=f"random_cnn(seed={seed}, max_nodes={max_nodes})")


_NODE_COUNTS = st.integers(1, 24)


def graphs(max_nodes=_NODE_COUNTS) -> st.SearchStrategy[onnx.ModelProto]:
    """Hypothesis strategy of random_cnn models; a failure shrinks to (seed, max_nodes).

    The model's doc_string records the call that rebuilds it.
    """
    return st.builds(random_cnn, seed=st.integers(0, 2**32 - 1), max_nodes=max_nodes)
