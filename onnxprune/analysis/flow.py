"""What a rule answers about one node: how channels flow through it, as plain data.

A *channel space* is either a tensor's channel axis (`tensor_key(name)`, a `TensorKey`) or one
axis of an initializer (`param_key(name, axis)`, a `ParamKey`). A rule declares the spaces of
its outputs, links channel indices that are the same channel (`link`), and the initializer axes
whose index i belongs to a channel (`param`, with a role: PRODUCER slices an output axis, SINK
an input axis, PASSTHROUGH a per-channel parameter). Grouping, costs and surgery read only these
declarations. A rule that cannot describe its node returns `Block(reason)`; the units it
touches become unprunable. A rule that raises has a bug (see units.py: a *rule error*).
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx


@dataclass(frozen=True, slots=True)
class TensorKey:
    """The channel axis of an activation tensor."""
    name: str


@dataclass(frozen=True, slots=True)
class ParamKey:
    """One axis of an initializer whose index i belongs to a channel."""
    initializer: str
    axis: int


Key = TensorKey | ParamKey


class FixupEdit(Protocol):
    """What a fixup may do to its node in the pruned copy (rewrite/surgery.py's `Edit`)."""

    def kept(self, tensor: str) -> np.ndarray: ...
    def const(self, name: str) -> np.ndarray: ...
    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None: ...
    def remove_attr(self, node: onnx.NodeProto, name: str) -> None: ...
    def set_input(self, node: onnx.NodeProto, slot: int, value: np.ndarray) -> None: ...


# fixup(node, edit) after slicing: attributes, shape inputs of the node's pruned copy
Fixup = Callable[[onnx.NodeProto, FixupEdit], None]


def tensor_key(name: str) -> TensorKey:
    return TensorKey(name)


def param_key(name: str, axis: int) -> ParamKey:
    return ParamKey(name, int(axis))


class Role(enum.Enum):
    PRODUCER = "producer"
    SINK = "sink"
    PASSTHROUGH = "passthrough"
    # a slice of a removed unit whose channels a product of two activations sums (q @ kT's head
    # dims): the oracle's reference zeroes it, as it zeroes sinks (DESIGN.md §3). Only surgery's
    # slices carry it: rules declare producers and passthroughs, the analysis marks the unit.
    MASK = "mask"


@dataclass(frozen=True)
class Block:
    """The node mixes channels in a way no rule describes: its channels stay."""
    reason: str


@dataclass(frozen=True)
class ParamDecl:
    initializer: str
    axis: int
    role: Role


@dataclass
class Flow:
    outputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (axis, size)
    links: list[tuple[Key, np.ndarray, Key, np.ndarray]] = field(default_factory=list)
    params: list[ParamDecl] = field(default_factory=list)
    consts: set[str] = field(default_factory=set)  # initializer inputs this rule understands
    blocks: list[tuple[Key, str, np.ndarray | None]] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)  # inputs summed with no weight (`mask`)
    fixup: Fixup | None = None

    def output(self, tensor: str, axis: int, size: int) -> Flow:
        self.outputs[tensor] = (axis, int(size))
        return self

    def link(self, a: Key, a_idx, b: Key, b_idx) -> Flow:
        """Channel a_idx[i] of space a is channel b_idx[i] of space b."""
        self.links.append((a, np.asarray(a_idx, np.int64), b, np.asarray(b_idx, np.int64)))
        return self

    def same(self, a: Key, b: Key, size: int) -> Flow:
        idx = np.arange(size)
        return self.link(a, idx, b, idx)

    def param(self, initializer: str, axis: int, role: Role, to: Key, idx=None, size=None) -> Flow:
        """Index i of `initializer` along `axis` belongs to channel idx[i] of space `to`."""
        self.params.append(ParamDecl(initializer, axis, role))
        self.consts.add(initializer)
        if idx is None:
            idx = np.arange(size)
        return self.link(param_key(initializer, axis), np.arange(len(idx)), to, idx)

    def mask(self, tensor: str) -> Flow:
        """The node sums input `tensor`'s channels with no weight to slice (q @ kT over the
        head dim): removing one is zeroing it, which the reference does by zeroing its unit's
        producer and per-channel parameters (role `mask`), so the unit is prunable only where
        every op between those and here maps zero to zero (units.py checks)."""
        self.masks.append(tensor)
        return self

    def block(self, key: Key, reason: str, idx=None) -> Flow:
        """Channels `idx` of space `key` (all of them by default) cannot be removed."""
        self.blocks.append((key, reason, None if idx is None else np.asarray(idx, np.int64)))
        return self
