"""Prune every zoo model to a memory target and print one Markdown table.

    python tools/bench_zoo.py [--target 0.5] [--runs 30] [--exporters torchscript,dynamo]
                              [--models resnet50,vgg11_bn] [--no-latency]
                              [--other deit_tiny_patch16_224,swin_tiny_patch4_window7_224]

`--other` benches models of models/other.py (timm: `pip install timm`) instead of the
torchvision zoo, by name, for each exporter.

Columns: prunable share of M; the reachable minimum of M (each group keeping 10 % and one
round-to unit); M / MACs / params after ÷ before; the prune pipeline time
(load + analysis + planning + surgery + verification, wall clock); onnxruntime CPU latency of
the original file and of the pruned model (batch 1, median of `--runs` interleaved runs, all
cores); the speed-up, the MACs ideal (before ÷ after MACs) and achieved ÷ ideal.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from onnxprune.api import prune  # noqa: E402
from onnxprune.bench.onnxruntime import latency_interleaved  # noqa: E402
from onnxprune.config import PruneConfig, Target, TargetKind  # noqa: E402
from onnxprune.models.other import build  # noqa: E402
from onnxprune.models.zoo import ZOO, Exporter, cached_model  # noqa: E402
from onnxprune.plan.planner import reachable_minimum  # noqa: E402

HEADER = ("| model | exporter | prunable M | reachable M | M | MACs | params | prune s | "
          "ORT before ms | ORT after ms | speed-up | MACs ideal | achieved/ideal |")


def prunable_share(result) -> float:
    analysis = result.analysis
    per_unit = np.bincount(analysis.channels.labels, weights=analysis.costs.per_node_mem(),
                           minlength=analysis.channels.n_components)
    prunable = sum(per_unit[g.units].sum() for g in analysis.groups if not g.blocked)
    return prunable / result.plan.before.mem


def reachable_share(result, config: PruneConfig) -> float:
    a = result.analysis
    floor = reachable_minimum(a.channels, a.groups, a.costs, config.round_to,
                              config.max_prune_share)
    return floor.mem / result.plan.before.mem


def bench_one(name: str, exporter: str, path, target: float, runs: int, latency: bool) -> str:
    config = PruneConfig(Target(TargetKind.MEM, target))
    tick = time.perf_counter()
    result = prune(str(path), config)
    seconds = time.perf_counter() - tick
    before, after = result.plan.before, result.plan.after
    ideal = before.macs / after.macs
    cells = [name, exporter, f"{prunable_share(result):.0%}",
             f"{reachable_share(result, config):.3f}", f"{after.mem / before.mem:.3f}",
             f"{after.macs / before.macs:.3f}", f"{after.params / before.params:.3f}",
             f"{seconds:.1f}"]
    if latency:
        slow, fast = latency_interleaved([path, result.model], runs=runs, warmup=5)
        speedup = slow.median_ms / fast.median_ms
        cells += [f"{slow.median_ms:.2f}", f"{fast.median_ms:.2f}", f"{speedup:.2f}x",
                  f"{ideal:.2f}x", f"{speedup / ideal:.2f}"]
    else:
        cells += ["", "", "", f"{ideal:.2f}x", ""]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--exporters", default=",".join(e.value for e in Exporter))
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--other", help="models/other.py names (timm) instead of the zoo")
    args = parser.parse_args()
    print(f"--target-mem {args.target}, criterion l1, round-to 8; latency: onnxruntime CPU, "
          f"batch 1, median of {args.runs} interleaved runs")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for name in (args.other or args.models).split(","):
        for exporter in args.exporters.split(","):
            path = (build(f"{name}-{exporter}") if args.other
                    else cached_model(name, Exporter(exporter)))
            print(bench_one(name, exporter, path, args.target, args.runs, not args.no_latency),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
