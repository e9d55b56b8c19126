"""tools/front_fashion.py's own logic: method names and the dominance column."""
import sys
from pathlib import Path

import pytest

from onnxprune.config import Criterion, Normalize, Schedule

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def front():
    sys.path.insert(0, str(TOOLS))  # the tool imports its sibling bench_accuracy
    try:
        import front_fashion
    finally:
        sys.path.remove(str(TOOLS))
    return front_fashion


def test_method_names_set_the_options(front):
    config = front.ours_config("fisher-r8-s0.5-nnone-nodata", 0.5, 2, 0)
    assert config.criterion is Criterion.FISHER and config.calibration.rounds == 8
    assert config.max_prune_share == 0.5 and config.normalize is Normalize.NONE
    assert config.reconstruct is False and config.seed == 2 and config.finetune is None
    default = front.ours_config("l1", 0.5, 0, 0)
    assert default.calibration.rounds is None and default.max_prune_share == 0.9
    gfp = front.ours_config("gfp", 0.5, 0, 300)
    assert gfp.finetune.schedule is Schedule.GFP and gfp.finetune.steps == 300
    assert front.is_ours("lamp-nnone") and not front.is_ours("tp-taylor-8")
    with pytest.raises(SystemExit):
        front.ours_config("fisher-x3", 0.5, 0, 0)


def test_a_row_is_dominated_only_by_a_fisher_row_as_good_and_as_fast(front):
    fisher = {"method": "fisher-r4", "target": 0.5, "top1": [0.90, 0.92], "ms": {32: 10.0}}
    assert front.dominated(fisher, [fisher]) == ""
    slower_worse = {"method": "l1", "top1": [0.90], "ms": {32: 12.0}}
    faster = {"method": "l1", "top1": [0.80], "ms": {32: 9.0}}
    better = {"method": "l1", "top1": [0.95], "ms": {32: 12.0}}
    assert front.dominated(slower_worse, [fisher]).startswith("yes")
    assert front.dominated(faster, [fisher]) == "**no**"
    assert front.dominated(better, [fisher]) == "**no**"
