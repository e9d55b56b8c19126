"""The Python API: analyze, prune, and random plans for testing the oracle.

`prune` is the one orchestrator of the pipeline (docs/design-notes.md): it analyses the model
once, opens the data once, and drives every stage: scoring (`plan.importance`, or the torch
`calibrate.scoring`), planning, surgery, the exactness oracle, and with fine-tuning the phases
of `calibrate.recover`, which receive the analysis and data and never call back into this
module. `calibrate` (torch) is imported lazily, only when data or fine-tuning is asked for.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.analysis.cost import CostModel
from onnxprune.analysis.groups import LayerGroup, layer_groups
from onnxprune.analysis.keep import keep_requested
from onnxprune.analysis.normalize import normalize
from onnxprune.analysis.units import Channels, find_channels
from onnxprune.config import (
    DEFAULT_ROUNDS,
    AttentionUnits,
    Criterion,
    PruneConfig,
    Schedule,
    Target,
)
from onnxprune.errors import UserError, first_line
from onnxprune.model.external import sources
from onnxprune.model.graph import input_specs, recorded_shapes, static_input_shapes
from onnxprune.model.io import load
from onnxprune.plan.importance import data_free_scores
from onnxprune.plan.planner import Plan, plan_pruning, plan_uniform_rate
from onnxprune.plan.rounds import plan_in_rounds
from onnxprune.rewrite.share import reshare
from onnxprune.rewrite.signature import SecondShape, ShapeCheck, Signature, signature
from onnxprune.rewrite.surgery import Slice, apply_plan
from onnxprune.rewrite.unslice import unslice
from onnxprune.verify.oracle import Verdict, verify

if TYPE_CHECKING:  # torch-side result types; calibrate is imported only when used
    from calibrate.recover import Recovery
    from calibrate.scoring import CalibrationResult


@dataclass
class Analysis:
    model: onnx.ModelProto          # normalised: static shapes, folded, no Identity
    channels: Channels
    groups: list[LayerGroup]
    costs: CostModel
    seconds: float
    keep: tuple[str, ...] = ()      # the names kept by request (--keep) ...
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ... their units
    signature: Signature | None = None  # the original's dynamic input dims (rewrite.signature)
    attention: AttentionUnits = AttentionUnits.HEADS  # what an attention unit is


@dataclass
class PruneResult:
    model: onnx.ModelProto
    analysis: Analysis
    plan: Plan
    slices: list[Slice]
    scores: np.ndarray
    verdict: Verdict
    timings: dict[str, float] = field(default_factory=dict)
    calibration: CalibrationResult | None = None   # data criteria
    recovery: Recovery | None = None               # after fine-tuning
    bn_samples: int | None = None       # samples that re-estimated BN statistics, if asked
    shapes: list[ShapeCheck] = field(default_factory=list)  # the oracle at each input shape

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
            input_shapes: dict[str, tuple[int, ...]] | None = None,
            keep: Sequence[str] = (),
            attention: AttentionUnits = AttentionUnits.HEADS) -> Analysis:
    """Normalise, find channel units and layer groups, build the cost model.

    `keep` names tensors or nodes whose channels must stay (`onnxprune.analysis.keep`);
    `attention` says whether a unit of an attention block is a head or a head dim."""
    start = time.perf_counter()
    source = _as_model(model)  # a pruned file's dynamic dims default to its analysis shape
    normalised = normalize(source, {**recorded_shapes(source), **(input_shapes or {})})
    channels = find_channels(normalised, head_dims=attention is AttentionUnits.DIMS)
    kept = keep_requested(channels, keep)
    groups = layer_groups(channels)
    costs = CostModel(channels)
    return Analysis(normalised, channels, groups, costs, time.perf_counter() - start,
                    tuple(keep), kept, signature(source, normalised), attention)


def open_calibration_data(analysis: Analysis, config: PruneConfig, data):
    """`data` (a folder of images, an .npz / .npy path, an iterable of input dicts or
    (dict, labels) pairs, or a calibrate.data.CalibrationData) opened for the analysed model."""
    what = ("fine-tuning" if config.finetune is not None
            else f"--criterion {config.criterion.value}" if config.criterion.needs_data
            else "--recalibrate-bn" if config.calibration.recalibrate_bn else "--reconstruct")
    if data is None:
        raise UserError(f"{what} needs data (--data)")
    try:  # reading the data needs numpy only, but every stage that uses it runs in torch
        import torch  # noqa: F401

        from calibrate.data import CalibrationData, open_data
    except ImportError as exc:
        raise UserError(f"{what} needs torch ({exc}): pip install 'onnxprune[torch]'") from None
    if isinstance(data, CalibrationData):
        return data
    return open_data(data, input_specs(analysis.model), config.calibration.image,
                     no_labels=config.calibration.no_labels)


def _open_data(analysis: Analysis, config: PruneConfig, scores: np.ndarray | None, data,
               recovers: bool):
    """(`data` opened once for every stage that reads it, None if none does; with recovery
    (refit or fine-tuning) its training share, so that no stage sees the held-out samples),
    (the held-out share, `config.holdout` samples but at most half, or None without
    recovery)."""
    if not (recovers or config.calibration.recalibrate_bn
            or (scores is None and config.criterion.needs_data)):
        return None, None
    data = open_calibration_data(analysis, config, data)
    if not recovers:
        return data, None
    train, held = data.split(min(config.holdout, data.num_samples // 2), seed=config.seed)
    if train.num_samples == 0:
        raise UserError(f"{data.num_samples} samples: recovery needs at least one to train on")
    return train, held


def _plan_on_data(analysis: Analysis, config: PruneConfig, data
                  ) -> tuple[Plan, np.ndarray, CalibrationResult]:
    """Fisher / HRank / Taylor on `data` (opened), computed in torch by the calibrate package,
    in `config.calibration.rounds` rounds (plan/rounds.py; HRank's fixed per-layer rates take
    one). By default 4 with the refit and 1 without: re-scoring the masked original without
    the refit measured 4.7 points worse than one round (docs/choosing.md)."""
    from calibrate.scoring import data_scores

    passes: list[CalibrationResult] = []
    refits = config.reconstructs(True)

    def score(gone: np.ndarray | None) -> np.ndarray:
        channels = analysis.channels
        if gone is not None and refits:
            channels = _refit_channels(analysis, config, data, gone)
        passes.append(data_scores(channels, config.criterion, data, config.calibration,
                                  config.seed, gone))
        return passes[-1].scores

    rounds = config.calibration.rounds or (DEFAULT_ROUNDS if refits else 1)
    if config.criterion is Criterion.HRANK:
        rounds = 1
    plan, scores = plan_in_rounds(config.target, rounds, score,
                                  lambda s, target, gone: _plan(analysis, config, s, target, gone))
    calibration = replace(passes[-1], seconds=sum(p.seconds for p in passes),
                          rounds=len(passes))
    return plan, scores, calibration


def _refit_channels(analysis: Analysis, config: PruneConfig, data, gone: np.ndarray) -> Channels:
    """The channel analysis holding the refit slice's weights (rewrite/unslice.py): what the
    next round scores, so that it judges the network the refit will give, not a broken one."""
    from calibrate.refit import refit

    sliced, slices = apply_plan(analysis.channels, gone)
    fitted, _ = refit(analysis.model, sliced, slices, data, config.calibration, config.seed)
    return replace(analysis.channels, model=unslice(analysis.model, fitted, slices))


def _plan(analysis: Analysis, config: PruneConfig, scores: np.ndarray,
          target: Target | None = None, gone: np.ndarray | None = None) -> Plan:
    args = (analysis.channels, analysis.groups, analysis.costs, scores, target or config.target)
    if config.criterion is Criterion.HRANK:  # HRank's per-layer rates (planner docstring)
        return plan_uniform_rate(*args, config.round_to, config.max_prune_share)
    return plan_pruning(*args, config.normalize, config.round_to, config.max_prune_share, gone)


def prune(model: onnx.ModelProto | str | os.PathLike | Analysis, config: PruneConfig,
          scores: np.ndarray | None = None, data=None) -> PruneResult:
    """Analyse, score, plan, slice and verify; raises UserError / VerificationError.

    `model` may be an Analysis from `analyze` (made with the same `keep`): several prunes of
    one model (a sweep, a latency target's re-plans) then analyse it once. It is not changed,
    except that a latency target attaches its per-layer table to its costs and a dynamic
    model's second shape is cached on its signature.

    Data criteria, `recalibrate_bn`, the refit and fine-tuning read `data`: see
    open_calibration_data. With recovery (`config.reconstructs`, on by default with data under
    the one-shot schedule, or `config.finetune`), `holdout` samples are set aside to judge it
    and the rest is used: the GFP schedule prunes while training
    (`calibrate.recover.prune_gfp`), one-shot prunes as without recovery; then
    `calibrate.recover.recover` refits and / or fine-tunes the slice and keeps the best of
    slice, refit and fine-tuned model on the held-out share (`config.min_agreement` stops with
    a UserError below that agreement). BN statistics are re-estimated on the slice, before any
    recovery. The model
    returned keeps the original's dynamic dimensions unless `config.static_shape`
    (`_prove_signature`)."""
    recovers = config.finetune is not None or config.reconstructs(data is not None)
    if config.min_agreement is not None and not recovers:
        raise UserError("min_agreement judges a recovered model on held-out data: give data "
                        "(and do not turn the refit off without fine-tuning)")
    recover = _recover_module() if recovers else None
    analysis = _analysis(model, config)
    start = time.perf_counter()
    timings = {"analyze": analysis.seconds if analysis is not model else 0.0}
    second = None
    if analysis.signature is not None and not config.static_shape:  # fails before any work
        second = analysis.signature.second()
        timings["signature"] = time.perf_counter() - start
    data, held = _open_data(analysis, config, scores, data, recovers)
    gfp = None
    if config.finetune is not None and config.finetune.schedule is Schedule.GFP:
        gfp = recover.prune_gfp(analysis, config, data, timings)
        result = PruneResult(gfp.model, analysis, gfp.plan, gfp.slices,
                             np.zeros(len(gfp.plan.removed)), gfp.verdict, timings)
    else:
        result = _prune_oneshot(analysis, config, scores, data, timings)
    sliced, written = _prove_signature(analysis, config, result, second, gfp is not None)
    if config.calibration.recalibrate_bn:
        _recalibrate_bn(result, config, data)
    if recover is not None:
        result.model, result.recovery = recover.recover(
            analysis.model, result.model, result.slices, data, held, config, timings, gfp)
        _require_agreement(result.recovery.fidelity, config.min_agreement)
    if second is not None:  # the original's signature, dynamic dims and all
        result.model = written if result.model is sliced else second.apply(result.model)
    result.model = reshare(result.model)  # proven: identical initializers stored once
    return result


def _prove_signature(analysis: Analysis, config: PruneConfig, result: PruneResult,
                     second: SecondShape | None, trained: bool):
    """The oracle at each input shape of the written file: with free dims (`second`), the
    slice with the original's weights, rewritten to the original's signature, at the analysis
    shape and at the second one (onnxprune.rewrite.signature), each against the masked original
    normalised at that shape. Returns (that slice, its rewritten form), or Nones."""
    if second is None:
        result.shapes = [ShapeCheck(static_input_shapes(analysis.model), result.verdict)]
        return None, None
    tick = time.perf_counter()
    sliced = apply_plan(analysis.channels, result.plan.removed)[0] if trained else result.model
    written = second.apply(sliced)
    for shapes, original in ((static_input_shapes(analysis.model), analysis.model),
                             (second.shapes, second.model)):
        try:
            verdict = verify(original, written, result.slices, runs=config.verify_runs,
                             seed=config.seed)
        except Exception as exc:  # VerificationError, or onnxruntime cannot run it there
            raise second.failure(f"the oracle fails: {first_line(exc)}", shapes) from None
        result.shapes.append(ShapeCheck(shapes, verdict))
    result.timings["signature"] += time.perf_counter() - tick
    return sliced, written


def _analysis(model: onnx.ModelProto | str | os.PathLike | Analysis,
              config: PruneConfig) -> Analysis:
    if not isinstance(model, Analysis):
        return analyze(model, config.input_shapes, config.keep, config.attention)
    if tuple(config.keep) != model.keep:
        raise UserError(f"the analysis keeps {list(model.keep)} but the config asks to keep "
                        f"{list(config.keep)}: analyze with the same keep")
    if config.attention is not model.attention:
        raise UserError(f"the analysis has attention units of {model.attention.value} but the "
                        f"config asks for {config.attention.value}: analyze with the same ones")
    return model


def _recover_module():
    """calibrate.recover (torch), or the UserError that says how to install it."""
    try:
        from calibrate import recover
    except ImportError as exc:
        raise UserError(f"recovery (refit, fine-tuning) needs torch ({exc}): "
                        "pip install 'onnxprune[torch]'") from None
    return recover


def _require_agreement(fid: dict | None, minimum: float | None) -> None:
    from calibrate.guard import require_agreement

    require_agreement(fid, minimum)


def _prune_oneshot(analysis: Analysis, config: PruneConfig, scores: np.ndarray | None, data,
                   timings: dict[str, float]) -> PruneResult:
    """Score (on the opened `data` for a data criterion), plan, slice and verify."""
    if config.uses_latency:  # per-layer latency table (cached): Costs.latency exists from here
        from onnxprune.latency import attach

        tick = time.perf_counter()
        attach(analysis, config.latency, config.seed)
        timings["latency_table"] = time.perf_counter() - tick
    calibration = None
    tick = time.perf_counter()
    if scores is None and config.criterion.needs_data:
        plan, scores, calibration = _plan_on_data(analysis, config, data)
        timings["calibrate"] = calibration.seconds
        timings["plan"] = time.perf_counter() - tick - calibration.seconds  # with the refits
    else:
        if scores is None:
            scores = data_free_scores(analysis.channels, config.criterion, config.seed,
                                      analysis.groups)
        plan = _plan(analysis, config, scores)
        timings["plan"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pruned, slices = apply_plan(analysis.channels, plan.removed)
    timings["surgery"] = time.perf_counter() - tick
    tick = time.perf_counter()
    verdict = verify(analysis.model, pruned, slices, runs=config.verify_runs, seed=config.seed)
    timings["verify"] = time.perf_counter() - tick
    return PruneResult(pruned, analysis, plan, slices, scores, verdict, timings, calibration)


def _recalibrate_bn(result: PruneResult, config: PruneConfig, data) -> None:
    """Re-estimate BatchNormalization statistics of the (proven) slice on `data` (opened)."""
    from calibrate.bn import recalibrate_bn

    tick = time.perf_counter()
    result.model, result.bn_samples = recalibrate_bn(result.model, data, config.calibration,
                                                     config.seed)
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


def check_random_plans(model: onnx.ModelProto, seed: int, n_plans: int = 2,
                       attention: AttentionUnits | None = None) -> int:
    """Apply `n_plans` random plans and verify each with the oracle; returns how many ran.
    Attention units are heads for an even seed and head dims for an odd one, unless given."""
    if attention is None:
        attention = AttentionUnits.DIMS if seed % 2 else AttentionUnits.HEADS
    analysis = analyze(model, attention=attention)
    if not any(not g.blocked for g in analysis.groups):
        return 0
    rng = np.random.default_rng(seed)
    for _ in range(n_plans):
        removed = random_plan(analysis, rng)
        pruned, slices = apply_plan(analysis.channels, removed)
        verify(analysis.model, pruned, slices, runs=1, seed=seed)
    return n_plans
