"""Global greedy planner: remove the unit with the lowest normalised score until the target.

Normalised score (Group Fisher, Liu et al. 2021): s_u = I_u / ΔM_u (memory), I_u / ΔMACs_u
(flops), I_u / Δlatency_u (latency, HALP-style: onnxprune.latency) or I_u (none). Every
target and normaliser is a cost of the CostModel (latency once a latency term is attached).
Rounding: a layer group whose channel count is a multiple of
`round_to` loses whole chunks of units, each chunk holding a multiple of `round_to` channels;
the chunk's score is Σ I / Σ norm over its units. A layer group never drops below one rounding
unit (`round_to` channels), so no tensor ever loses all its channels.

HRank (Lin et al. 2020) prunes fixed per-layer rates; with one global target the faithful
reading is `plan_uniform_rate`: the same share of every layer group (to one chunk), the
smallest that meets the target.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.cost import CostModel, Costs
from onnxprune.analysis.groups import LayerGroup
from onnxprune.analysis.units import Channels
from onnxprune.config import Normalize, Target, TargetKind
from onnxprune.errors import UserError


class TargetUnreachable(UserError):
    """The target needs more than the prunable channels can give."""


@dataclass
class Plan:
    removed: np.ndarray   # bool per component
    kept: np.ndarray      # channels kept per channel space
    before: Costs
    after: Costs


def cost_value(costs: Costs, kind: TargetKind) -> float:
    value = {TargetKind.MEM: costs.mem, TargetKind.FLOPS: costs.macs,
             TargetKind.PARAMS: costs.params, TargetKind.LATENCY: costs.latency}[kind]
    if value is None:
        raise ValueError(f"no {kind.value} cost: attach a latency term (onnxprune.latency)")
    return value


@dataclass
class _Chunks:
    group: LayerGroup
    order: np.ndarray     # prunable units, lowest normalised score first
    size: int             # units per chunk
    count: int            # chunks that may go
    taken: int = 0

    def next(self) -> np.ndarray:
        return self.order[self.taken * self.size:(self.taken + 1) * self.size]


def chunk_shape(group: LayerGroup, round_to: int) -> tuple[int, int]:
    """(units per chunk, units the group keeps at least) under `--round-to`: a group whose
    width is a multiple of it loses whole multiples; every group keeps one rounding unit."""
    per_unit = group.channels_per_unit
    size = 1
    if round_to > 1 and group.channels % round_to == 0:
        size = round_to // math.gcd(round_to, per_unit)
    return size, min(len(group.units), max(1, math.ceil(round_to / per_unit)))


def _chunks(group: LayerGroup, blocked: np.ndarray, unit_score: np.ndarray, round_to: int):
    units = group.units[~blocked[group.units]]
    size, keep = chunk_shape(group, round_to)
    removable = min(len(units), len(group.units) - keep)
    order = units[np.argsort(unit_score[units], kind="stable")]
    return _Chunks(group, order, size, max(removable // size, 0))


class Removal:
    """Removes units one chunk at a time, keeping kept-channel counts per space."""

    def __init__(self, channels: Channels, costs: CostModel):
        n_spaces = len(costs.keys)
        pairs, counts = np.unique(channels.labels * n_spaces + costs.node_space, return_counts=True)
        self.comp, self.space, self.counts = pairs // n_spaces, pairs % n_spaces, counts
        self.starts = np.searchsorted(self.comp, np.arange(channels.n_components + 1))
        self.kept = costs.sizes.copy()
        self.removed = np.zeros(channels.n_components, dtype=bool)

    def remove(self, units: np.ndarray) -> None:
        for u in units.tolist():
            s, e = self.starts[u], self.starts[u + 1]
            self.kept[self.space[s:e]] -= self.counts[s:e]
        self.removed[units] = True


def unit_normaliser(channels: Channels, costs: CostModel, normalize: Normalize) -> np.ndarray:
    if normalize is Normalize.NONE:
        return np.ones(channels.n_components)
    per_node = {Normalize.MEM: costs.per_node_mem, Normalize.FLOPS: costs.per_node_macs,
                Normalize.LATENCY: costs.per_node_latency}[normalize]()
    return np.bincount(channels.labels, weights=per_node, minlength=channels.n_components)


def plan_pruning(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                 scores: np.ndarray, target: Target, normalize: Normalize, round_to: int) -> Plan:
    """Greedy over layer-group chunks, cheapest normalised score first (module docstring)."""
    norm = np.maximum(unit_normaliser(channels, costs, normalize), 1e-12)
    chunks = [_chunks(g, channels.blocked, scores / norm, round_to)
              for g in groups if not g.blocked]
    return _greedy(channels, groups, costs, chunks, target,
                   lambda c: _chunk_score(c, scores, norm))


def plan_uniform_rate(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                      scores: np.ndarray, target: Target, round_to: int) -> Plan:
    """HRank's allocation: every prunable layer group loses the same share of its channels,
    lowest scores first. Chunks are discrete, so the next chunk always comes from the group whose
    share would stay lowest (ties: lowest score), until the target is met: the shares differ by
    at most one chunk, and the plan stops at the first that meets the target."""
    ones = np.ones(len(scores))
    chunks = [_chunks(g, channels.blocked, scores, round_to) for g in groups if not g.blocked]

    def key(c: _Chunks):
        share = (c.taken + 1) * c.size / len(c.group.units)
        return (share, _chunk_score(c, scores, ones))
    return _greedy(channels, groups, costs, chunks, target, key)


def _greedy(channels, groups, costs: CostModel, chunks: list[_Chunks], target: Target,
            key) -> Plan:
    """Take the chunk with the lowest key until the target is met (or nothing is left)."""
    heap = [(key(c), i) for i, c in enumerate(chunks) if c.count > 0]
    heapq.heapify(heap)
    removal = Removal(channels, costs)
    before = costs.costs()
    goal = target.fraction * cost_value(before, target.kind)
    while cost_value(costs.costs(removal.kept), target.kind) > goal:
        if not heap:
            mem = unit_normaliser(channels, costs, Normalize.MEM)  # every chunk is gone: the floor
            raise TargetUnreachable(unreachable_message(
                before, costs.costs(removal.kept), target, groups, mem))
        _, i = heapq.heappop(heap)
        removal.remove(chunks[i].next())
        chunks[i].taken += 1
        if chunks[i].taken < chunks[i].count:
            heapq.heappush(heap, (key(chunks[i]), i))
    return Plan(removal.removed, removal.kept, before, costs.costs(removal.kept))


def _chunk_score(chunk: _Chunks, scores: np.ndarray, norm: np.ndarray) -> float:
    units = chunk.next()
    return float(scores[units].sum() / norm[units].sum())


def unreachable_message(before: Costs, floor: Costs, target: Target, groups,
                        unit_mem: np.ndarray) -> str:
    """One line: the reachable minimum and the blocked groups that hold the most memory."""
    kind = target.kind
    reach = cost_value(floor, kind) / max(cost_value(before, kind), 1e-12)
    blocked = sorted((g for g in groups if g.blocked), key=lambda g: -unit_mem[g.units].sum())[:3]
    why = "; ".join(f"{unit_mem[g.units].sum() / max(before.mem, 1):.0%} of M in {g.channels} ch "
                    f"at {g.tensors[0]} ({(g.reasons or g.rule_errors or ['?'])[0]})"
                    for g in blocked)
    return (f"--target-{kind.value} {target.fraction:g} cannot be reached: the reachable minimum "
            f"is {reach:.3f} of the original with what is prunable"
            + (f"; largest blocked groups: {why}" if why else ""))


def reachable_minimum(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                      round_to: int) -> Costs:
    """Costs once every prunable chunk of every layer group is gone."""
    removal = Removal(channels, costs)
    zero = np.zeros(channels.n_components)
    for group in groups:
        if group.blocked:
            continue
        chunk = _chunks(group, channels.blocked, zero, round_to)
        removal.remove(chunk.order[:chunk.count * chunk.size])
    return costs.costs(removal.kept)
