"""Mask sites: where the channels of each unit enter the layers that consume them.

A unit's sinks are the initializer axes a rule declared with Role.SINK (Conv W[:, c], Gemm and
MatMul weight rows); a masked unit (head dims of q @ kT, `Flow.mask`) also has the product's
two operands as sites. Each sink belongs to a node; the node's other operand — the activation it
multiplies — is the *site*. Removing a unit is, by the exactness oracle's definition, zeroing
its sink columns, which equals multiplying its channels at every site by 0. A mask of ones at
the sites therefore has ∂L/∂m_u = Σ_sites Σ_hw x · ∂L/∂x, the quantity Group Fisher squares.

Every channel of a site tensor carries the unit id of the channel-analysis component it belongs
to (blocked ones included; they are simply never pruned). Flattened features (Flatten → Gemm)
carry one id per position, so the same sum over H·W falls out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.flow import ParamKey, Role, tensor_key
from onnxprune.analysis.units import Channels


@dataclass(frozen=True)
class Site:
    node: int            # index into model.graph.node
    slot: int            # input slot of the activation
    tensor: str
    axis: int            # channel axis of that activation
    units: np.ndarray    # component id of every channel along `axis`


def _consumers(model) -> dict[str, list[tuple[int, int]]]:
    found: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(model.graph.node):
        for slot, name in enumerate(node.input):
            if name:
                found.setdefault(name, []).append((index, slot))
    return found


def _data_slot(node, weight_slot: int, channels: Channels, inits: set[str]) -> int | None:
    """The activation operand next to the weight: the other of the first two inputs."""
    for slot in (0, 1):
        name = node.input[slot] if slot < len(node.input) else ""
        if slot != weight_slot and name and name not in inits \
                and tensor_key(name) in channels.spaces:
            return slot
    return None


def mask_sites(channels: Channels) -> list[Site]:
    """One site per (node, activation slot) that feeds a sink, and per operand of a product of
    two activations that sums a masked unit (q @ kT with head-dim units: removing channel j
    zeroes q's and k's, so its mask multiplies both), in graph order."""
    model = channels.model
    inits = {i.name for i in model.graph.initializer}
    consumers = _consumers(model)
    sites: dict[tuple[int, int], Site] = {}
    for key, info in channels.spaces.items():
        if not isinstance(key, ParamKey) or info.role is not Role.SINK:
            continue
        for index, weight_slot in consumers.get(key.initializer, []):
            node = model.graph.node[index]
            slot = _data_slot(node, weight_slot, channels, inits)
            if slot is None or (index, slot) in sites:
                continue
            sites[(index, slot)] = _site(channels, index, slot)
    for index, slot in channels.mask_sites:
        sites.setdefault((index, slot), _site(channels, index, slot))
    return [sites[k] for k in sorted(sites)]


def _site(channels: Channels, index: int, slot: int) -> Site:
    name = channels.model.graph.node[index].input[slot]
    space = channels.spaces[tensor_key(name)]
    return Site(index, slot, name, space.axis, channels.labels[channels.nodes(tensor_key(name))])


def scored_units(sites: list[Site], blocked: np.ndarray) -> np.ndarray:
    """Sorted ids of the prunable units that appear at some site (the mask columns)."""
    if not sites:
        return np.zeros(0, dtype=np.int64)
    present = np.unique(np.concatenate([s.units for s in sites]))
    return present[~blocked[present]]
