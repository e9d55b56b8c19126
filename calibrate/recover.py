"""Recovery phases of `onnxprune.api.prune` (the one orchestrator): the least-squares refit,
fine-tuning, and the held-out guard that writes the best of them.

`api.prune` analyses the model, opens the data and holds out `holdout` samples, then calls
`prune_gfp` (GFP schedule) or prunes one-shot itself, then calls `recover`. This module
receives the analysis and data it works on: it never analyses a model or imports `api`.

- oneshot: `api.prune` scores on the training share of the data (any criterion), plans,
  slices and proves the slice exact (the oracle); `recover` refits the sinks by least squares
  (calibrate/refit.py; on by default with data) and fine-tunes, when asked, from the better of
  slice and refit on the held-out share, for the whole budget.
- gfp (`prune_gfp`): fine-tune the full model with masks, removing units by accumulated
  Fisher as it goes (gfp.py); slice once the target is met and prove the slice exact *with the
  trained weights*; `recover` fine-tunes the slice for the rest of the budget (a fresh
  schedule). The refit is off by default here: its targets are the original's outputs, which
  GFP's training has moved away from.
Fine-tuning judges itself every few steps on the held-out share and keeps its best checkpoint;
then the slice, the refit and the fine-tuned model are compared on the held-out share and the
best is written (calibrate/guard.py), with its fidelity (`onnxprune.verify.fidelity`) and the
others' in the report. A fine-tuning that diverges is dropped with a warning, not an error.
Fine-tuned weights must pass onnx.checker and run in onnxruntime.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from calibrate.datatypes import CalibrationData
from calibrate.distributed import World, world
from calibrate.executor import OnnxModule
from calibrate.finetune import Diverged, FinetuneLog, finetune, total_steps
from calibrate.gfp import GfpSchedule, with_weights
from calibrate.guard import Checkpoints, best, warnings
from calibrate.refit import refit
from calibrate.reparam import slice_targets
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

CHECKPOINTS = 5  # fine-tuning is judged this many times (and at its end) on the held-out share


@dataclass
class Recovery:
    """What recovery did, and which candidate was written (calibrate/guard.py)."""
    schedule: Schedule | None                 # None: no fine-tuning
    finetune: FinetuneLog | None = None
    fidelity: dict | None = None              # of the model written, on the held-out share
    gfp: dict | None = None
    refit: dict | None = None                 # calibrate/refit.py's record
    chosen: str = "slice"                     # "slice", "refit" or "fine-tuned"
    start: str | None = None                  # what fine-tuning started from
    checkpoint: int | None = None             # the fine-tuning step whose weights were kept
    candidates: dict = field(default_factory=dict)   # name -> held-out fidelity
    warnings: list = field(default_factory=list)
    diverged: str | None = None               # fine-tuning stopped on a non-finite value

    def as_dict(self) -> dict:
        return {"schedule": None if self.schedule is None else self.schedule.value,
                "finetune": None if self.finetune is None else self.finetune.as_dict(),
                "fidelity": self.fidelity, "gfp": self.gfp, "refit": self.refit,
                "chosen": self.chosen, "finetune_start": self.start,
                "checkpoint_step": self.checkpoint, "candidates": self.candidates,
                "diverged": self.diverged, "warnings": self.warnings}


def _module(model: onnx.ModelProto, w: World, what: str) -> OnnxModule:
    free, why = make_batch_free(model)
    if why is not None:
        raise UserError(f"fine-tuning needs the {what} model at batch > 1, but {why}")
    return OnnxModule(free).to(w.device)


def _teacher(original: onnx.ModelProto, w: World):
    """The original, frozen: the distillation target, with or without labels."""
    teacher = _module(original, w, "original").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def finetune_model(original, pruned, data, config: PruneConfig, w: World, steps: int,
                   progress: bool) -> tuple[onnx.ModelProto, FinetuneLog]:
    """Fine-tune `pruned` (labels, or distillation from `original`); weights written back."""
    student = _module(pruned, w, "pruned")
    log = finetune(student, _teacher(original, w), data, config.finetune,
                   output_kinds(pruned), w, steps, config.seed, progress)
    tuned = student.write_back(pruned)
    check_model(tuned)
    return tuned, log


def _gfp(analysis, config, data, w, steps, progress):
    """Returns (tuned normalised model, removed components, log, gfp record)."""
    reachable_check(analysis, config)
    module = _module(analysis.model, w, "original")
    schedule = GfpSchedule(analysis, config, module, w, prune_steps=max(1, steps // 2))
    log = finetune(module, _teacher(analysis.model, w), data, config.finetune,
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
    floor = reachable_minimum(analysis.channels, analysis.groups, analysis.costs, config.round_to,
                              config.max_prune_share)
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
    trained: onnx.ModelProto | None = None  # the full model GFP trained, which `slices` cut


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
    return GfpPruned(pruned, slices, verdict, plan, log.steps, log, record, tuned)


def _finetune(original, start, train, held, config: PruneConfig, w: World, steps: int,
              cut: tuple):
    """Fine-tune `start` for `steps`, checkpoints judged on `held` (calibrate/guard.py); the
    best checkpoint's weights are written back. `cut` = (the model the slice was cut from, the
    slices): the BN-folded convs of the slice get its channel statistics back
    (calibrate/reparam.py). Returns (model, log, checkpoints)."""
    student = _module(start, w, "pruned")
    checks = Checkpoints(_module(original, w, "original").eval(), held, output_kinds(start),
                         train.has_labels, max(1, steps // CHECKPOINTS), w.device,
                         config.finetune.temperature)
    targets = slice_targets(_module(cut[0], w, "original"), cut[1], train,
                            config.finetune.batch_size, w)
    log = finetune(student, _teacher(original, w), train, config.finetune,
                   output_kinds(start), w, steps, config.seed, config.calibration.progress,
                   checkpoints=checks, bn_targets=targets)
    tuned = student.write_back(start)
    check_model(tuned)
    return tuned, log, checks


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, slices,
            train: CalibrationData, held: CalibrationData, config: PruneConfig, timings: dict,
            gfp: GfpPruned | None = None) -> tuple[onnx.ModelProto, Recovery]:
    """Recover the proven slice `pruned` of `original`: the least-squares refit (when
    `config.reconstructs`), then fine-tuning for the steps the pruning phase left (all of them
    after one-shot, the rest after `gfp`), starting from the better of slice and refit on
    `held`. The model returned is the best on `held` of the slice, the refit and the
    fine-tuned model (calibrate/guard.py). Adds timings["refit"] / ["finetune"] / ["judge"]."""
    w = world(config.calibration.device)
    candidates = [("slice", pruned, None)]
    record = Recovery(config.finetune.schedule if config.finetune else None)
    if config.reconstructs(True):
        tick = time.perf_counter()
        refit_model, record.refit = refit(original, pruned, slices, train, config.calibration,
                                          config.seed)
        timings["refit"] = time.perf_counter() - tick
        if record.refit["refit_layers"]:
            candidates.append(("refit", refit_model, None))
    candidates = _judged(original, candidates, held, timings)
    if config.finetune is not None:
        steps = total_steps(config.finetune, train, w.size)
        used = gfp.steps_used if gfp is not None else 0
        record.finetune = gfp.log if gfp is not None else None
        if steps > used:
            name, start, _ = best(candidates)
            tick = time.perf_counter()
            cut = (gfp.trained, gfp.slices) if gfp is not None else (original, slices)
            record.start = name
            try:
                tuned, record.finetune, checks = _finetune(original, start, train, held, config,
                                                           w, steps - used, cut)
            except Diverged as exc:  # never worse: the slice or the refit is written instead
                record.diverged = str(exc)
            else:
                record.checkpoint = checks.best_step
                candidates = _judged(original, [*candidates, ("fine-tuned", tuned, None)], held,
                                     timings)
            timings["finetune"] = time.perf_counter() - tick
    record.chosen, model, record.fidelity = best(candidates)
    record.candidates = {name: fid for name, _, fid in candidates}
    record.gfp = gfp.record if gfp is not None else None
    record.warnings = ([f"{record.diverged}; the {record.chosen} was written"]
                       if record.diverged else []) + warnings(record.fidelity)
    return model, record


def _judged(original, candidates, held: CalibrationData, timings: dict):
    """The candidates with their held-out fidelity (measured once each)."""
    tick = time.perf_counter()
    out = [(name, model, fid if fid is not None else fidelity(original, model, held))
           for name, model, fid in candidates]
    timings["judge"] = timings.get("judge", 0.0) + time.perf_counter() - tick
    return out
