"""One-shot pruning quality on Fashion-MNIST: every criterion at one memory target, no fine-tuning.

    python tools/oneshot_fashion.py [--models resnet20,mobilenetv2_small] [--target-mem 0.7]
                                    [--calib 1024] [--seeds 3]

Trains (once, cached) the Fashion-MNIST models of `models/fashion.py`, prunes each with every
criterion to the same feature-map memory, and prints the test top-1 (10,000 images) of every
pruned model as a Markdown table. Calibration images come from the training split (seeded),
never from the test split. Random scores are averaged over `--seeds` seeds (mean ± std).
The last column re-estimates BatchNormalization statistics of each slice on the same
calibration images (`--recalibrate-bn`, AdaBN: no training, no weight changes).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from onnxprune.api import prune
from onnxprune.config import (
    CalibrationConfig,
    Criterion,
    PruneConfig,
    Target,
    TargetKind,
)
from onnxprune.models.fashion import cached_fashion_model, evaluate_onnx
from onnxprune.models.fashion_data import write_npz

ROWS = [("fisher", Criterion.FISHER, False), ("fisher, no labels", Criterion.FISHER, True),
        ("taylor", Criterion.TAYLOR, False), ("hrank", Criterion.HRANK, False),
        ("l1", Criterion.L1, False), ("l2", Criterion.L2, False),
        ("random", Criterion.RANDOM, False)]


def _top1(result) -> float:
    return evaluate_onnx(result.model)


def _cell(accs: list[float]) -> str:
    return (f"{100 * accs[0]:.2f}" if len(accs) == 1 else
            f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}")


def _row(model_path, label, criterion, no_labels, args, data, seeds) -> list[str]:
    accs: dict[bool, list[float]] = {False: [], True: []}
    result = None
    for seed in seeds:
        for bn in (False, True):
            config = PruneConfig(Target(TargetKind.MEM, args.target_mem), criterion=criterion,
                                 seed=seed, calibration=CalibrationConfig(
                                     batch_size=args.batch_size, max_batches=None,
                                     no_labels=no_labels, recalibrate_bn=bn))
            result = prune(str(model_path), config, data=data)
            accs[bn].append(_top1(result))
    ratio = result.plan.after.as_dict()
    before = result.plan.before.as_dict()
    return [label, f"{ratio['mem'] / before['mem']:.3f}", f"{ratio['macs'] / before['macs']:.3f}",
            f"{ratio['params'] / before['params']:.3f}", _cell(accs[False]), _cell(accs[True])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--target-mem", type=float, default=0.7)
    p.add_argument("--calib", type=int, default=1024, help="calibration images (train split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3, help="seeds for the random baseline")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "calib.npz")
        write_npz(data, "train", args.calib, seed=0)
        for name in args.models.split(","):
            path = cached_fashion_model(name)
            print(f"\n### {name} (original top-1 {100 * evaluate_onnx(path):.2f} %), "
                  f"--target-mem {args.target_mem}, {args.calib} calibration images\n")
            print("| criterion | M | MACs | params | top-1 % | top-1 %, BN re-estimated |\n"
                  "|---|---|---|---|---|---|")
            for label, criterion, no_labels in ROWS:
                seeds = range(args.seeds) if criterion is Criterion.RANDOM else [0]
                row = _row(path, label, criterion, no_labels, args, data, seeds)
                print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
