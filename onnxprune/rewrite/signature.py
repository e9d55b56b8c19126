"""The original's signature in the pruned file: dynamic dimensions survive pruning.

Normalisation gives every input a static shape (the analysis shape: a dynamic batch as 1, other
dims from `--input-shape`) and folds shape arithmetic into constants, so a slice of the
normalised graph is tied to that shape. `signature` finds the original's dynamic input
dimensions (a static size that `--input-shape` changed keeps the analysis size in the output).
`second_shape` normalises the original a second time, at another size of each of them (batch
2, or 3 when the analysis batch is 2; spatial sizes + 32·k, else × (k + 1), k = 1, 2, ...
along the input's free axes, so that H and W never coincide), and keeps the first size at which
the original runs. Comparing the two normalisations tensor by tensor says which axis of which
tensor follows the free dimensions: that is the one source of truth for the rewrite.

`SecondShape.apply` rewrites, on those axes only, the shape constants that normalisation
folded, in dynamic form: a Reshape target gets 0 where its output axis is the same axis of its
input, -1 for one remaining axis, else a target gathered from `Shape(input)` (channel shuffle
at a dynamic H, W); an Expand shape gets 1 where the input already has the size; Resize sizes
become scales; a Slice to the end of an axis ends at INT64_MAX. Inputs and outputs keep their
names, dtypes and ranks and get the original's dynamic dims back (dim_param names; an unnamed
dynamic dim stays unnamed). The analysis shape is recorded in the file's metadata
(`onnxprune.model.graph.ANALYSIS_SHAPE`): where one static shape is needed (latency, bench,
pruning the file again) the dynamic dims take it.
Anything else that still ties the graph to the analysis size is found by shape inference at the
second shape and refused in one line (UserError) naming the node, with `--static-shape` as the
way out. The rewrite reads shapes and shape constants only, never weight values.

What is proven (`onnxprune.api.prune`): the oracle, on the rewritten slice with the original's
weights, at the analysis shape against the masked original normalised there, and at the second
shape against the masked original normalised at that shape: two independent normalisations of
the original file, the same sink zeroing. A fine-tuned slice (the same graph, other weights)
gets the same rewrite. Two sizes are evidence for the others, not a proof for every size: a
size the model's own arithmetic treats differently (a stride that does not divide it) is not
covered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.context import static_shapes
from onnxprune.analysis.normalize import normalize
from onnxprune.errors import UserError, first_line
from onnxprune.model.graph import (
    ANALYSIS_SHAPE,
    fix_input_shapes,
    format_input_shapes,
    graph_inputs,
    static_input_shapes,
)
from onnxprune.model.runtime import random_inputs, session
from onnxprune.model.weights import detach, infer_shapes

if TYPE_CHECKING:  # the oracle's verdict type; api.prune runs the oracle
    from onnxprune.verify.oracle import Verdict

Shapes = dict[str, tuple[int, ...]]
_INT64_MAX = np.iinfo(np.int64).max
_WAY_OUT = "pass --static-shape to keep the analysis shape"


@dataclass(frozen=True)
class ShapeCheck:
    """The oracle at one input shape of the written file."""
    inputs: Shapes
    verdict: Verdict


@dataclass(frozen=True)
class FreeDim:
    """A dynamic input dimension of the original (`label` its dim_param, "?" if unnamed), and
    the size the analysis gave it."""
    input: str
    axis: int
    label: str
    analysis: int
    candidates: tuple[int, ...]   # second sizes to try, in order


@dataclass
class Signature:
    """What the written file must keep: the original's dynamic input dimensions."""
    source: onnx.ModelProto        # the original, as loaded
    analysed: onnx.ModelProto      # normalised at the analysis shape
    dims: tuple[FreeDim, ...]
    _second: SecondShape | None = field(default=None, repr=False, compare=False)

    def second(self) -> SecondShape:
        """`second_shape`, found once (a sweep prunes one analysis several times)."""
        if self._second is None:
            self._second = second_shape(self)
        return self._second

    def describe(self) -> str:
        """`input 'x' axes 0 (batch), 2 (h)`; an unnamed dynamic dim is `(?)`."""
        axes: dict[str, list[str]] = {}
        for d in self.dims:
            axes.setdefault(d.input, []).append(f"{d.axis} ({d.label})")
        return "; ".join(f"input {name!r} {'axes' if len(a) > 1 else 'axis'} {', '.join(a)}"
                         for name, a in axes.items())

    def shapes(self, attempt: int, analysis: Shapes) -> Shapes:
        """Input shapes of the `attempt`-th second size (a dim_param shared by several
        inputs or axes takes one size)."""
        shapes = {name: list(shape) for name, shape in analysis.items()}
        named: dict[str, int] = {}
        for d in self.dims:
            size = d.candidates[min(attempt, len(d.candidates) - 1)]
            if d.label != "?":
                size = named.setdefault(d.label, size)
            shapes[d.input][d.axis] = size
        return {name: tuple(shape) for name, shape in shapes.items()}


