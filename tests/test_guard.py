"""Never worse, never silent (calibrate/guard.py): the best candidate on held-out data is
written, bad results are loud, and --min-agreement stops the run. The end-to-end case (a
fine-tuning made to hurt) is in test_finetune.py, on its trained tiny task."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calibrate.datatypes import CalibrationData
from calibrate.guard import Checkpoints, best, require_agreement, score, warnings
from onnxprune.errors import UserError
from onnxprune.model.outputs import OutputKind


def _fid(agreement, acc=None, acc_original=0.9):
    fid = {"samples": 10, "top1_agreement": agreement, "mean_abs_error": 1.0,
           "max_relative_error": 1.0}
    if acc is not None:
        fid.update(accuracy_pruned=acc, accuracy_original=acc_original)
    return fid


def test_score_prefers_labels_then_agreement_then_error():
    assert score(_fid(0.5, acc=0.8)) == 0.8
    assert score(_fid(0.7)) == 0.7
    assert score({"mean_abs_error": 0.25}) == -0.25
    assert score(None) is None


def test_best_takes_the_highest_score_and_the_later_stage_on_ties():
    a, b, c = ("slice", 1, _fid(0.6)), ("refit", 2, _fid(0.9)), ("fine-tuned", 3, _fid(0.9))
    assert best([a, b])[0] == "refit"
    assert best([a, b, c])[0] == "fine-tuned"
    assert best([("slice", 1, _fid(0.95)), c])[0] == "slice"
    assert best([("slice", 1, None), ("refit", 2, None)])[0] == "refit"  # nothing to judge


def test_warnings_are_loud_below_half_agreement_or_far_below_the_original():
    assert warnings(_fid(0.9, acc=0.85)) == []
    assert "agreement" in warnings(_fid(0.4))[0]
    assert "far below" in warnings(_fid(0.8, acc=0.7, acc_original=0.9))[0]
    assert "not judged" in warnings(None)[0]


def test_min_agreement():
    require_agreement(_fid(0.8), 0.8)
    require_agreement(_fid(0.1), None)
    with pytest.raises(UserError, match="below --min-agreement"):
        require_agreement(_fid(0.79), 0.8)
    with pytest.raises(UserError, match="no held-out"):
        require_agreement(None, 0.5)


def _held(n: int, labels):
    class Rows:
        def load(self, idx):
            return {"x": np.asarray(idx, dtype=np.float32)[:, None]}
    return CalibrationData(Rows(), n, labels, "rows")


def _logits(labels, wrong, scale):
    """A module whose logits are `scale` · one-hot(label), on the wrong class where `wrong`."""
    target = torch.as_tensor(labels)
    target = torch.where(torch.as_tensor(wrong), (target + 1) % 3, target)
    table = scale * torch.nn.functional.one_hot(target, 3).float()

    class Lookup(torch.nn.Module):
        def forward(self, x):
            return (table[x[:, 0].long()],)
    return Lookup()


@pytest.mark.parametrize("use_labels", [True, False])
def test_checkpoints_keep_the_lowest_held_out_loss_not_the_top1_count(use_labels):
    """Step 1 is right more often (95 %) but confidently wrong; step 2 is right 90 % of the time
    and close to the teacher: its held-out loss is lower, so it is kept."""
    n = 200
    labels = np.arange(n) % 3
    rng = np.random.default_rng(0)
    teacher = _logits(labels, np.zeros(n, bool), 1.0)
    sure = _logits(labels, rng.random(n) < 0.05, 50.0)
    close = _logits(labels, rng.random(n) < 0.10, 1.0)
    checks = Checkpoints(teacher, _held(n, labels), [OutputKind(True, False)], use_labels,
                         every=1, device=torch.device("cpu"), temperature=4.0)
    checks.judge(1, sure)
    checks.judge(2, close)
    assert checks.best_step == 2
    checks.judge(3, sure)
    assert checks.best_step == 2 and [s for s, _ in checks.history] == [1, 2, 3]
