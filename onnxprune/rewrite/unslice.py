"""The inverse of slicing for weights: a pruned model's values put back in the original's shapes.

`apply_plan` deletes the removed channels from every initializer (`Slice`: initializer, axis,
removed indices). `unslice(original, pruned, slices)` is the original graph holding the pruned
model's weights, each re-expanded with zeros at the removed indices of every sliced axis. Where
the pruned model gained an input (a bias the refit added, calibrate/refit.py), the node at the
same position gets it, expanded along the output channels its weight lost (the weight's
producer axis). By the exactness
oracle's definition the result computes what the pruned model computes wherever the removed
channels are multiplied by zero, so a criterion that masks them (iterative scoring,
onnxprune.plan.rounds) can score a refit slice on the original's channel analysis.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.flow import Role
from onnxprune.rewrite.surgery import Slice


def expand(value: np.ndarray, cuts: list[Slice], full_shape: tuple[int, ...]) -> np.ndarray:
    """`value` with zeros inserted at each cut's removed indices along its axis."""
    for cut in cuts:
        axis = cut.axis
        shape = list(value.shape)
        shape[axis] = full_shape[axis]
        out = np.zeros(shape, value.dtype)
        kept = np.setdiff1d(np.arange(full_shape[axis]), cut.removed)
        index = [slice(None)] * value.ndim
        index[axis] = kept
        out[tuple(index)] = value
        value = out
    return value


def unslice(original: onnx.ModelProto, pruned: onnx.ModelProto,
            slices: list[Slice]) -> onnx.ModelProto:
    """The original graph with the pruned model's weights (module docstring). Both must have
    the same nodes in the same order (a slice and its refit do)."""
    if [n.op_type for n in original.graph.node] != [n.op_type for n in pruned.graph.node]:
        raise ValueError("unslice needs the pruned model's nodes in the original's order")
    cuts: dict[str, list[Slice]] = {}
    for cut in slices:
        cuts.setdefault(cut.initializer, []).append(cut)
    values = {i.name: i for i in pruned.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(original)
    originals = {i.name for i in out.graph.initializer}
    for init in out.graph.initializer:
        if init.name in values:
            full = tuple(init.dims)
            value = expand(numpy_helper.to_array(values[init.name]), cuts.get(init.name, []), full)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    for mine, theirs in zip(out.graph.node, pruned.graph.node):
        for slot in range(len(mine.input), len(theirs.input)):
            name = theirs.input[slot]
            if name in originals or name not in values:  # "" keeps later slots in place
                mine.input.append(name)
                continue
            out_cuts = [c for c in cuts.get(mine.input[1], [])
                        if c.role in (Role.PRODUCER, Role.MASK)]
            weight = next(i for i in out.graph.initializer if i.name == mine.input[1])
            value = expand(numpy_helper.to_array(values[name]),
                           [Slice(name, 0, c.removed, c.role) for c in out_cuts],
                           (weight.dims[0],))
            out.graph.initializer.append(numpy_helper.from_array(value, name))
            mine.input.append(name)
    return out
