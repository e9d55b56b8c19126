"""The Python API: analyze, prune, and random plans for testing the oracle."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from .config import PruneConfig
from .cost import CostModel
from .graph import load
from .groups import LayerGroup, layer_groups
from .importance import data_free_scores
from .normalize import normalize
from .planner import Plan, plan_pruning
from .surgery import Slice, apply_plan
from .units import Channels, find_channels
from .verify import Verdict, verify


@dataclass
class Analysis:
    model: onnx.ModelProto          # normalised: static shapes, folded, no Identity
    channels: Channels
    groups: list[LayerGroup]
    costs: CostModel
    seconds: float


@dataclass
class PruneResult:
    model: onnx.ModelProto
    analysis: Analysis
    plan: Plan
    slices: list[Slice]
    scores: np.ndarray
    verdict: Verdict
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def error(self) -> float:
        return self.verdict.error


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load(model)


def analyze(model: onnx.ModelProto | str | os.PathLike,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> Analysis:
    """Normalise, find channel units and layer groups, build the cost model."""
    start = time.perf_counter()
    normalised = normalize(_as_model(model), input_shapes or {})
    channels = find_channels(normalised)
    groups = layer_groups(channels)
    costs = CostModel(channels)
    return Analysis(normalised, channels, groups, costs, time.perf_counter() - start)


def prune(model: onnx.ModelProto | str | os.PathLike, config: PruneConfig,
          scores: np.ndarray | None = None) -> PruneResult:
    """Analyse, score, plan, slice and verify; raises UserError / VerificationError."""
    timings = {}
    analysis = analyze(model, config.input_shapes)
    timings["analyze"] = analysis.seconds
    tick = time.perf_counter()
    if scores is None:
        scores = data_free_scores(analysis.channels, config.criterion, config.seed)
    plan = plan_pruning(analysis.channels, analysis.groups, analysis.costs, scores,
                        config.target, config.normalize, config.round_to)
    timings["plan"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pruned, slices = apply_plan(analysis.channels, plan.removed)
    timings["surgery"] = time.perf_counter() - tick
    tick = time.perf_counter()
    verdict = verify(analysis.model, pruned, slices, runs=config.verify_runs, seed=config.seed)
    timings["verify"] = time.perf_counter() - tick
    return PruneResult(pruned, analysis, plan, slices, scores, verdict, timings)


def random_plan(analysis: Analysis, rng: np.random.Generator) -> np.ndarray:
    """Remove a random share of each layer group's prunable units, keeping at least one unit."""
    removed = np.zeros(analysis.channels.n_components, dtype=bool)
    for group in analysis.groups:
        units = group.units[~analysis.channels.blocked[group.units]]
        room = min(len(units), len(group.units) - 1)
        if room <= 0:
            continue
        take = rng.integers(0, room + 1)
        removed[rng.choice(units, size=take, replace=False)] = True
    return removed


def check_random_plans(model: onnx.ModelProto, seed: int, n_plans: int = 2) -> int:
    """Apply `n_plans` random plans and verify each with the oracle; returns how many ran."""
    analysis = analyze(model)
    if not any(not g.blocked for g in analysis.groups):
        return 0
    rng = np.random.default_rng(seed)
    for _ in range(n_plans):
        removed = random_plan(analysis, rng)
        pruned, slices = apply_plan(analysis.channels, removed)
        verify(analysis.model, pruned, slices, runs=1, seed=seed)
    return n_plans
