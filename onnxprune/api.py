"""The Python API: analyze, prune, and random plans for testing the oracle."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.cost import CostModel
from onnxprune.analysis.groups import LayerGroup, layer_groups
from onnxprune.analysis.normalize import normalize
from onnxprune.analysis.units import Channels, find_channels
from onnxprune.config import Criterion, PruneConfig
from onnxprune.errors import UserError
from onnxprune.model.external import sources
from onnxprune.model.io import load
from onnxprune.plan.importance import data_free_scores
from onnxprune.plan.planner import Plan, plan_pruning, plan_uniform_rate
from onnxprune.rewrite.surgery import Slice, apply_plan
from onnxprune.verify.oracle import Verdict, verify


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
    calibration: object | None = None   # calibrate.scoring.CalibrationResult for data criteria
    recovery: object | None = None      # calibrate.recover.Recovery after fine-tuning
    bn_samples: int | None = None       # samples that re-estimated BN statistics, if asked

    @property
    def error(self) -> float:
        return self.verdict.error


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        return load(model)
    if any(not p.is_absolute() for p in sources(model)):
        raise UserError("the model's external data is not loaded: pass its path, or "
                        "onnx.load it with its external data")
    return model


def analyze(model: onnx.ModelProto | str | os.PathLike,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> Analysis:
    """Normalise, find channel units and layer groups, build the cost model."""
    start = time.perf_counter()
    normalised = normalize(_as_model(model), input_shapes or {})
    channels = find_channels(normalised)
    groups = layer_groups(channels)
    costs = CostModel(channels)
    return Analysis(normalised, channels, groups, costs, time.perf_counter() - start)


def open_calibration_data(analysis: Analysis, config: PruneConfig, data):
    """`data` (a folder of images, an .npz / .npy path, an iterable of input dicts or
    (dict, labels) pairs, or a calibrate.data.CalibrationData) opened for the analysed model."""
    what = ("fine-tuning" if config.finetune is not None
            else f"--criterion {config.criterion.value}")
    if data is None:
        raise UserError(f"{what} needs data (--data)")
    try:
        from calibrate.data import CalibrationData, input_specs, open_data
    except ImportError as exc:
        raise UserError(f"{what} needs torch ({exc}): pip install 'onnxprune[torch]'") from None
    if isinstance(data, CalibrationData):
        return data
    options = config.calibration.image
    return open_data(data, input_specs(analysis.model),
                     **({"options": options} if options is not None else {}),
                     no_labels=config.calibration.no_labels)


def _data_scores(analysis: Analysis, config: PruneConfig, data):
    """Fisher / HRank / Taylor on `data`, computed in torch by the calibrate package."""
    data = open_calibration_data(analysis, config, data)
    from calibrate.scoring import data_scores

    return data_scores(analysis.channels, config.criterion, data, config.calibration,
                       config.seed)


def _plan(analysis: Analysis, config: PruneConfig, scores: np.ndarray) -> Plan:
    args = (analysis.channels, analysis.groups, analysis.costs, scores, config.target)
    if config.criterion is Criterion.HRANK:  # HRank's per-layer rates (planner docstring)
        return plan_uniform_rate(*args, config.round_to)
    return plan_pruning(*args, config.normalize, config.round_to)


def prune(model: onnx.ModelProto | str | os.PathLike, config: PruneConfig,
          scores: np.ndarray | None = None, data=None) -> PruneResult:
    """Analyse, score, plan, slice and verify; raises UserError / VerificationError.

    Data criteria and fine-tuning (`config.finetune`) read `data`: see open_calibration_data."""
    if config.finetune is not None:
        try:
            from calibrate.recover import prune_with_recovery
        except ImportError as exc:
            raise UserError(f"fine-tuning needs torch ({exc}): pip install 'onnxprune[torch]'"
                            ) from None
        return prune_with_recovery(model, config, data)
    timings = {}
    analysis = analyze(model, config.input_shapes)
    timings["analyze"] = analysis.seconds
    if config.uses_latency:  # per-layer latency table (cached): Costs.latency exists from here
        from onnxprune.latency import attach

        tick = time.perf_counter()
        attach(analysis, config.latency, config.seed)
        timings["latency_table"] = time.perf_counter() - tick
    calibration = None
    if scores is None and config.criterion.needs_data:
        calibration = _data_scores(analysis, config, data)
        scores = calibration.scores
        timings["calibrate"] = calibration.seconds
    elif scores is None:
        scores = data_free_scores(analysis.channels, config.criterion, config.seed)
    tick = time.perf_counter()
    plan = _plan(analysis, config, scores)
    timings["plan"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pruned, slices = apply_plan(analysis.channels, plan.removed)
    timings["surgery"] = time.perf_counter() - tick
    tick = time.perf_counter()
    verdict = verify(analysis.model, pruned, slices, runs=config.verify_runs, seed=config.seed)
    timings["verify"] = time.perf_counter() - tick
    result = PruneResult(pruned, analysis, plan, slices, scores, verdict, timings, calibration)
    if config.calibration.recalibrate_bn:
        _recalibrate_bn(result, config, data)
    return result


def _recalibrate_bn(result: PruneResult, config: PruneConfig, data) -> None:
    """Re-estimate BatchNormalization statistics of the (proven) slice on `data`."""
    data = open_calibration_data(result.analysis, config, data)
    from calibrate.bn import recalibrate_bn

    tick = time.perf_counter()
    result.model, result.bn_samples = recalibrate_bn(result.model, data, config.calibration)
    result.timings["recalibrate_bn"] = time.perf_counter() - tick


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
