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


def test_seeds_per_row_and_stored_only(front):
    """Fine-tuning draws batches by the seed, so every method runs every seed then; with
    --stored-only a row takes the seeds the store has and nothing new is pruned."""
    from pathlib import Path as P

    class FakeStore:
        def __init__(self, keys):
            self.keys, self.ran = keys, []

        def has(self, key):
            return key in self.keys

        def run(self, key, make):
            self.ran.append(key)
            return {"top1": 0.5, "key": key}

    def args(steps, stored_only, methods=("fisher-r4", "tp-magnitude-1")):
        return front._parse(["--targets", "0.5", "--seeds", "0,1", "--methods",
                             ",".join(methods), "--steps", str(steps)]
                            + (["--stored-only"] if stored_only else []))

    for steps, tp_seeds in ((0, 1), (300, 2)):
        case = front.Case("resnet20", "folded", P("m.onnx"), P("t.npz"), steps)
        store = FakeStore(set())
        rows = front._rows(case, store, args(steps, False))
        assert [len(r["top1"]) for r in rows] == [2, tp_seeds]
    case = front.Case("resnet20", "folded", P("m.onnx"), P("t.npz"), 0)
    store = FakeStore({front._key(case, "fisher-r4", 0.5, 1)})
    rows = front._rows(case, store, args(0, True))
    assert [(r["method"], len(r["top1"])) for r in rows] == [("fisher-r4", 1)]
    assert store.ran == [front._key(case, "fisher-r4", 0.5, 1)]
