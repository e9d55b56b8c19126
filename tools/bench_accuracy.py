"""Accuracy after pruning + fine-tuning on Fashion-MNIST: onnxprune's criteria and Torch-Pruning.

    python tools/bench_accuracy.py [--models resnet20,mobilenetv2_small] [--targets 0.5,0.3]
                                   [--seeds 0,1,2] [--steps 300] [--batch 64] [--lr 0.01]

Every row prunes the same trained model (models/fashion.py) to the same feature-map memory and
is then fine-tuned with the same budget (`--steps` steps of `--batch` labelled training images,
SGD + Nesterov, cosine lr, by `calibrate.finetune`), and evaluated on the 10,000 test images.
- onnxprune: fisher (oneshot and gfp), hrank, taylor, l1, random; scoring on `--calib` training
  images; gfp removes `--gfp-count` units every `--gfp-every` steps, so that it reaches the
  target within the budget.
- Torch-Pruning (`torch-pruning` package): GroupTaylorImportance and GroupMagnitudeImportance
  on the original PyTorch model, global pruning, the ratio bisected until our cost model's M of
  its exported ONNX meets the target; the classifier is not pruned. Its ONNX is fine-tuned by
  the same code as ours.
Columns: top-1 (mean ± std over seeds), M, MACs, params (ratios from our cost model) and
onnxruntime CPU latency (median of interleaved runs, first seed's models, batch 1).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import onnx
import torch

from calibrate.data import input_specs, open_data
from calibrate.distributed import world
from calibrate.recover import finetune_model
from models.fashion import (
    cached_fashion_model,
    evaluate_onnx,
    export_onnx,
    load_torch_model,
)
from models.fashion_data import load_fashion, to_input
from onnxprune.api import analyze, prune
from onnxprune.bench.onnxruntime import latency_interleaved
from onnxprune.config import (
    CalibrationConfig,
    Criterion,
    FinetuneConfig,
    PruneConfig,
    Schedule,
    Target,
    TargetKind,
)

OURS = [("onnxprune fisher", Criterion.FISHER, Schedule.ONESHOT),
        ("onnxprune fisher gfp", Criterion.FISHER, Schedule.GFP),
        ("onnxprune hrank", Criterion.HRANK, Schedule.ONESHOT),
        ("onnxprune taylor", Criterion.TAYLOR, Schedule.ONESHOT),
        ("onnxprune l1", Criterion.L1, Schedule.ONESHOT),
        ("onnxprune random", Criterion.RANDOM, Schedule.ONESHOT)]
THEIRS = [("Torch-Pruning GroupTaylor", "taylor"), ("Torch-Pruning GroupMagnitude", "magnitude")]


def _finetune_config(args, schedule=Schedule.ONESHOT) -> FinetuneConfig:
    return FinetuneConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, holdout=0,
                          schedule=schedule, prune_every=args.gfp_every,
                          prune_count=args.gfp_count)


def _ours(path, target, criterion, schedule, seed, args, data):
    config = PruneConfig(Target(TargetKind.MEM, target), criterion=criterion, seed=seed,
                         calibration=CalibrationConfig(batch_size=args.batch,
                                                       max_batches=args.calib // args.batch),
                         finetune=_finetune_config(args, schedule))
    return prune(str(path), config, data=data).model


def _tp_prune(net, kind: str, ratio: float, calib: tuple[np.ndarray, np.ndarray]):
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    importance = (tp.importance.GroupTaylorImportance() if kind == "taylor"
                  else tp.importance.GroupMagnitudeImportance(p=2))
    classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(net, torch.zeros(1, 1, 28, 28), importance=importance,
                                  pruning_ratio=ratio, global_pruning=True,
                                  max_pruning_ratio=0.9, ignored_layers=[classifier])
    if kind == "taylor":
        net.zero_grad()
        x, y = (torch.from_numpy(a) for a in calib)
        torch.nn.functional.cross_entropy(net(x), y).backward()
    pruner.step()
    return net


def _mem(model: onnx.ModelProto) -> float:
    return analyze(model).costs.costs().mem


def _theirs(kind, target, seed, args, data, calib, base_mem, tmp: Path):
    """Bisect Torch-Pruning's global ratio until M <= target·M0, then fine-tune its ONNX."""
    net = load_torch_model(args.model_name)
    torch.manual_seed(seed)
    low, high, best = 0.0, 0.95, None
    for _ in range(8):
        ratio = (low + high) / 2
        path = export_onnx(_tp_prune(net, kind, ratio, calib), tmp / f"tp-{kind}.onnx")
        model = onnx.load(str(path))
        if _mem(model) <= target * base_mem:
            best, high = model, ratio
        else:
            low = ratio
    if best is None:
        raise SystemExit(f"Torch-Pruning {kind} cannot reach M {target}")
    normalised = analyze(best).model
    config = PruneConfig(Target(TargetKind.MEM, target), seed=seed,
                         finetune=_finetune_config(args))
    tuned, _ = finetune_model(normalised, normalised, data, config, world("cpu"), args.steps,
                              False)
    return tuned


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _table(name, target, rows, base_path, base_costs, args) -> None:
    firsts = [models[0] for _, models, _ in rows]
    stats = latency_interleaved([str(base_path)] + firsts, runs=args.runs, threads=1)
    print(f"\n### {name}, --target-mem {target}, fine-tuned {args.steps} steps × {args.batch}\n")
    print("| method | top-1 % | M | MACs | params | latency ms (speed-up) |\n"
          "|---|---|---|---|---|---|")
    base_ms = stats[0].median_ms
    print(f"| original | {_cell([args.base_acc])} | 1 | 1 | 1 | {base_ms:.3f} |")
    for (label, models, accs), lat in zip(rows, stats[1:]):
        c = analyze(models[0]).costs.costs()
        print(f"| {label} | {_cell(accs)} | {c.mem / base_costs.mem:.3f} | "
              f"{c.macs / base_costs.macs:.3f} | {c.params / base_costs.params:.3f} | "
              f"{lat.median_ms:.3f} ({base_ms / lat.median_ms:.2f}×) |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--targets", default="0.5,0.3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--train", type=int, default=20000, help="training images for fine-tuning")
    p.add_argument("--calib", type=int, default=1024, help="images for scoring")
    p.add_argument("--gfp-every", type=int, default=5)
    p.add_argument("--gfp-count", type=int, default=4)
    p.add_argument("--runs", type=int, default=50, help="latency runs per model")
    p.add_argument("--only", default="", help="comma-separated method labels to run")
    args = p.parse_args()
    images, labels = load_fashion("train")
    pick = np.random.default_rng(0).permutation(len(labels))[:args.train]
    x, y = to_input(images[pick]), labels[pick]
    calib = (x[:256], y[:256])
    for name in args.models.split(","):
        args.model_name = name
        base_path = cached_fashion_model(name)
        base = analyze(str(base_path))
        args.base_acc = evaluate_onnx(base_path)
        data = open_data([({"input": x}, y)], input_specs(base.model))
        for target in (float(t) for t in args.targets.split(",")):
            rows = []
            with tempfile.TemporaryDirectory() as tmp:
                for label, criterion, schedule in OURS:
                    if args.only and label not in args.only.split(","):
                        continue
                    models = [_ours(base_path, target, criterion, schedule, int(s), args, data)
                              for s in args.seeds.split(",")]
                    rows.append((label, models, [evaluate_onnx(m) for m in models]))
                for label, kind in THEIRS:
                    if args.only and label not in args.only.split(","):
                        continue
                    models = [_theirs(kind, target, int(s), args, data, calib,
                                      base.costs.costs().mem, Path(tmp))
                              for s in args.seeds.split(",")]
                    rows.append((label, models, [evaluate_onnx(m) for m in models]))
                _table(name, target, rows, base_path, base.costs.costs(), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
