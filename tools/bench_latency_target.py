"""--target-latency on onnxruntime CPU: predicted vs measured, and --target-mem at equal MACs.

    python tools/bench_latency_target.py [--models resnet18,mobilenet_v2,resnet50]
                                         [--target 0.6] [--runs 30] [--threads N] [--retries 2]

Per zoo model (TorchScript export, random weights, criterion l1, round-to 8):
  latency: `--target-latency T` on ort-cpu (per-layer latency table, HALP normaliser, re-planned
           when the measured ratio misses T): its predicted ratio, the ratio its own loop
           measured, and the predicted fractions it planned at;
  mem:     `--target-mem f` (normalised by memory), f found by bisection on the planner so that
           the plan's MACs match the latency row's.
Then the original and both pruned models are timed interleaved in one run (median of --runs):
the "final run" column. Prints one Markdown table; writes nothing to the repository (latency
tables are cached in ~/.cache/onnxprune/latency, or $ONNXPRUNE_CACHE/latency).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from onnxprune.api import analyze, prune
from onnxprune.config import Criterion, Normalize, PruneConfig, Target, TargetKind
from onnxprune.latency import LatencyConfig
from onnxprune.latency.measure import measure, prune_to_latency
from onnxprune.models.zoo import Exporter, cached_model
from onnxprune.plan.importance import data_free_scores
from onnxprune.plan.planner import TargetUnreachable, plan_pruning

HEADER = ("| model | variant | M | MACs | predicted latency | measured (own loop) | "
          "measured (final run) | speed-up | plans | target met |")
DEFAULT_MODELS = "resnet18,mobilenet_v2,resnet50"


@dataclass
class Row:
    name: str
    result: object
    predicted: float | None = None
    loop: float | None = None
    plans: str = ""

    def ratio(self, field: str) -> float:
        before, after = self.result.plan.before, self.result.plan.after
        return getattr(after, field) / getattr(before, field)


def mem_fraction_for_macs(path: Path, macs: float, round_to: int = 8) -> float:
    """The --target-mem fraction whose plan (l1, normalised by memory) reaches `macs`."""
    analysis = analyze(path)
    scores = data_free_scores(analysis.channels, Criterion.L1, 0)
    before = analysis.costs.costs().macs

    def macs_at(fraction: float) -> float:
        plan = plan_pruning(analysis.channels, analysis.groups, analysis.costs, scores,
                            Target(TargetKind.MEM, fraction), Normalize.MEM, round_to)
        return plan.after.macs / before

    low, high = 0.0, 1.0
    for _ in range(20):
        mid = (low + high) / 2
        try:
            low, high = (mid, high) if macs_at(mid) <= macs else (low, mid)
        except TargetUnreachable:
            low = mid
    return low


def rows_for(name: str, target: float, latency: LatencyConfig) -> list[Row]:
    path = cached_model(name, Exporter.TORCHSCRIPT)
    config = PruneConfig(Target(TargetKind.LATENCY, target), normalize=Normalize.LATENCY,
                         latency=latency)
    result, extra = prune_to_latency(str(path), config)
    t = extra["latency_target"]
    lat = Row(f"latency {target:g}", result, t["predicted"]["ratio"], t["measured"]["ratio"],
              ", ".join(f"{a['planned']:.3f}" for a in t["attempts"]))
    fraction = mem_fraction_for_macs(path, lat.ratio("macs"))
    mem = Row(f"mem {fraction:.3f} (equal MACs)",
              prune(str(path), PruneConfig(Target(TargetKind.MEM, fraction))))
    return [lat, mem]


def table_lines(name: str, rows: list[Row], target: float, latency: LatencyConfig) -> list[str]:
    stats = measure([rows[0].result.analysis.model] + [r.result.model for r in rows], latency)
    base = stats[0].median_ms
    lines = [f"| {name} | original ({base:.2f} ms) | 1.000 | 1.000 | | | 1.000 | 1.00x | | |"]
    for row, s in zip(rows, stats[1:]):
        final = s.median_ms / base
        predicted = f"{row.predicted:.3f}" if row.predicted is not None else ""
        loop = f"{row.loop:.3f}" if row.loop is not None else ""
        met = ("yes" if final <= target else "no") if row.predicted is not None else ""
        lines.append(f"| {name} | {row.name} | {row.ratio('mem'):.3f} | {row.ratio('macs'):.3f} "
                     f"| {predicted} | {loop} | {final:.3f} | {base / s.median_ms:.2f}x "
                     f"| {row.plans} | {met} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--retries", type=int, default=2)
    args = parser.parse_args()
    latency = LatencyConfig(runs=args.runs, threads=args.threads, retries=args.retries)
    print(f"criterion l1, round-to 8, TorchScript exports, onnxruntime CPU batch 1 (threads: "
          f"{args.threads or 'onnxruntime default'}), median of {args.runs} interleaved runs; "
          f"M, MACs and latency are after / before")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for name in args.models.split(","):
        for line in table_lines(name, rows_for(name, args.target, latency), args.target, latency):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
