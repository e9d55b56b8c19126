"""Recovery phases of `onnxprune.api.prune` (the one orchestrator) when `config.finetune` is set.

`api.prune` analyses the model, opens the data and holds out `holdout` samples, then calls
`prune_gfp` (GFP schedule) or prunes one-shot itself, then calls `finetune_slice`. This
module receives the analysis and data it works on: it never analyses a model or imports `api`.

- oneshot: `api.prune` scores on the training share of the data (any criterion), plans,
  slices and proves the slice exact (the oracle); `finetune_slice` fine-tunes it for the
  whole budget.
- gfp (`prune_gfp`): fine-tune the full model with masks, removing units by accumulated
  Fisher as it goes (gfp.py); slice once the target is met and prove the slice exact *with the
  trained weights*; `finetune_slice` fine-tunes the sliced model for the rest of the budget
  (a fresh cosine schedule).
Either way the fine-tuned weights are written into the pruned ONNX, which must pass
onnx.checker and run in onnxruntime; the report then states fidelity
(`onnxprune.verify.fidelity`) on `holdout` samples the training never saw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from calibrate.datatypes import CalibrationData
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
from onnxprune.verify.oracle import Verdict, check_model, verify


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
class GfpPruned:
    """What the GFP pruning phase hands back: the slice of the trained model, proven exact."""
    model: onnx.ModelProto
    slices: list
    verdict: Verdict
    plan: Plan
    steps_used: int
    log: FinetuneLog
    record: dict


def prune_gfp(analysis, config: PruneConfig, train: CalibrationData, timings: dict
              ) -> GfpPruned:
    """The GFP pruning phase on `analysis` (an `onnxprune.api.Analysis`), training on `train`:
    remove units while fine-tuning, slice the trained model, verify. Adds timings["gfp"]."""
    if config.criterion is not Criterion.FISHER:
        raise UserError("--schedule gfp scores by Group Fisher: use --criterion fisher")
    w = world(config.calibration.device)
    steps = total_steps(config.finetune, train, w.size)
    tick = time.perf_counter()
    tuned, removed, log, record = _gfp(analysis, config, train, w, steps,
                                       config.calibration.progress)
    timings["gfp"] = time.perf_counter() - tick
    pruned, slices = apply_plan(with_weights(analysis.channels, tuned), removed)
    verdict = verify(tuned, pruned, slices, runs=config.verify_runs, seed=config.seed)
    removal = Removal(analysis.channels, analysis.costs)
    removal.remove(np.flatnonzero(removed))
    plan = Plan(removed, removal.kept, analysis.costs.costs(), analysis.costs.costs(removal.kept))
    return GfpPruned(pruned, slices, verdict, plan, log.steps, log, record)


def finetune_slice(original: onnx.ModelProto, pruned: onnx.ModelProto,
                   train: CalibrationData, held: CalibrationData, config: PruneConfig,
                   timings: dict, gfp: GfpPruned | None = None) -> tuple[onnx.ModelProto, Recovery]:
    """Fine-tune the sliced `pruned` on `train` for the steps the pruning phase left (all of
    them after one-shot, the rest after `gfp`); fidelity against `original` on `held`.
    Adds timings["finetune"]."""
    w = world(config.calibration.device)
    steps = total_steps(config.finetune, train, w.size)
    used, log = (gfp.steps_used, gfp.log) if gfp is not None else (0, None)
    tick = time.perf_counter()
    tuned = pruned
    if steps > used:
        tuned, log = finetune_model(original, pruned, train, config, w, steps - used,
                                    config.calibration.progress)
    timings["finetune"] = time.perf_counter() - tick
    return tuned, Recovery(config.finetune.schedule, log, fidelity(original, tuned, held),
                           gfp.record if gfp is not None else None)
