"""Ablations of channel rounding and score normalisation, with onnxruntime CPU latency.

    python tools/bench_ablation.py [--models resnet50,mobilenet_v2,resnet18] [--target-mem 0.5]
                                   [--runs 50] [--warmup 5] [--threads N]

Per zoo model (TorchScript export, random weights, criterion l1):
  (a) --target-mem T with --round-to 1, 8 and 32 (normalised by memory);
  (b) --normalize mem | flops | none at *equal MACs*: each pruned to Target(flops, f), where f
      is the MACs fraction the memory-normalised round-to-8 plan at --target-mem T reached,
      so the three rows differ only in which channels were chosen.
The original and all variants are timed interleaved in one run (median of --runs; pruned models
live in a temp dir). Printed as one Markdown table; nothing is written to the repository.
ideal = original MACs / pruned MACs; achieved/ideal = speed-up / ideal.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from onnxprune.api import prune
from onnxprune.bench.onnxruntime import latency_interleaved
from onnxprune.config import Normalize, PruneConfig, Target, TargetKind
from onnxprune.errors import UserError
from onnxprune.model.io import save_atomic
from onnxprune.models.zoo import Exporter, cached_model

HEADER = "| model | variant | M | MACs | latency ms | speed-up | achieved/ideal |"
DEFAULT_MODELS = "resnet50,mobilenet_v2,resnet18"


@dataclass
class Variant:
    name: str
    path: Path | None = None      # None: the original, or a prune that failed
    mem: float = 1.0              # after / before
    macs: float = 1.0
    error: str | None = None


def _prune(source: Path, config: PruneConfig, name: str, folder: Path) -> Variant:
    try:
        result = prune(str(source), config)
    except UserError as exc:
        return Variant(name, error=str(exc))
    before, after = result.plan.before, result.plan.after
    path = folder / f"{source.stem}-{len(list(folder.iterdir()))}.onnx"
    save_atomic(result.model, path)
    return Variant(name, path, after.mem / before.mem, after.macs / before.macs)


def variants(source: Path, target: float, folder: Path) -> list[Variant]:
    mem_target = Target(TargetKind.MEM, target)
    rows = [_prune(source, PruneConfig(mem_target, round_to=r), f"mem {target:g}, round-to {r}",
                   folder) for r in (1, 8, 32)]
    reference = rows[1]  # memory-normalised, round-to 8: fixes the MACs of the (b) rows
    if reference.path is None:
        return rows
    flops_target = Target(TargetKind.FLOPS, reference.macs)
    for norm in Normalize:
        rows.append(_prune(source, PruneConfig(flops_target, normalize=norm),
                           f"MACs {reference.macs:.3f}, normalize {norm.value}", folder))
    return rows


def table_rows(model: str, original: Path, rows: list[Variant], runs: int, warmup: int,
               threads: int | None) -> list[str]:
    timed = [v for v in rows if v.path is not None]
    stats = latency_interleaved([original] + [v.path for v in timed], runs=runs, warmup=warmup,
                                threads=threads)
    base = stats[0].median_ms
    lines = [f"| {model} | original | 1.000 | 1.000 | {base:.2f} | 1.00x | |"]
    latency = {id(v): s.median_ms for v, s in zip(timed, stats[1:])}
    for v in rows:
        if v.path is None:
            lines.append(f"| {model} | {v.name} | | | | | failed: {v.error} |")
            continue
        ms = latency[id(v)]
        speedup, ideal = base / ms, 1 / v.macs
        lines.append(f"| {model} | {v.name} | {v.mem:.3f} | {v.macs:.3f} | {ms:.2f} | "
                     f"{speedup:.2f}x | {speedup / ideal:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--target-mem", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"criterion l1, TorchScript exports, onnxruntime CPU batch 1, median of {args.runs} "
          f"interleaved runs (threads: {args.threads or 'onnxruntime default'}); M and MACs are "
          f"after / before")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    with tempfile.TemporaryDirectory(prefix="onnxprune-ablation-") as tmp:
        for model in args.models.split(","):
            folder = Path(tmp) / model
            folder.mkdir()
            original = cached_model(model, Exporter.TORCHSCRIPT)
            rows = variants(original, args.target_mem, folder)
            for line in table_rows(model, original, rows, args.runs, args.warmup, args.threads):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
