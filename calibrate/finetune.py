"""Fine-tuning an ONNX model in torch: supervised, or distilled from the original without labels.

Objectives (per batch, mean over samples):
- labels:     L = CE(z_student, y) on the classifier output (`onnxprune.model.outputs`);
- no labels:  knowledge distillation from the original model (Hinton et al. 2015):
              L = T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) for classifier
              outputs, plus the mean squared error for every other float output.
SGD with Nesterov momentum (or AdamW), cosine learning-rate decay to 0 over the step budget,
BatchNormalization in train mode (running statistics updated, ONNX momentum), and under
torchrun the student is wrapped in DistributedDataParallel: each rank reads its own shard of
every epoch's shuffled batches and gradients are averaged.

`step_hook(step, mask_grad)` lets the GFP schedule (gfp.py) see each step's mask gradients.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calibrate.data import CalibrationData
from calibrate.distributed import World, to_device
from calibrate.progress import Progress
from onnxprune.config import FinetuneConfig, Optimizer
from onnxprune.errors import UserError
from onnxprune.model.outputs import OutputKind, first_classifier


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
        return F.cross_entropy(_logits(student[first], kinds[first]), labels)
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


def finetune(student, teacher, data: CalibrationData, cfg: FinetuneConfig, kinds, world: World,
             steps: int, seed: int = 0, progress: bool = False,
             step_hook: Callable | None = None, before_step: Callable | None = None) -> FinetuneLog:
    """Train `student` (an OnnxModule, parameters requiring grad) for `steps` steps.

    `before_step(n)` may attach masks for a batch of n samples and return a tensor whose
    gradient `step_hook(step, grad)` receives after the optimiser step; a true return value
    ends training early."""
    torch.manual_seed(seed)
    student.train()
    model = student
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = Progress("fine-tune", steps, progress and world.is_main)
    losses: list[float] = []
    batches = _batches_forever(data, cfg, world, seed)
    done = 0
    for step in range(steps):
        batch = next(batches)
        inputs = to_device(batch.inputs, world.device)
        n = len(next(iter(inputs.values())))
        watched = before_step(n) if before_step else None
        labels = None if batch.labels is None else torch.from_numpy(batch.labels).long()
        with torch.no_grad():
            target = teacher(**inputs) if teacher is not None and labels is None else None
        loss = objective(model(**inputs), target, None if labels is None else
                         labels.to(world.device), kinds, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            bar.close()
            raise UserError(f"fine-tuning diverged: the loss is {losses[-1]} at step {step + 1} "
                            f"(lr {cfg.lr:g}); lower --lr")
        bar.update(n * world.size, losses[-1])
        done = step + 1
        if step_hook is not None and step_hook(step, None if watched is None else watched.grad):
            break
    seconds = bar.close()
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise UserError(f"fine-tuning diverged: non-finite weights after {done} steps "
                        f"(lr {cfg.lr:g}); lower --lr")
    student.eval()
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return FinetuneLog(done, done * cfg.batch_size * world.size,
                       losses[0] if losses else float("nan"), sum(tail) / len(tail), seconds)
