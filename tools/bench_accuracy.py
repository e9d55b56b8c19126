"""Accuracy after pruning + fine-tuning on Fashion-MNIST: onnxprune's criteria and Torch-Pruning.

    python tools/bench_accuracy.py [--models resnet20,mobilenetv2_small] [--targets 0.5,0.3]
                                   [--seeds 0,1,2] [--steps 300] [--batch 64] [--lr 0.01]

Every row prunes the same trained model (models/fashion.py) to the same feature-map memory and
is then fine-tuned with the same budget (`--steps` steps of `--batch` labelled training images,
SGD + Nesterov, cosine lr, by `calibrate.finetune`), and evaluated on the 10,000 test images.
- onnxprune: fisher (oneshot, gfp, and oneshot at --round-to 1, channel by channel like
  Torch-Pruning), hrank, taylor, l1, random; scoring on `--calib` training
  images; gfp removes `--gfp-count` chunks every `--gfp-every` steps (by default as many as
  reach the target in half the budget, judged by how many units one-shot fisher removed).
- Torch-Pruning (`torch-pruning` package): GroupTaylorImportance and GroupMagnitudeImportance
  on the original PyTorch model, global pruning (channel by channel), the ratio bisected until
  our cost model's M of its exported ONNX meets the target; the classifier is not pruned. Its
  ONNX is fine-tuned by the same code as ours.
Our rows use `--round-to 8` where that can reach the target, else the largest of 4, 2, 1 that
can (ResNet-20 cannot reach M 0.3 keeping 8 channels per layer); the table header says which.
Columns: top-1 (mean ± std over seeds), M, MACs, params (ratios from our cost model) and
onnxruntime CPU latency (median of interleaved runs, first seed's models, batch 1).

Every run appends one JSON line to `--workdir`/results.jsonl and keeps its model there, so an
interrupted benchmark resumes where it stopped (a run is keyed by model, target, row, seed,
steps, batch and lr) and the tables can be re-printed from what is stored.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from calibrate.data import open_data
from calibrate.distributed import world
from calibrate.recover import finetune_model
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
from onnxprune.model.graph import input_specs
from onnxprune.model.io import cache_dir
from onnxprune.models.fashion import (
    cached_fashion_model,
    evaluate_onnx,
    export_onnx,
    load_torch_model,
)
from onnxprune.models.fashion_data import load_fashion, to_input
from onnxprune.plan.planner import reachable_minimum


@dataclass(frozen=True)
class Ours:
    label: str
    criterion: Criterion
    schedule: Schedule = Schedule.ONESHOT
    round_to: int | None = None  # None: the table's --round-to


OURS = [Ours("onnxprune fisher", Criterion.FISHER),
        Ours("onnxprune fisher gfp", Criterion.FISHER, Schedule.GFP),
        Ours("onnxprune fisher, round-to 1", Criterion.FISHER, round_to=1),
        Ours("onnxprune hrank", Criterion.HRANK),
        Ours("onnxprune taylor", Criterion.TAYLOR),
        Ours("onnxprune l1", Criterion.L1),
        Ours("onnxprune random", Criterion.RANDOM)]
THEIRS = [("Torch-Pruning GroupTaylor", "taylor"), ("Torch-Pruning GroupMagnitude", "magnitude")]


def _finetune_config(args, schedule=Schedule.ONESHOT, prune_count=1) -> FinetuneConfig:
    return FinetuneConfig(steps=args.steps, batch_size=args.batch, lr=args.lr,
                          schedule=schedule, prune_every=args.gfp_every,
                          prune_count=prune_count)


def _ours(row: Ours, target, seed, args, data, prune_count=1):
    """(fine-tuned model, record): units removed, and the GFP schedule's own record."""
    calibration = CalibrationConfig(batch_size=args.batch, max_batches=args.calib // args.batch)
    config = PruneConfig(Target(TargetKind.MEM, target), criterion=row.criterion, seed=seed,
                         round_to=row.round_to or args.round_to, calibration=calibration,
                         finetune=_finetune_config(args, row.schedule, prune_count),
                         holdout=0, reconstruct=False)
    result = prune(str(args.base_path), config, data=data)
    return result.model, {"units_removed": int(result.plan.removed.sum()),
                          "gfp": result.recovery.gfp}


def _gfp_count(args, oneshot_units: int) -> int:
    """Chunks per GFP removal so that the target is reached in the half budget pruning gets,
    judged by one-shot Fisher's unit count (chunks of `round_to` units where widths allow)."""
    if args.gfp_count:
        return args.gfp_count
    removals = max(1, (args.steps // 2) // args.gfp_every)
    return max(1, math.ceil(oneshot_units / args.round_to / removals))


def tp_prune(net, kind: str, ratio: float, calib: tuple[np.ndarray, np.ndarray],
             round_to: int | None = None):
    """A pruned copy of `net`: Torch-Pruning's global MetaPruner, the classifier kept."""
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    importance = (tp.importance.GroupTaylorImportance() if kind == "taylor"
                  else tp.importance.GroupMagnitudeImportance(p=2))
    classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(net, torch.zeros(1, 1, 28, 28), importance=importance,
                                  pruning_ratio=ratio, global_pruning=True, round_to=round_to,
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
        path = export_onnx(tp_prune(net, kind, ratio, calib), tmp / f"tp-{kind}.onnx")
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
    return tuned, {"tp_ratio": high}


class Store:
    """results.jsonl plus one ONNX per run in `workdir`; finished runs are not run again."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "results.jsonl"
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.runs = {r["key"]: r for r in map(json.loads, lines)}

    @staticmethod
    def key(args, target, label, seed, round_to=None) -> str:
        return (f"{args.model_name}|{target}|{label}|{seed}|rt={round_to or args.round_to}|"
                f"steps={args.steps}|batch={args.batch}|lr={args.lr}")

    def _reload(self) -> None:
        """Runs other processes finished since (parallel workers share one store)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.runs.update((r["key"], r) for r in map(json.loads, lines))

    def has(self, key: str) -> bool:
        """A finished run of `key` is in the store, its file included."""
        if key not in self.runs:
            self._reload()
        return key in self.runs and (self.dir / self.runs[key]["file"]).exists()

    def run(self, key: str, make) -> dict:
        if key not in self.runs:
            self._reload()
        if key in self.runs and (self.dir / self.runs[key]["file"]).exists():
            return self.runs[key]
        start = time.perf_counter()
        model, record = make()
        name = "".join(c if c.isalnum() else "-" for c in key) + ".onnx"
        tmp = self.dir / (name + ".tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, self.dir / name)
        record.update(key=key, file=name, top1=evaluate_onnx(model),
                      seconds=round(time.perf_counter() - start, 1))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.runs[key] = record
        print(f"  {key}: top-1 {100 * record['top1']:.2f} % "
              f"({record['seconds']:.0f} s)", flush=True)
        return record


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _table(name, target, rows, base_path, base_costs, args, store: Store) -> None:
    firsts = [str(store.dir / records[0]["file"]) for _, records in rows]
    stats = latency_interleaved([str(base_path)] + firsts, runs=args.runs, threads=1)
    print(f"\n### {name}, --target-mem {target} --round-to {args.round_to}, fine-tuned "
          f"{args.steps} steps × {args.batch}\n")
    print("| method | top-1 % | M | MACs | params | latency ms (speed-up) |\n"
          "|---|---|---|---|---|---|")
    base_ms = stats[0].median_ms
    print(f"| original | {_cell([args.base_acc])} | 1 | 1 | 1 | {base_ms:.3f} |")
    for (label, records), first, lat in zip(rows, firsts, stats[1:]):
        c = analyze(first).costs.costs()
        print(f"| {label} | {_cell([r['top1'] for r in records])} | "
              f"{c.mem / base_costs.mem:.3f} | {c.macs / base_costs.macs:.3f} | "
              f"{c.params / base_costs.params:.3f} | "
              f"{lat.median_ms:.3f} ({base_ms / lat.median_ms:.2f}×) |", flush=True)


def _rows(target, args, store: Store, data, calib, base_mem, tmp: Path) -> list:
    wanted = set(args.only.split(",")) if args.only else None
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for row in OURS:
        if wanted and row.label not in wanted:
            continue
        records = []
        for seed in seeds:
            count = 1
            if row.schedule is Schedule.GFP:
                oneshot = store.run(store.key(args, target, OURS[0].label, seed),
                                    lambda s=seed: _ours(OURS[0], target, s, args, data))
                count = _gfp_count(args, oneshot["units_removed"])
            records.append(store.run(
                store.key(args, target, row.label, seed, row.round_to),
                lambda s=seed, c=count, r=row: _ours(r, target, s, args, data, c)))
        rows.append((row.label, records))
    for label, kind in THEIRS:
        if wanted and label not in wanted:
            continue
        rows.append((label, [store.run(store.key(args, target, label, seed),
                                       lambda s=seed, k=kind: _theirs(k, target, s, args, data,
                                                                      calib, base_mem, tmp))
                             for seed in seeds]))
    return rows


def _round_to(base, target: float) -> int:
    """8 (the CLI default) where it can reach the target, else the largest of 4, 2, 1 that can:
    every row of a table then prunes with the same channel rounding."""
    for round_to in (8, 4, 2, 1):
        floor = reachable_minimum(base.channels, base.groups, base.costs, round_to)
        if floor.mem <= target * base.costs.costs().mem:
            return round_to
    raise SystemExit(f"--target-mem {target} is below what can be removed")


def _default_workdir() -> Path:
    return cache_dir("bench-accuracy")


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
    p.add_argument("--gfp-count", type=int, default=0,
                   help="units per GFP removal (0: enough to reach the target in half the budget)")
    p.add_argument("--runs", type=int, default=50, help="latency runs per model")
    p.add_argument("--only", default="", help="comma-separated method labels to run")
    p.add_argument("--workdir", type=Path, default=_default_workdir(),
                   help="results.jsonl and the models; finished runs are reused")
    args = p.parse_args()
    store = Store(args.workdir)
    images, labels = load_fashion("train")
    pick = np.random.default_rng(0).permutation(len(labels))[:args.train]
    x, y = to_input(images[pick]), labels[pick]
    calib = (x[:256], y[:256])
    for name in args.models.split(","):
        args.model_name = name
        args.base_path = cached_fashion_model(name)
        base = analyze(str(args.base_path))
        args.base_acc = evaluate_onnx(args.base_path)
        data = open_data([({"input": x}, y)], input_specs(base.model))
        for target in (float(t) for t in args.targets.split(",")):
            args.round_to = _round_to(base, target)
            with tempfile.TemporaryDirectory() as tmp:
                rows = _rows(target, args, store, data, calib, base.costs.costs().mem, Path(tmp))
            _table(name, target, rows, args.base_path, base.costs.costs(), args, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
