"""Fine-tuning an ONNX model in torch: supervised, or distilled from the original without labels.

Objectives (per batch, mean over samples):
- no labels:  knowledge distillation from the original model (Hinton et al. 2015):
              L_KD = T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) for classifier
              outputs, plus the mean squared error for every other float output;
- labels:     L = CE(z_student, y) on the classifier output (`onnxprune.model.outputs`)
              + L_KD when a teacher is given (the original always is, by calibrate/recover.py:
              on BN-folded ResNet-20, M 0.5, 5 epochs of 1,500 images, test top-1 89.4 % with
              CE + KD against 87.6 % with CE alone from the slice, 90.4 % with CE + KD from
              the refit, where CE alone did not beat the refit itself; docs/recovery.md).
SGD with Nesterov momentum (or AdamW); BatchNormalization in train mode (running statistics
updated, ONNX momentum), and every Conv without one gets a BatchNorm for the time of training,
folded back at the end (`calibrate.reparam`: BN-folded exports train as their BN-kept form).
Under torchrun the student is wrapped in DistributedDataParallel: each rank reads its own
shard of every epoch's shuffled batches and gradients are averaged.

Learning rate of step s (0-based) out of S, with W = ⌊WARMUP_FRACTION · S⌋ warm-up steps:
    lr(s) = lr · (s + 1) / (W + 1)                          s < W
    lr(s) = lr · ½ (1 + cos(π (s − W) / (S − W)))           s ≥ W
and the global gradient norm is clipped to CLIP_NORM before every step; a non-finite loss or
gradient norm stops training with `Diverged` (a UserError). `lr` is the peak (--lr, default 0.01).

Why these values (Fashion-MNIST ResNet-20, --target-mem 0.5, 5 epochs of 1500 samples, test
top-1, BN-folded / BN-kept export): peak lr 0.003 / 0.01 / 0.03 / 0.1 gave 87.9 / 88.0 / 87.4 /
83.8 % and 87.8 / 88.1 / 87.6 / 84.0 % with labels, 89.6 / 90.0 / 89.2 % and 89.7 / 90.3 /
89.5 % distilled; MobileNetV2 at 0.003 / 0.01 / 0.03: 90.3 / 90.1 / 89.5 % and 90.3 / 90.3 /
89.4 % with labels, 91.0 / 91.1 / 90.7 % and 90.8 / 90.8 / 90.4 % distilled. 0.01 is the best
or within 0.2 points of it for both networks and both forms. Clipping at 5 against none: 90.0 vs
88.4 % (folded) and 90.3 vs 88.9 % (kept) distilled, 88.0 vs 87.5 % (folded) with labels; at
2 or 10, 90.0 and 89.5 % distilled. The warm-up changed nothing measurable at lr 0.01 (90.1
without, folded, distilled); it is there for larger --lr, with the clipping: at --lr 10 the
weights stay finite (they were NaN after 3 steps).

`step_hook(step, mask_grad)` lets the GFP schedule (gfp.py) see each step's mask gradients;
`checkpoints` (calibrate/guard.py) judges the student every few steps and restores the best.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from calibrate.data import CalibrationData
from calibrate.distributed import World, to_device
from calibrate.progress import Progress
from calibrate.reparam import insert_bn
from onnxprune.config import FinetuneConfig, Optimizer
from onnxprune.errors import UserError
from onnxprune.model.outputs import OutputKind, first_classifier

WARMUP_FRACTION = 0.05   # of the steps: linear warm-up before the cosine decay
CLIP_NORM = 5.0          # the global gradient norm is clipped to this


class Diverged(UserError):
    """Training produced a non-finite loss, gradient or weight: the student is unusable."""


class Checkpoints(Protocol):
    """The other side of the checkpoint hook (calibrate/guard.py)."""
    every: int

    def judge(self, step: int, module) -> None: ...

    def restore(self, module) -> None: ...


@dataclass
class FinetuneLog:
    steps: int
    samples: int
    first_loss: float
    last_loss: float            # mean over the last 10 % of steps
    seconds: float

    def as_dict(self) -> dict:
        return {"steps": self.steps, "samples": self.samples,
                "first_loss": round(self.first_loss, 5), "last_loss": round(self.last_loss, 5),
                "seconds": round(self.seconds, 2)}


def total_steps(cfg: FinetuneConfig, data: CalibrationData, world_size: int) -> int:
    """--finetune-steps as given, or --finetune-epochs over the (sharded) data."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = math.ceil(data.num_samples / (cfg.batch_size * world_size))
    return max(1, math.ceil((cfg.epochs or 0) * per_epoch))


def objective(student: tuple, teacher: tuple | None, labels: torch.Tensor | None,
              kinds: list[OutputKind], temperature: float) -> torch.Tensor:
    """The batch loss (module docstring)."""
    if labels is not None:
        first = first_classifier(kinds)
        if first is None:
            raise ValueError("labels need a classifier output (a float [N, K] tensor)")
        ce = F.cross_entropy(_logits(student[first], kinds[first]), labels)
        return ce if teacher is None else ce + objective(student, teacher, None, kinds,
                                                         temperature)
    loss = None
    for s, t, kind in zip(student, teacher, kinds):
        if not torch.is_floating_point(s):
            continue
        if kind.classifier:
            t_log = F.log_softmax(_logits(t, kind) / temperature, dim=1)
            s_log = F.log_softmax(_logits(s, kind) / temperature, dim=1)
            term = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temperature ** 2
        else:
            term = F.mse_loss(s, t)
        loss = term if loss is None else loss + term
    return loss