def _candidates(axis: int, size: int, k: int) -> tuple[int, ...]:
    if axis == 0:
        return (3,) if size == 2 else (2,)
    return (size + 32 * k, size * (k + 1))


def signature(source: onnx.ModelProto, normalised: onnx.ModelProto) -> Signature | None:
    """The dimensions of `source`'s inputs that normalisation fixed; None when there are none
    (the output then keeps the analysis shape, which is the original's)."""
    analysis = static_input_shapes(normalised)
    dims = []
    for inp in graph_inputs(source):
        k = 0
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            size = analysis[inp.name][axis]
            if not _dynamic(d):  # static, or changed by --input-shape: the analysis size stays
                continue
            k += axis > 0
            dims.append(FreeDim(inp.name, axis, d.dim_param or "?", size,
                                _candidates(axis, size, k)))
    return Signature(source, normalised, tuple(dims)) if dims else None


def second_shape(sig: Signature) -> SecondShape:
    """The original normalised at the first second size it runs at; else a UserError."""
    analysis = static_input_shapes(sig.analysed)
    tried = []
    for attempt in range(max(len(d.candidates) for d in sig.dims)):
        shapes = sig.shapes(attempt, analysis)
        if shapes in (s for s, _ in tried):
            continue
        try:
            model = normalize(sig.source, shapes)
            session(model, optimize=False, quiet=True).run(None, random_inputs(model, 0))
        except Exception as exc:  # shape inference, folding or onnxruntime: the original fails
            tried.append((shapes, first_line(exc)[:160]))
            continue
        second = SecondShape(sig, model, shapes)
        second.check_outputs()
        return second
    why = "; ".join(f"at {format_input_shapes(s)}: {reason}" for s, reason in tried)
    raise UserError(f"{sig.describe()} is dynamic, but the original model does not run at a "
                    f"second size ({why}): {_WAY_OUT}")


