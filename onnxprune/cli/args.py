"""Argument helpers shared by the commands (prune, analyze, sweep, bench), and the one place a
PruneConfig is built from parsed arguments. main.py and sweep.py import this module, never
each other (main dispatches to sweep lazily). Data and fine-tuning options are in data.py.

Importing this module stays light (no onnxruntime): the latency backend is checked, and
onnxprune.latency imported, only when latency is measured or targeted.
"""
from __future__ import annotations

import argparse
import math

from onnxprune.bench.base import BackendKind
from onnxprune.cli.data import calibration, criterion, finetune, recovery
from onnxprune.config import (
    DEFAULT_MAX_PRUNE_SHARE,
    AttentionUnits,
    Criterion,
    LatencyConfig,
    Normalize,
    PruneConfig,
    Quantize,
    Target,
    TargetKind,
)
from onnxprune.errors import UserError

CRITERIA = [c.value for c in Criterion]


class Parser(argparse.ArgumentParser):
    """argparse's errors become a UserError: one line, exit 2, like every other user error."""

    def error(self, message):
        raise UserError(message)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction strictly between 0 and 1")
    return value


def share(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def add_shape(p: argparse.ArgumentParser, writes: bool = True) -> None:
    """--input-shape and --keep: what every command that analyses a model takes; with
    `writes` (the commands that write pruned models), --static-shape."""
    p.add_argument("--input-shape", metavar="SHAPES",
                   help="the shape costs and verification use: 1x3x224x224, or "
                        "name:1x3x640x640,other:1x4 (the output keeps the original's dynamic "
                        "dimensions)")
    if writes:
        p.add_argument("--static-shape", action="store_true",
                       help="write the pruned model at the analysis shape instead of keeping "
                            "the original's dynamic dimensions (for models whose graph ties "
                            "a dynamic dimension to one size)")
    p.add_argument("--keep", nargs="+", action="extend", default=[], metavar="NAME",
                   help="tensors or nodes whose channels must stay (a node keeps its output "
                        "channels); shown by analyze as kept by request")


def add_planning(p: argparse.ArgumentParser) -> None:
    """--round-to and --max-prune-share: how the planner may cut a layer group."""
    p.add_argument("--round-to", type=int, default=8, metavar="N",
                   help="keep each layer group a multiple of N channels where it was one "
                        "(default 8; 1 turns rounding off; the last group cut may leave it to "
                        "meet the target exactly)")
    p.add_argument("--max-prune-share", type=share, default=DEFAULT_MAX_PRUNE_SHARE,
                   metavar="F", help="a layer group loses at most this share of its channels "
                   f"(default {DEFAULT_MAX_PRUNE_SHARE:g}; 1: down to one --round-to unit)")
    p.add_argument("--attention", choices=[a.value for a in AttentionUnits],
                   default=AttentionUnits.HEADS.value,
                   help="attention units: whole heads (default), or channel j of every head "
                        "(q @ kT's channel j is removed by zeroing q's and k's producers: role "
                        "'mask' in the report)")


def input_shapes(args, model) -> dict[str, tuple[int, ...]]:
    """--input-shape parsed against the model's real inputs."""
    from onnxprune.model.graph import graph_inputs, parse_input_shapes

    return parse_input_shapes(args.input_shape, [i.name for i in graph_inputs(model)])


def add_bench(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("latency")
    b.add_argument("--bench", metavar="BACKEND", choices=[k.value for k in BackendKind],
                   help="measure latency before and after, interleaved, on ort-cpu, ort-cuda, "
                        "ort-trt or tensorrt; also the backend of --target-latency (ort-cpu)")
    b.add_argument("--bench-runs", type=int, default=20, metavar="N",
                   help="timed interleaved runs per model (default 20)")
    b.add_argument("--bench-threads", type=int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice; 1 is "
                        "steadier on a busy machine)")


def latency_config(args, needed: bool) -> LatencyConfig | None:
    """The LatencyConfig when latency is measured or targeted, its backend checked (an
    unavailable one is a one-line error before any work); else None."""
    if not (needed or args.bench):
        return None
    from onnxprune.latency.options import check

    for flag, value in (("--bench-runs", args.bench_runs), ("--bench-threads", args.bench_threads)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    config = LatencyConfig(backend=BackendKind(args.bench or BackendKind.ORT_CPU.value),
                           runs=args.bench_runs, table_runs=min(args.bench_runs, 10),
                           threads=args.bench_threads)
    check(config)
    return config


def normalize(args, kind: TargetKind) -> Normalize:
    """--normalize, else latency for a latency target and memory for the others."""
    if args.normalize is not None:
        return Normalize(args.normalize)
    return Normalize.LATENCY if kind is TargetKind.LATENCY else Normalize.MEM


def quantize(args) -> Quantize | None:
    """--quantize (prune only; sweep has none): calibrates on --data, so refused without it."""
    value = getattr(args, "quantize", None)
    if value is None:
        return None
    if not args.data:
        raise UserError(f"--quantize {value} calibrates on data: give --data PATH")
    return Quantize(value)


def prune_config(args, target: Target, shapes: dict[str, tuple[int, ...]],
                 latency: LatencyConfig | None = None) -> PruneConfig:
    """The PruneConfig of parsed prune or sweep arguments. A parser without the recovery
    options (data.add_finetune; sweep has none) means no refit and no fine-tuning."""
    if args.round_to < 1:
        raise UserError(f"--round-to {args.round_to}: must be >= 1")
    recovers = hasattr(args, "finetune_steps")
    return PruneConfig(target=target, criterion=criterion(args),  # checks in this order
                       normalize=normalize(args, target.kind), round_to=args.round_to,
                       max_prune_share=args.max_prune_share,
                       attention=AttentionUnits(args.attention),
                       seed=args.seed, input_shapes=shapes, calibration=calibration(args),
                       finetune=finetune(args) if recovers else None,
                       latency=latency, keep=tuple(args.keep), quantize=quantize(args),
                       static_shape=getattr(args, "static_shape", False),
                       **(recovery(args) if recovers else {"reconstruct": False}))
