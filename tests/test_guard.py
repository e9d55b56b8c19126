"""Never worse, never silent (calibrate/guard.py): the best candidate on held-out data is
written, bad results are loud, and --min-agreement stops the run. The end-to-end case (a
fine-tuning made to hurt) is in test_finetune.py, on its trained tiny task."""
from __future__ import annotations

import pytest

from calibrate.guard import best, require_agreement, score, warnings
from onnxprune.errors import UserError


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
