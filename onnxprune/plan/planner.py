"""Global greedy planner: remove the unit with the lowest normalised score until the target.

Normalised score (Group Fisher, Liu et al. 2021): s_u = I_u / ΔM_u (memory), I_u / ΔMACs_u
(flops), I_u / Δlatency_u (latency, HALP-style: onnxprune.latency) or I_u (none). Every
target and normaliser is a cost of the CostModel (latency once a latency term is attached).
Rounding: a layer group whose channel count is a multiple of
`round_to` loses whole chunks of units, each chunk holding a multiple of `round_to` channels;
the chunk's score is Σ I / Σ norm over its units. A layer group never drops below one rounding
unit (`round_to` channels), so no tensor ever loses all its channels, nor below (1 − F) of its
units with `max_share` F (`--max-prune-share`; Torch-Pruning's `max_pruning_ratio`).

The target is met with the least excess: the chunk that crosses it is cut to the fewest of its
units (lowest score first) that still reach the target, so the plan undershoots the goal by less
than one unit's cost (`Plan.excess`); only that last group may then leave its `round_to`
multiple, which is why `--round-to` is a preference, not a promise.

HRank (Lin et al. 2020) prunes fixed per-layer rates; with one global target the faithful
reading is `plan_uniform_rate`: the same share of every layer group (to one chunk), the
smallest that meets the target.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

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
    excess: float = 0.0   # how far below the target the plan ends, as a share of the original
    rounds: list[dict] = field(default_factory=list)  # iterative scoring (plan/rounds.py)


def cost_value(costs: Costs, kind: TargetKind) -> float:
    value = {TargetKind.MEM: costs.mem, TargetKind.FLOPS: costs.macs,
             TargetKind.PARAMS: costs.params, TargetKind.LATENCY: costs.latency}[kind]
    if value is None:
        raise ValueError(f"no {kind.value} cost: attach a latency term (onnxprune.latency)")
    return value


@dataclass
class _Chunks:
    group: LayerGroup
    order: np.ndarray     # prunable units still there, lowest normalised score first
    bounds: list[int]     # chunk k is order[bounds[k]:bounds[k + 1]]
    taken: int = 0

    @property
    def count(self) -> int:
        return len(self.bounds) - 1

    def next(self) -> np.ndarray:
        return self.order[self.bounds[self.taken]:self.bounds[self.taken + 1]]


def chunk_shape(group: LayerGroup, round_to: int, max_share: float = 1.0) -> tuple[int, int]:
    """(units per chunk, units the group keeps at least) under `--round-to` and
    `--max-prune-share`: a group whose width is a multiple of `round_to` loses whole multiples;
    every group keeps one rounding unit and at least (1 − max_share) of its units. A group of
    attention heads loses whole heads and keeps one: `round_to` is for channel counts."""
    floor = math.ceil(round((1.0 - max_share) * len(group.units), 9))
    if group.heads:
        return 1, min(len(group.units), max(1, floor))
    per_unit = group.channels_per_unit
    size = 1
    if round_to > 1 and group.channels % round_to == 0:
        size = round_to // math.gcd(round_to, per_unit)
    return size, min(len(group.units), max(1, math.ceil(round_to / per_unit), floor))


def _chunks(group: LayerGroup, blocked: np.ndarray, unit_score: np.ndarray, round_to: int,
            max_share: float, gone: np.ndarray | None = None):
    """The group's chunks, lowest score first. Units already `gone` (an earlier round) count
    against its floor; if they are not a whole number of chunks, the first chunk is the
    remainder, so the group is back on its `round_to` multiple after it."""
    size, keep = chunk_shape(group, round_to, max_share)
    out = blocked[group.units] if gone is None else blocked[group.units] | gone[group.units]
    units = group.units[~out]
    n_gone = 0 if gone is None else int(gone[group.units].sum())
    removable = min(len(units), len(group.units) - keep - n_gone)
    lead = -n_gone % size
    order = units[np.argsort(unit_score[units], kind="stable")]
    return _Chunks(group, order, [0] + list(range(lead or size, removable + 1, size)))


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
        self._subtract(self.kept, units)
        self.removed[units] = True

    def kept_without(self, units: np.ndarray) -> np.ndarray:
        """The kept-channel counts if `units` went too (nothing is removed)."""
        kept = self.kept.copy()
        self._subtract(kept, units)
        return kept

    def _subtract(self, kept: np.ndarray, units: np.ndarray) -> None:
        for u in units.tolist():
            s, e = self.starts[u], self.starts[u + 1]
            kept[self.space[s:e]] -= self.counts[s:e]


def unit_normaliser(channels: Channels, costs: CostModel, normalize: Normalize) -> np.ndarray:
    if normalize is Normalize.NONE:
        return np.ones(channels.n_components)
    per_node = {Normalize.MEM: costs.per_node_mem, Normalize.FLOPS: costs.per_node_macs,
                Normalize.LATENCY: costs.per_node_latency}[normalize]()
    return np.bincount(channels.labels, weights=per_node, minlength=channels.n_components)


def plan_pruning(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                 scores: np.ndarray, target: Target, normalize: Normalize, round_to: int,
                 max_share: float = 1.0, gone: np.ndarray | None = None) -> Plan:
    """Greedy over layer-group chunks, cheapest normalised score first (module docstring).
    `gone` units (removed by an earlier round of iterative scoring) stay removed."""
    norm = np.maximum(unit_normaliser(channels, costs, normalize), 1e-12)
    chunks = [_chunks(g, channels.blocked, scores / norm, round_to, max_share, gone)
              for g in groups if not g.blocked]
    return _greedy(channels, groups, costs, chunks, target,
                   lambda c: _chunk_score(c, scores, norm), gone)


def plan_uniform_rate(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                      scores: np.ndarray, target: Target, round_to: int,
                      max_share: float = 1.0) -> Plan:
    """HRank's allocation: every prunable layer group loses the same share of its channels,
    lowest scores first. Chunks are discrete, so the next chunk always comes from the group whose
    share would stay lowest (ties: lowest score), until the target is met: the shares differ by
    at most one chunk, and the plan stops at the first that meets the target."""
    ones = np.ones(len(scores))
    chunks = [_chunks(g, channels.blocked, scores, round_to, max_share)
              for g in groups if not g.blocked]

    def key(c: _Chunks):
        share = c.bounds[c.taken + 1] / len(c.group.units)
        return (share, _chunk_score(c, scores, ones))
    return _greedy(channels, groups, costs, chunks, target, key)


def _greedy(channels, groups, costs: CostModel, chunks: list[_Chunks], target: Target,
            key, gone: np.ndarray | None = None) -> Plan:
    """Take the chunk with the lowest key until the target is met (or nothing is left)."""
    heap = [(key(c), i) for i, c in enumerate(chunks) if c.count > 0]
    heapq.heapify(heap)
    removal = Removal(channels, costs)
    if gone is not None:
        removal.remove(np.flatnonzero(gone))
    before = costs.costs()
    goal = target.fraction * cost_value(before, target.kind)
    while cost_value(costs.costs(removal.kept), target.kind) > goal:
        if not heap:
            mem = unit_normaliser(channels, costs, Normalize.MEM)  # every chunk is gone: the floor
            raise TargetUnreachable(unreachable_message(
                before, costs.costs(removal.kept), target, groups, mem))
        _, i = heapq.heappop(heap)
        removal.remove(fewest_reaching(chunks[i].next(), removal,
                                       lambda kept: cost_value(costs.costs(kept), target.kind),
                                       goal))
        chunks[i].taken += 1
        if chunks[i].taken < chunks[i].count:
            heapq.heappush(heap, (key(chunks[i]), i))
    after = costs.costs(removal.kept)
    whole = max(cost_value(before, target.kind), 1e-12)
    excess = max(0.0, target.fraction - cost_value(after, target.kind) / whole)
    return Plan(removal.removed, removal.kept, before, after, excess)


def fewest_reaching(units: np.ndarray, removal: Removal, cost, goal: float) -> np.ndarray:
    """`units` (a chunk, lowest score first), or its shortest prefix whose removal brings
    `cost(kept)` to `goal`: the chunk that crosses the target overshoots it by less than one
    unit (module docstring)."""
    if len(units) <= 1 or cost(removal.kept_without(units)) > goal:
        return units  # not the crossing chunk: one cost evaluation, not one per prefix
    for k in range(1, len(units)):
        if cost(removal.kept_without(units[:k])) <= goal:
            return units[:k]
    return units


def _chunk_score(chunk: _Chunks, scores: np.ndarray, norm: np.ndarray) -> float:
    units = chunk.next()
    return float(scores[units].sum() / norm[units].sum())


def unreachable_message(before: Costs, floor: Costs, target: Target, groups,
                        unit_mem: np.ndarray) -> str:
    """One line: the reachable minimum, how much of M the blocked groups hold (the rest of the
    minimum is what the floors keep), and the blocked groups that hold the most of it."""
    kind = target.kind
    reach = cost_value(floor, kind) / max(cost_value(before, kind), 1e-12)
    total = max(before.mem, 1)
    held = [(unit_mem[g.units].sum() / total, g) for g in groups if g.blocked]
    blocked = sum(share for share, _ in held)
    held = sorted((h for h in held if h[0] >= 0.005), key=lambda h: -h[0])
    why = "; ".join(f"{share:.0%} of M in {g.channels} ch at {g.tensors[0]} "
                    f"({(g.reasons or g.rule_errors or ['?'])[0]})" for share, g in held[:3])
    return (f"--target-{kind.value} {target.fraction:g} cannot be reached: the reachable minimum "
            f"is {reach:.3f} of the original with what is prunable (blocked groups hold "
            f"{blocked:.0%} of M; the rest is what each prunable group keeps under --round-to "
            f"and --max-prune-share, which a smaller --round-to or a larger share lowers)"
            + (f"; largest blocked groups: {why}" if why else ""))


def reachable_minimum(channels: Channels, groups: list[LayerGroup], costs: CostModel,
                      round_to: int, max_share: float = 1.0) -> Costs:
    """Costs once every prunable chunk of every layer group is gone."""
    removal = Removal(channels, costs)
    zero = np.zeros(channels.n_components)
    for group in groups:
        if group.blocked:
            continue
        chunk = _chunks(group, channels.blocked, zero, round_to, max_share)
        removal.remove(chunk.order[:chunk.bounds[-1]])
    return costs.costs(removal.kept)
