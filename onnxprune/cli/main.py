"""The `onnxprune` command.

    onnxprune MODEL --target-mem 0.5 [-o OUT] [--criterion l1] [--report r.json] ...
    onnxprune analyze MODEL [--input-shape 1x3x224x224]
    onnxprune bench A.onnx [B.onnx ...] [--backend ort-cpu] [--batch 1,8] [--json]
    onnxprune sweep MODEL --targets 0.9,0.7,0.5 [--target-kind mem] [--out DIR]

A user error prints one line on stderr and exits 2; nothing is written. An internal failure
(including a pruned model that fails the oracle) exits 1, also without writing anything.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from onnxprune.cli.args import (
    CRITERIA,
    Parser,
    add_bench,
    add_planning,
    add_shape,
    fraction,
    input_shapes,
    latency_config,
    prune_config,
)
from onnxprune.cli.data import add_data, add_finetune
from onnxprune.config import Normalize, Quantize, Target, TargetKind
from onnxprune.errors import UserError, VerificationError


def prune_parser() -> argparse.ArgumentParser:
    p = Parser(prog="onnxprune", description="Prune coupled channels of an ONNX CNN to a "
               "target and prove the result equals the original minus those channels. "
               "`onnxprune analyze MODEL` shows the channel groups.")
    p.add_argument("model", help="input .onnx (never modified)")
    targets = p.add_mutually_exclusive_group(required=True)
    what = {TargetKind.MEM: "feature-map memory M (elements of every Conv / Gemm / MatMul "
                            "output, batch 1)",
            TargetKind.FLOPS: "multiply-accumulates", TargetKind.PARAMS: "parameters",
            TargetKind.LATENCY: "the latency measured on --bench BACKEND (default ort-cpu)"}
    for kind in TargetKind:
        targets.add_argument(f"--target-{kind.value}", type=fraction, metavar="F",
                             help=f"keep {what[kind]} <= F x the original's, 0 < F < 1")
    p.add_argument("-o", "--output", help="output .onnx (default: <model>.pruned.onnx)")
    p.add_argument("--criterion", choices=CRITERIA, default=None,
                   help="channel importance: fisher, hrank, taylor (need --data) or the "
                        "data-free l1, l2, random (default: fisher with --data, else l1)")
    p.add_argument("--normalize", choices=[n.value for n in Normalize], default=None,
                   help="divide each unit's importance by the memory (default), MACs or "
                        "latency (default with --target-latency) it removes, or by nothing")
    add_planning(p)
    add_shape(p)
    p.add_argument("--report", metavar="JSON", help="write a machine-readable record")
    p.add_argument("--seed", type=int, default=0, help="seed for random scores and inputs")
    p.add_argument("--plots", metavar="DIR", help="write groups.png, costs.png and summary.md "
                   "to DIR (created if missing; needs matplotlib)")
    add_bench(p)
    add_data(p)
    add_finetune(p)
    p.add_argument("--quantize", choices=[q.value for q in Quantize], default=None,
                   help="also write <output stem>.int8.onnx with onnxruntime's static quantizer "
                        "(QDQ, per-channel weights) calibrated on --data; the report gives its "
                        "fidelity on held-out samples and the ORT-CPU latency of all three")
    return p


def _plots_dir(args) -> Path | None:
    if not args.plots:
        return None
    folder = Path(args.plots)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: --plots needs a folder")
    if not folder.parent.resolve().is_dir():
        raise UserError(f"{folder.parent}: plots folder's parent does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plots needs matplotlib: pip install matplotlib")
    return folder


def analyze_parser() -> argparse.ArgumentParser:
    p = Parser(prog="onnxprune analyze", description="Show layer groups, costs, and what "
               "each target can reach.")
    p.add_argument("model")
    add_shape(p, writes=False)
    add_planning(p)
    return p


def _output_path(args) -> Path:
    source = Path(args.model)
    out = Path(args.output) if args.output else source.with_name(source.stem + ".pruned.onnx")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise UserError(f"{out}: output path is the input path; the input is never overwritten")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    if out.is_dir():
        raise UserError(f"{out}: is a directory")
    return out


def _target(args) -> Target:
    """The one --target-<kind> given (argparse requires exactly one)."""
    kind = next(k for k in TargetKind if getattr(args, f"target_{k.value}") is not None)
    return Target(kind, getattr(args, f"target_{kind.value}"))


def run_prune(argv: list[str]) -> int:
    from onnxprune.bench import int8
    from onnxprune.latency.measure import prune_measured, summary_lines
    from onnxprune.model.external import has_lazy
    from onnxprune.model.io import load, save_atomic, write_json_atomic
    from onnxprune.report.record import prune_record, prune_summary

    args = prune_parser().parse_args(argv)
    output = _output_path(args)
    if args.report and not Path(args.report).resolve().parent.is_dir():
        raise UserError(f"{args.report}: report folder does not exist")
    plots = _plots_dir(args)
    latency = latency_config(args, args.target_latency is not None
                             or args.normalize == "latency")
    model = load(args.model)
    config = prune_config(args, _target(args), input_shapes(args, model), latency)
    if config.quantize is not None:  # INT8 copy of the written file (onnxprune.bench.int8)
        int8.check_target(output, args.model)
    if args.data and not os.path.exists(args.data):
        raise UserError(f"{args.data}: no such file or folder")
    result, extra = prune_measured(model, config, data=args.data, bench=bool(args.bench))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 writes
        return 0
    for warning in (result.recovery.warnings if result.recovery is not None else []):
        print(f"onnxprune: warning: {warning}", file=sys.stderr)
    save_atomic(result.model, output, external=has_lazy(model))
    if config.quantize is not None:
        extra["int8"] = int8.int8_record(result, config, args.data, output, args.holdout,
                                         runs=args.bench_runs, threads=args.bench_threads)
    record = {**prune_record(result, config, args.model, str(output)), **extra}
    if args.report:
        write_json_atomic(record, args.report)
    if plots is not None:
        from onnxprune.report.plots import write_all

        plots.mkdir(exist_ok=True)
        write_all(record, plots)
    print("\n".join(filter(None, [prune_summary(result, str(output)), summary_lines(extra),
                                   int8.summary_lines(extra.get("int8"))])))
    return 0


def run_analyze(argv: list[str]) -> int:
    from onnxprune.api import analyze
    from onnxprune.config import AttentionUnits
    from onnxprune.model.io import load
    from onnxprune.plan.planner import reachable_minimum
    from onnxprune.report.record import analysis_text

    args = analyze_parser().parse_args(argv)
    model = load(args.model)
    analysis = analyze(model, input_shapes(args, model), args.keep,
                       AttentionUnits(args.attention))
    minimum = reachable_minimum(analysis.channels, analysis.groups, analysis.costs, args.round_to,
                                args.max_prune_share)
    print(analysis_text(analysis, minimum, (args.round_to, args.max_prune_share)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "analyze":
            return run_analyze(argv[1:])
        if argv and argv[0] == "bench":
            from onnxprune.bench.cli import run_bench

            return run_bench(argv[1:])
        if argv and argv[0] == "sweep":
            from onnxprune.cli.sweep import run_sweep

            return run_sweep(argv[1:])
        return run_prune(argv[1:] if argv and argv[0] == "prune" else argv)
    except UserError as exc:
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        print(f"onnxprune: internal error, nothing written: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `onnxprune analyze m.onnx | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("onnxprune: interrupted, nothing written", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user, unless asked for
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        print(f"onnxprune: internal error, nothing written: {type(exc).__name__}: {exc} "
              f"(set ONNXPRUNE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
