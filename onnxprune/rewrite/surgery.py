"""Apply a plan: slice every declared initializer axis, then let rules fix shape constants.

Slicing is generic: each initializer axis a rule declared is cut to the kept indices of its
channel space. Only shape-carrying values (Reshape shapes, Split sizes, Slice bounds, Resize
sizes, group attributes) need the per-rule fixups, which get an `Edit`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.flow import ParamKey, Role, tensor_key
from onnxprune.analysis.units import Channels, SpaceInfo
from onnxprune.model.external import value
from onnxprune.model.graph import outer_reads
from onnxprune.model.weights import infer_shapes


@dataclass(frozen=True)
class Slice:
    initializer: str
    axis: int
    removed: list[int]
    role: Role

    def as_dict(self) -> dict:
        return {"initializer": self.initializer, "axis": self.axis, "removed": self.removed,
                "role": self.role.value}


class Edit:
    """What a fixup may do to its node in the pruned copy."""

    def __init__(self, model: onnx.ModelProto, channels: Channels, removed_nodes: np.ndarray):
        self.model = model
        self._channels = channels
        self._removed = removed_nodes
        self._inits = {i.name: i for i in model.graph.initializer}
        self._serial = 0

    def kept(self, tensor: str) -> np.ndarray:
        """Original indices of the channels of `tensor` that stay."""
        info = self._channels.spaces[tensor_key(tensor)]
        return np.flatnonzero(~self._removed[info.offset:info.offset + info.size])

    def const(self, name: str) -> np.ndarray:
        return value(self._inits[name])

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        self.remove_attr(node, name)
        node.attribute.append(helper.make_attribute(name, value))

    def remove_attr(self, node: onnx.NodeProto, name: str) -> None:
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep)

    def set_input(self, node: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
        """A fresh initializer for this node only (the old one may be shared)."""
        self._serial += 1
        name = f"{node.name}_pruned_{slot}_{self._serial}"
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(tensor)
        self._inits[name] = tensor
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name


def _slices(name: str, info: SpaceInfo, removed: np.ndarray, channels: Channels) -> list[Slice]:
    """The removed indices of one initializer axis, in its role; producer and per-channel
    indices of masked units (summed with no weight: Flow.mask) are role `mask` instead."""
    masked = np.zeros(len(removed), bool)
    if info.role is not Role.SINK and channels.masked.size:
        masked = channels.masked[channels.labels[info.offset:info.offset + info.size]]
    return [Slice(name, info.axis, np.flatnonzero(removed & which).tolist(), role)
            for which, role in ((~masked, info.role), (masked, Role.MASK))
            if (removed & which).any()]


def _slice_initializers(model, channels: Channels, removed_nodes) -> list[Slice]:
    by_init: dict[str, list[SpaceInfo]] = {}
    for key, info in channels.spaces.items():
        if isinstance(key, ParamKey):
            by_init.setdefault(key.initializer, []).append(info)
    slices = []
    for init in model.graph.initializer:
        infos = by_init.get(init.name)
        if not infos:
            continue
        data, changed = value(init), False
        for info in infos:
            mask = removed_nodes[info.offset:info.offset + info.size]
            if mask.any():
                data, changed = np.take(data, np.flatnonzero(~mask), axis=info.axis), True
                slices += _slices(init.name, info, mask, channels)
        if changed:
            init.CopyFrom(numpy_helper.from_array(data, init.name))
    return slices


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {n for node in model.graph.node for n in [*node.input, *outer_reads(node)]}
    used |= {o.name for o in model.graph.output}
    inits = model.graph.initializer
    for index in reversed(range(len(inits))):
        if inits[index].name not in used:
            del inits[index]


def apply_plan(channels: Channels,
               removed_components: np.ndarray) -> tuple[onnx.ModelProto, list[Slice]]:
    """The narrower model and the record of every initializer slice it took."""
    removed_nodes = removed_components[channels.labels]
    model = onnx.ModelProto()
    model.CopyFrom(channels.model)
    slices = _slice_initializers(model, channels, removed_nodes)
    edit = Edit(model, channels, removed_nodes)
    for index, fixup in channels.fixups:
        fixup(model.graph.node[index], edit)
    _drop_unused_initializers(model)
    return infer_shapes(model), slices
