"""Never worse, never silent: every recovered model is judged on held-out samples.

The candidates are the plain slice (proven exact by the oracle), the least-squares refit
(calibrate/refit.py) and the fine-tuned model; the one written is the best of them on the
held-out share (`--holdout`), by one score:
- top-1 accuracy against the labels, where the data has labels (and they are used);
- else top-1 agreement with the original on its first classifier output;
- else minus the mean absolute output error against the original.
Ties go to the later stage. The fidelity reported is measured on the same held-out samples the
choice was made on (a best-of-few choice: slightly optimistic; docs/recovery.md measures on a
separate test set).

Within one fine-tuning, the checkpoint kept is the one with the lowest held-out *loss* of the
training objective (calibrate/finetune.objective: CE + KD with labels, KD without), not the
highest top-1: a top-1 count on a few hundred samples has a standard error of about 1.1 points
at 93 % on 500, more than checkpoints of one run differ by, so it picked noise. Measured on
BN-folded ResNet-20, M 0.5, `--no-labels`: top-1 agreement kept step 141 of 235, 90.21 % test
top-1, where the last step, lowest in held-out loss, has 90.92 % (docs/recovery.md).

A result whose held-out top-1 agreement is below 50 %, or whose accuracy is more than
`FAR_BELOW` under the original's, is a loud warning (stderr and the report); with
`--min-agreement F`, an agreement below F stops the run (exit 2, nothing written).
"""
from __future__ import annotations

import copy

import torch

from calibrate.datatypes import CalibrationData
from calibrate.distributed import to_device
from calibrate.finetune import objective
from onnxprune.errors import UserError
from onnxprune.model.outputs import first_classifier

LOW_AGREEMENT = 0.5
FAR_BELOW = 0.10   # accuracy this far under the original's (absolute) is a warning


def score(fid: dict | None) -> float | None:
    """The held-out score of a fidelity record (verify/fidelity.py); None: nothing to judge."""
    if not fid:
        return None
    if "accuracy_pruned" in fid:
        return fid["accuracy_pruned"]
    if "top1_agreement" in fid:
        return fid["top1_agreement"]
    return -fid["mean_abs_error"]


def best(candidates: list[tuple[str, object, dict | None]]) -> tuple[str, object, dict | None]:
    """The candidate (name, model, fidelity) with the highest score, ties to the later one;
    the last one when none can be judged (no held-out samples)."""
    scored = [(score(fid), i) for i, (_, _, fid) in enumerate(candidates)]
    if all(s is None for s, _ in scored):
        return candidates[-1]
    _, index = max((s, i) for s, i in scored if s is not None)
    return candidates[index]


def warnings(fid: dict | None) -> list[str]:
    """The loud warnings a chosen model's held-out fidelity calls for."""
    if not fid:
        return ["no held-out samples (--holdout 0): the recovered model was not judged"]
    found = []
    agreement = fid.get("top1_agreement")
    if agreement is not None and agreement < LOW_AGREEMENT:
        found.append(f"held-out top-1 agreement with the original is {agreement:.1%} "
                     f"(below {LOW_AGREEMENT:.0%}): the pruned model does not behave like it")
    if "accuracy_pruned" in fid and fid["accuracy_pruned"] < fid["accuracy_original"] - FAR_BELOW:
        found.append(f"held-out top-1 {fid['accuracy_pruned']:.1%} is far below the original's "
                     f"{fid['accuracy_original']:.1%}")
    return found


def require_agreement(fid: dict | None, minimum: float | None) -> None:
    """UserError (exit 2, nothing written) when the agreement is below `--min-agreement`."""
    if minimum is None:
        return
    agreement = None if not fid else fid.get("top1_agreement")
    if agreement is None:
        raise UserError(f"--min-agreement {minimum:g}: no held-out top-1 agreement to check "
                        "(no held-out samples, or no classifier output); nothing written")
    if agreement < minimum:
        raise UserError(f"held-out top-1 agreement {agreement:.1%} is below --min-agreement "
                        f"{minimum:g}; nothing written")


class Checkpoints:
    """The fine-tuning hook (calibrate/finetune.py): every `every` steps and at the end, score
    the student by minus its held-out loss under the training objective (module docstring) and
    keep its best state (ties to the later step)."""

    def __init__(self, teacher, held: CalibrationData, kinds, use_labels: bool, every: int,
                 device, temperature: float, batch_size: int = 64):
        self.every = max(1, every)
        self.kinds = kinds
        self.temperature = temperature
        labelled = use_labels and first_classifier(kinds) is not None
        self.batches = [(to_device(b.inputs, device),
                         torch.as_tensor(b.labels).long().to(device) if labelled else None)
                        for b in held.batches(batch_size)]
        with torch.no_grad():
            self.reference = [teacher(**inputs) for inputs, _ in self.batches]
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.history: list[tuple[int, float]] = []
        self._state = None

    def _score(self, module) -> float:
        """Minus the sample-weighted mean of the per-batch objective."""
        total, count = 0.0, 0
        for (inputs, labels), ref in zip(self.batches, self.reference):
            n = len(next(iter(inputs.values())))
            loss = objective(module(**inputs), ref, labels, self.kinds, self.temperature)
            total += float(loss) * n
            count += n
        return -total / max(count, 1)

    def judge(self, step: int, module) -> None:
        if not self.batches:
            return
        value = self._score(module)
        self.history.append((step, value))
        if self.best_score is None or value >= self.best_score:
            self.best_score, self.best_step = value, step
            self._state = copy.deepcopy(module.state_dict())

    def restore(self, module) -> None:
        if self._state is not None:
            module.load_state_dict(self._state)
