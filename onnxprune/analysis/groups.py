"""Layer groups: units that touch the same set of tensors (e.g. the 256 channels of a residual
stage). Reports, per-layer minimums, rounding and HRank's per-layer rates work at this level."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.context import static_shapes
from onnxprune.analysis.flow import TensorKey, tensor_key
from onnxprune.analysis.rules.contrib import standard_op_type
from onnxprune.analysis.units import Channels


@dataclass
class LayerGroup:
    index: int
    tensors: tuple[str, ...]
    units: np.ndarray            # component ids
    channels_per_unit: int       # channels each unit holds in its narrowest member tensor
    blocked: bool
    reasons: list[str]           # structural blocking reasons
    rule_errors: list[str] = field(default_factory=list)  # blocks that are bugs in a rule
    heads: bool = False  # each unit is a whole attention head (rules/reshape.py)

    @property
    def channels(self) -> int:
        return len(self.units) * self.channels_per_unit


def _tensor_space_ids(channels: Channels) -> tuple[np.ndarray, list[str]]:
    """Per channel node: index of its tensor space, or -1 for initializer axes."""
    ids = np.full(len(channels.labels), -1, dtype=np.int64)
    names = []
    for key, info in channels.spaces.items():
        if isinstance(key, TensorKey):
            ids[info.offset:info.offset + info.size] = len(names)
            names.append(key.name)
    return ids, names


def unit_tensor_counts(channels: Channels):
    """Sorted unique (component, tensor space) pairs with their channel counts."""
    ids, names = _tensor_space_ids(channels)
    mask = ids >= 0
    width = max(len(names), 1)
    pairs, counts = np.unique(channels.labels[mask] * width + ids[mask], return_counts=True)
    return pairs // width, pairs % width, counts, names


def _head_tensors(channels: Channels) -> set[str]:
    """Outputs of a product of two activations whose channels sit on a batch axis: the
    attention maps and attn @ v, where each unit is a whole head (rules/reshape.py)."""
    shapes = static_shapes(channels.model)
    weights = {i.name for i in channels.model.graph.initializer}
    found = set()
    for node in channels.model.graph.node:
        key = tensor_key(node.output[0]) if node.output else None
        if (standard_op_type(node) != "MatMul" or key not in channels.spaces
                or weights.intersection(node.input[:2])):
            continue
        if channels.spaces[key].axis < len(shapes.get(node.output[0], ())) - 2:
            found.add(node.output[0])
    return found


def layer_groups(channels: Channels) -> list[LayerGroup]:
    comps, tensors, counts, names = unit_tensor_counts(channels)
    heads = _head_tensors(channels)
    starts = np.flatnonzero(np.r_[True, comps[1:] != comps[:-1]])
    ends = np.r_[starts[1:], len(comps)]
    by_signature: dict[tuple, list[int]] = {}
    narrowest: dict[tuple, int] = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        signature = tuple(tensors[s:e].tolist())
        by_signature.setdefault(signature, []).append(int(comps[s]))
        narrowest.setdefault(signature, int(counts[s:e].min()))
    groups = []
    for signature, units in by_signature.items():
        units_arr = np.array(units, dtype=np.int64)
        blocked = bool(channels.blocked[units_arr].all())
        reasons = sorted({r for u in units for r in channels.reasons.get(u, [])})
        errors = sorted({r for u in units for r in channels.rule_error_reasons.get(u, [])})
        members = tuple(names[t] for t in signature)
        groups.append(LayerGroup(len(groups), members, units_arr, narrowest[signature], blocked,
                                 reasons, errors, heads=not heads.isdisjoint(members)))
    return groups