def _logits(output: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    return torch.log(output.clamp_min(1e-12)) if kind.probabilities else output


def _optimizer(params, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer is Optimizer.ADAMW:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                           weight_decay=cfg.weight_decay)


def _batches_forever(data: CalibrationData, cfg: FinetuneConfig, world: World, seed: int):
    epoch = 0
    while True:
        yield from data.batches(cfg.batch_size, shuffle=True, seed=seed + epoch,
                                rank=world.rank, world_size=world.size)
        epoch += 1


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning rate of optimiser step `step` (0-based) as a fraction of the peak: linear
    warm-up over the first `warmup` steps, then cosine decay towards 0 at `steps`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def warmup_steps(steps: int) -> int:
    return int(WARMUP_FRACTION * steps)


@dataclass(frozen=True)
class Hooks:
    """What the callers of `finetune` plug in (see its docstring)."""
    step_hook: Callable | None = None
    before_step: Callable | None = None
    checkpoints: Checkpoints | None = None


def finetune(student, teacher, data: CalibrationData, cfg: FinetuneConfig, kinds, world: World,
             steps: int, seed: int = 0, progress: bool = False,
             step_hook: Callable | None = None, before_step: Callable | None = None,
             checkpoints: Checkpoints | None = None,
             bn_targets: dict | None = None) -> FinetuneLog:
    """Train `student` (an OnnxModule, parameters requiring grad) for `steps` steps; it ends in
    eval mode with the original's structure (the BN re-parametrisation folded back).

    `before_step(n)` may attach masks for a batch of n samples and return a tensor whose
    gradient `step_hook(step, grad)` receives after the optimiser step; a true return value
    ends training early. `checkpoints.judge(step, student)` runs (eval mode, no grad) after
    every `checkpoints.every`-th step and after the last; `checkpoints.restore(student)` runs
    once training is over, before the BN re-parametrisation is folded. `bn_targets`
    (`calibrate.reparam.slice_targets`) gives the inserted BNs the original's channel
    statistics."""
    torch.manual_seed(seed)
    reparam = insert_bn(student, data, cfg.batch_size, world, targets=bn_targets)
    try:
        log = _train(student, teacher, data, cfg, kinds, world, steps, seed, progress,
                     Hooks(step_hook, before_step, checkpoints))
        if checkpoints is not None:
            checkpoints.restore(student)
    except BaseException:
        reparam.discard()
        raise
    reparam.fold(world)
    student.eval()
    return log


def _train(student, teacher, data, cfg, kinds, world, steps, seed, progress,
           hooks: Hooks) -> FinetuneLog:
    student.train()
    model = student
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg)
    warmup = warmup_steps(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    bar = Progress("fine-tune", steps, progress and world.is_main)
    losses: list[float] = []
    batches = _batches_forever(data, cfg, world, seed)
    done = 0
    for step in range(steps):
        batch = next(batches)
        inputs = to_device(batch.inputs, world.device)
        n = len(next(iter(inputs.values())))
        watched = hooks.before_step(n) if hooks.before_step else None
        labels = None if batch.labels is None else torch.from_numpy(batch.labels).long()
        with torch.no_grad():
            target = teacher(**inputs) if teacher is not None else None
        loss = objective(model(**inputs), target, None if labels is None else
                         labels.to(world.device), kinds, cfg.temperature)
        losses.append(float(loss.detach()))
        _check_finite(losses[-1], "loss", step + 1, cfg, bar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _check_finite(float(clip_grad_norm(params, CLIP_NORM)), "gradient norm", step + 1, cfg,
                      bar)
        opt.step()
        sched.step()
        bar.update(n * world.size, losses[-1])
        done = step + 1
        stop = hooks.step_hook is not None and hooks.step_hook(
            step, None if watched is None else watched.grad)
        checkpoints = hooks.checkpoints
        if checkpoints is not None and (stop or done == steps or _due(done, checkpoints)):
            _judge(checkpoints, done, student)
        if stop:
            break
    seconds = bar.close()
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise Diverged(f"fine-tuning diverged: non-finite weights after {done} steps "
                        f"(lr {cfg.lr:g}); lower --lr")
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return FinetuneLog(done, done * cfg.batch_size * world.size,
                       losses[0] if losses else float("nan"), sum(tail) / len(tail), seconds)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients down to a global L2 norm of `max_norm`; returns the norm before."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _check_finite(value: float, what: str, step: int, cfg: FinetuneConfig, bar: Progress):
    if not math.isfinite(value):
        bar.close()
        raise Diverged(f"fine-tuning diverged: the {what} is {value} at step {step} "
                        f"(lr {cfg.lr:g}); lower --lr")


def _due(done: int, checkpoints: Checkpoints) -> bool:
    return checkpoints.every > 0 and done % checkpoints.every == 0


def _judge(checkpoints: Checkpoints, step: int, student) -> None:
    """The student as it would be written (eval mode: BN with running statistics)."""
    student.eval()
    try:
        with torch.no_grad():
            checkpoints.judge(step, student)
    finally:
        student.train()
