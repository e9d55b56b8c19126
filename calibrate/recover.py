"""Prune and recover: the one-shot and GFP schedules end to end, with fidelity on held-out data.

- oneshot: score on the training share of the data (any criterion), plan, slice, prove exact
  (the oracle), then fine-tune the sliced model for the whole budget.
- gfp: fine-tune the full model with masks, removing units by accumulated Fisher as it goes
  (gfp.py); slice once the target is met and prove the slice exact *with the trained weights*;
  fine-tune the sliced model for the rest of the budget (a fresh cosine schedule).
Either way the fine-tuned weights are written into the pruned ONNX, which must pass
onnx.checker and run in onnxruntime; the report then states fidelity (`onnxprune/fidelity.py`)
on `holdout` samples the training never saw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import onnx

from calibrate.data import CalibrationData
from calibrate.distributed import World, world
from calibrate.executor import OnnxModule
from calibrate.finetune import FinetuneLog, finetune, total_steps
from calibrate.gfp import GfpSchedule, with_weights
from onnxprune.config import Criterion, Normalize, PruneConfig, Schedule
from onnxprune.errors import UserError
from onnxprune.model.batch import make_batch_free
from onnxprune.model.outputs import output_kinds
from onnxprune.plan.planner import (
    Plan,
    Removal,
    TargetUnreachable,
    cost_value,
    reachable_minimum,
    unit_normaliser,
    unreachable_message,
)
from onnxprune.rewrite.surgery import apply_plan
from onnxprune.verify.fidelity import fidelity
from onnxprune.verify.oracle import check_model, verify


@dataclass
class Recovery:
    schedule: Schedule
    finetune: FinetuneLog
    fidelity: dict | None
    gfp: dict | None = None

    def as_dict(self) -> dict:
        return {"schedule": self.schedule.value, "finetune": self.finetune.as_dict(),
                "fidelity": self.fidelity, "gfp": self.gfp}


def _module(model: onnx.ModelProto, w: World, what: str) -> OnnxModule:
    free, why = make_batch_free(model)
    if why is not None:
        raise UserError(f"fine-tuning needs the {what} model at batch > 1, but {why}")
    return OnnxModule(free).to(w.device)


def _teacher(original: onnx.ModelProto, data: CalibrationData, w: World):
    if data.has_labels:
        return None
    teacher = _module(original, w, "original").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def finetune_model(original, pruned, data, config: PruneConfig, w: World, steps: int,
                   progress: bool) -> tuple[onnx.ModelProto, FinetuneLog]:
    """Fine-tune `pruned` (labels, or distillation from `original`); weights written back."""
    student = _module(pruned, w, "pruned")
    log = finetune(student, _teacher(original, data, w), data, config.finetune,
                   output_kinds(pruned), w, steps, config.seed, progress)
    tuned = student.write_back(pruned)
    check_model(tuned)
    return tuned, log


def _gfp(analysis, config, data, w, steps, progress):
    """Returns (tuned normalised model, removed components, log, gfp record)."""
    reachable_check(analysis, config)
    module = _module(analysis.model, w, "original")
    schedule = GfpSchedule(analysis, config, module, w, prune_steps=max(1, steps // 2))
    log = finetune(module, _teacher(analysis.model, data, w), data, config.finetune,
                   output_kinds(analysis.model), w, steps, config.seed, progress,
                   step_hook=schedule.after_step, before_step=schedule.before_step)
    extra = schedule.finish()
    tuned = module.write_back(analysis.model)
    record = {"removals": len(schedule.state.log), "units_removed":
              int((~schedule.state.alive).sum()), "removed_without_training": extra,
              "prune_every": config.finetune.prune_every,
              "prune_count": config.finetune.prune_count, "steps": log.steps}
    return tuned, schedule.removed_components(analysis.channels.n_components), log, record


def reachable_check(analysis, config: PruneConfig) -> None:
    """Fail before any training when the target is below what can be removed."""
    floor = reachable_minimum(analysis.channels, analysis.groups, analysis.costs, config.round_to)
    before = analysis.costs.costs()
    kind = config.target.kind
    if cost_value(floor, kind) > config.target.fraction * cost_value(before, kind):
        mem = unit_normaliser(analysis.channels, analysis.costs, Normalize.MEM)
        raise TargetUnreachable(unreachable_message(before, floor, config.target,
                                                    analysis.groups, mem))


@dataclass
class _Pruned:
    """What the pruning phase hands to the last fine-tuning phase."""
    model: onnx.ModelProto
    slices: list
    verdict: object
    plan: Plan
    scores: np.ndarray
    calibration: object | None
    steps_used: int
    log: FinetuneLog | None
    gfp: dict | None


def _prune_gfp(analysis, config, train, w, steps, timings) -> _Pruned:
    if config.criterion is not Criterion.FISHER:
        raise UserError("--schedule gfp scores by Group Fisher: use --criterion fisher")
    tick = time.perf_counter()
    tuned, removed, log, record = _gfp(analysis, config, train, w, steps,
                                       config.calibration.progress)
    timings["gfp"] = time.perf_counter() - tick
    pruned, slices = apply_plan(with_weights(analysis.channels, tuned), removed)
    verdict = verify(tuned, pruned, slices, runs=config.verify_runs, seed=config.seed)
    removal = Removal(analysis.channels, analysis.costs)
    removal.remove(np.flatnonzero(removed))
    plan = Plan(removed, removal.kept, analysis.costs.costs(), analysis.costs.costs(removal.kept))
    return _Pruned(pruned, slices, verdict, plan, np.zeros(len(removed)), None, log.steps, log,
                   record)


def _prune_oneshot(analysis, config, train, timings) -> _Pruned:
    from onnxprune import api

    result = api.prune(analysis.model, replace(config, finetune=None), data=train)
    timings.update({k: v for k, v in result.timings.items() if k != "analyze"})
    return _Pruned(result.model, result.slices, result.verdict, result.plan, result.scores,
                   result.calibration, 0, None, None)


def prune_with_recovery(model, config: PruneConfig, data):
    """`api.prune` with `config.finetune` set: see the module docstring."""
    from onnxprune import api

    w = world(config.calibration.device)
    analysis = api.analyze(model, config.input_shapes)
    data = api.open_calibration_data(analysis, config, data)
    train, held = data.split(config.finetune.holdout, seed=config.seed)
    if train.num_samples == 0:
        raise UserError(f"no training samples left after holding out {held.num_samples}: "
                        "lower --holdout")
    steps = total_steps(config.finetune, train, w.size)
    timings = {"analyze": analysis.seconds}
    if config.finetune.schedule is Schedule.GFP:
        done = _prune_gfp(analysis, config, train, w, steps, timings)
    else:
        done = _prune_oneshot(analysis, config, train, timings)
    tick = time.perf_counter()
    model_out, log = done.model, done.log
    if steps > done.steps_used:
        model_out, log = finetune_model(analysis.model, done.model, train, config, w,
                                        steps - done.steps_used, config.calibration.progress)
    timings["finetune"] = time.perf_counter() - tick
    recovery = Recovery(config.finetune.schedule, log,
                        fidelity(analysis.model, model_out, held), done.gfp)
    return api.PruneResult(model_out, analysis, done.plan, done.slices, done.scores,
                           done.verdict, timings, done.calibration, recovery)