class SecondShape:
    """The original normalised at a second shape, and the rewrite it teaches (module doc)."""

    def __init__(self, sig: Signature, model: onnx.ModelProto, shapes: Shapes):
        self.signature, self.model, self.shapes = sig, model, shapes
        self.at_analysis, self.at_second = static_shapes(sig.analysed), static_shapes(model)

    def dynamic(self, tensor: str) -> set[int]:
        """Axes of `tensor` whose size changes with the free dimensions."""
        a, s = self.at_analysis.get(tensor), self.at_second.get(tensor)
        if a is None or s is None or len(a) != len(s):
            return set()
        return {axis for axis, (x, y) in enumerate(zip(a, s)) if x != y}

    def failure(self, why: str, shapes: Shapes | None = None) -> UserError:
        """The one line for a dimension that cannot stay free (at the second shape, or at
        `shapes`)."""
        return UserError(f"cannot keep {self.signature.describe()} dynamic: at input "
                         f"{format_input_shapes(shapes or self.shapes)} {why}; {_WAY_OUT}")

    def check_outputs(self) -> None:
        """An output dim named like an input dim must follow it in the original itself (a
        Gather of row 0 of the batch declares a batch it does not have)."""
        sizes = {d.label: self.shapes[d.input][d.axis] for d in self.signature.dims
                 if d.label != "?"}
        for out in self.signature.source.graph.output:
            got = self.at_second.get(out.name)
            for axis, d in enumerate(out.type.tensor_type.shape.dim):
                if got and d.dim_param in sizes and got[axis] != sizes[d.dim_param]:
                    raise self.failure(f"the original's output {out.name!r} axis {axis} "
                                       f"({d.dim_param}) is {got[axis]}, not "
                                       f"{sizes[d.dim_param]}: the model ties it to the "
                                       f"analysis size")

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` (a slice of the analysed graph) with the original's signature and
        its shape constants in dynamic form; a UserError if a dimension stays tied."""
        free = onnx.ModelProto()
        free.CopyFrom(model)
        shapes = static_shapes(infer_shapes(free))
        nodes = []
        for node in free.graph.node:
            rewrite = _REWRITES.get(node.op_type)
            nodes.extend(rewrite(self, node, free, shapes) if rewrite else [])
            nodes.append(node)
        del free.graph.node[:]
        free.graph.node.extend(nodes)
        _restore_io(free, self.signature.source, clear=True)  # inference starts from these
        _restore_io(infer_shapes(free), self.signature.source)  # symbolic value_info
        _record_shape(free, format_input_shapes(static_input_shapes(self.signature.analysed)))
        mismatch = self.mismatch(free, shapes)
        if mismatch:
            raise self.failure(mismatch)
        return free

    def mismatch(self, free: onnx.ModelProto, shapes: Shapes) -> str | None:
        """The first tensor whose size, inferred at the second shape, differs from the
        original's there on a free axis (the others keep the slice's sizes); None if none.
        A free axis the slice also narrowed (channels flattened with H, W) is left to the
        oracle."""
        light, _ = detach(free)
        del light.graph.value_info[:]
        fix_input_shapes(light, self.shapes)
        try:
            got = static_shapes(onnx.shape_inference.infer_shapes(light, data_prop=True))
        except Exception as exc:
            return f"shape inference fails: {first_line(exc)}"
        for node in free.graph.node:
            for t in node.output:
                axes = self.dynamic(t)
                if t not in got or t not in shapes or not axes:
                    continue
                want = [self.at_second[t][ax] if ax in axes else n
                        for ax, n in enumerate(shapes[t])]
                left = [ax for ax in range(len(want))
                        if ax not in axes or shapes[t][ax] == self.at_analysis[t][ax]]
                if len(got[t]) != len(want) or any(got[t][ax] != want[ax] for ax in left):
                    return (f"{node.op_type} {node.name!r} gives {t!r} the shape "
                            f"{list(got[t])} instead of {want} (a size fixed at the analysis "
                            f"shape)")
        return None

    def follows(self, data: str, j: int, out: str, i: int) -> bool:
        """Axis `j` of `data` and axis `i` of `out` are free and of one size at both shapes."""
        a, s = self.at_analysis, self.at_second
        return (j in self.dynamic(data) and i in self.dynamic(out)
                and a[data][j] == a[out][i] and s[data][j] == s[out][i])

    def source_axis(self, data: str, out: str, axis: int) -> int | None:
        """The free axis of `data` that `out`'s `axis` copies (its own index first)."""
        same = [j for j in sorted(self.dynamic(data)) if self.follows(data, j, out, axis)]
        return axis if axis in same else (same[0] if same else None)


# the per-op rewrites: each may edit its node, and returns the nodes to insert before it


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _add_const(model: onnx.ModelProto, name: str, value) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _reshape(second: SecondShape, node, model, shapes: Shapes) -> list:
    data, out = node.input[0], node.output[0]
    axes = second.dynamic(out)
    if not axes or out not in shapes or _const(model, node.input[1]) is None:
        return []
    sizes = list(shapes[out])
    copies = {i: second.source_axis(data, out, i) for i in axes}  # None: unknown, -1
    if list(copies.values()).count(None) > 1 or 0 in sizes:
        return []  # two unknown sizes (or an empty tensor): mismatch() names this node
    keep = [a for a in node.attribute if a.name != "allowzero"]  # 0 must copy
    del node.attribute[:]
    node.attribute.extend(keep)
    if all(j in (i, None) for i, j in copies.items()):  # each copies its own axis: 0
        target = [n if i not in axes else -1 if copies[i] is None else 0
                  for i, n in enumerate(sizes)]
        node.input[1] = _add_const(model, f"{node.name}__free_shape", np.int64(target))
        return []
    return _gathered_target(node, model, sizes, copies, len(shapes[data]))


def _gathered_target(node, model, sizes: list[int], copies: dict, rank: int) -> list:
    """target = Gather(Concat(Shape(data), constants), index): the free axes read from the
    input's shape at run time, the others constant (-1 for one unknown)."""
    consts, index = [], []
    for i, n in enumerate(sizes):
        if copies.get(i) is not None:
            index.append(copies[i])
        else:
            index.append(rank + len(consts))
            consts.append(-1 if i in copies else n)
    base = f"{node.name}__free"
    sizes_name = _add_const(model, f"{base}_sizes", np.int64(consts))
    index_name = _add_const(model, f"{base}_index", np.int64(index))
    node.input[1] = f"{base}_target"
    return [helper.make_node("Shape", [node.input[0]], [f"{base}_shape"], f"{base}_shape"),
            helper.make_node("Concat", [f"{base}_shape", sizes_name], [f"{base}_cat"],
                             f"{base}_cat", axis=0),
            helper.make_node("Gather", [f"{base}_cat", index_name], [f"{base}_target"],
                             f"{base}_target", axis=0)]


def _expand(second: SecondShape, node, model, shapes: Shapes) -> list:
    """Expand to a free size the input already has: 1 there (broadcast keeps it)."""
    data, out = node.input[0], node.output[0]
    axes, target = second.dynamic(out), _const(model, node.input[1])
    if not axes or target is None or out not in shapes:
        return []
    target = target.astype(np.int64)
    for i in axes:
        j, p = i - (len(shapes[out]) - len(shapes[data])), i - (len(shapes[out]) - len(target))
        if j < 0 or p < 0 or not second.follows(data, j, out, i):
            return []
        target[p] = 1
    node.input[1] = _add_const(model, f"{node.name}__free_shape", target)
    return []


def _resize(second: SecondShape, node, model, shapes: Shapes) -> list:
    """Resize `sizes` fixed at the analysis size become the scales they imply, where those
    scales give the original's sizes at the second shape too."""
    data, out = node.input[0], node.output[0]
    attrs = {a.name for a in node.attribute}
    if (len(node.input) < 4 or not second.dynamic(out) or "axes" in attrs
            or _const(model, node.input[3]) is None or data not in shapes):
        return []
    scales = np.float32(shapes[out]) / np.float32(shapes[data])
    second_in = np.float32(second.at_second[data])
    if not np.array_equal(np.floor(second_in * scales), np.float32(second.at_second[out])):
        return []
    node.input[2] = _add_const(model, f"{node.name}__free_scales", scales)
    del node.input[3:]
    return []


def _slice(second: SecondShape, node, model, shapes: Shapes) -> list:
    """A Slice that ends at the end of a free axis ends at INT64_MAX."""
    data, out = node.input[0], node.output[0]
    free = second.dynamic(out) & second.dynamic(data)
    consts = [_const(model, n) if n else None for n in node.input[1:5]]
    if not free or any(c is None for c in consts[:2]) or data not in shapes:
        return []
    starts, ends = consts[0], consts[1].astype(np.int64).copy()
    rank = len(shapes[data])
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts))
    ends_at = [k for k, axis in enumerate(int(a) % rank for a in axes)
               if axis in free and steps[k] > 0 and starts[k] >= 0
               and ends[k] >= shapes[data][axis]]
    if ends_at:
        ends[ends_at] = _INT64_MAX
        node.input[2] = _add_const(model, f"{node.name}__free_ends", ends)
    return []


_REWRITES = {"Reshape": _reshape, "Expand": _expand, "Resize": _resize, "Slice": _slice}


def _record_shape(model: onnx.ModelProto, text: str) -> None:
    """The analysis shape in the file's metadata: the size its dynamic dims take by default
    where one static shape is needed (`onnxprune.model.graph.input_specs`: bench, latency)."""
    kept = [p for p in model.metadata_props if p.key != ANALYSIS_SHAPE]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ANALYSIS_SHAPE, value=text)


def _dynamic(dim) -> bool:
    return not (dim.HasField("dim_value") and dim.dim_value > 0)


def _restore_io(model: onnx.ModelProto, source: onnx.ModelProto, clear: bool = False) -> None:
    """Inputs and outputs get the original's dynamic dims (dim_param names kept, an unnamed
    one stays unnamed); a static dim keeps the model's size, the original's unless
    --input-shape changed it. `clear` first drops the outputs' shapes, for shape inference
    to compute them from the dynamic inputs."""
    original = {vi.name: vi.type.tensor_type for vi in [*graph_inputs(source),
                                                         *source.graph.output]}
    if clear:
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
    for vi in [*graph_inputs(model), *model.graph.output]:
        want, have = original.get(vi.name), vi.type.tensor_type
        if want is None or not want.HasField("shape"):
            continue
        if not have.HasField("shape") or len(have.shape.dim) != len(want.shape.dim):
            have.shape.CopyFrom(want.shape)  # what inference left open: as the original
            continue
        for got, dim in zip(have.shape.dim, want.shape.dim):
            if _dynamic(dim) or _dynamic(got):
                got.CopyFrom(dim)
