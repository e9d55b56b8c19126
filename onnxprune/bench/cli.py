"""`onnxprune bench A.onnx [B.onnx ...]`: latency of models side by side.

    onnxprune bench A.onnx B.onnx [--backend ort-cpu|ort-cuda|ort-trt|tensorrt] [--batch 1,8,32]
                    [--fp16] [--threads N] [--warmup W] [--runs R | --seconds S] [--json]
                    [--min-shapes S --opt-shapes S --max-shapes S]   (tensorrt, ort-trt)

For every batch size the models run interleaved (round r runs A once, then B once, ...), so
machine drift hits every model alike; reported are the median and p90 latency (ms), the
throughput (samples/s) and the speed-up of each model over the first. The models' static batch
is made symbolic in an in-memory copy to run other batch sizes; a model that cannot run at a
batch size (e.g. a Reshape with the batch baked in) gets one line for it instead. Outputs of
every backend other than ort-cpu are compared with onnxruntime CPU on the same random inputs
(max abs error, and relative error = max abs error / max |reference|; above 1e-3, 1e-2 with
--fp16, is a mismatch warning). TensorRT engines of dynamic inputs are built with an
optimization profile (bench/profile.py: trtexec's min / opt / max shapes, by default spanning
the --batch sizes when a model has a dynamic input).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.bench.backends import batch_dims, get_backend, needs_rebatch, with_batch
from onnxprune.bench.base import Backend, BackendKind, BackendOptions, BackendUnavailable
from onnxprune.bench.onnxruntime import LatencyStats, interleave, summarize
from onnxprune.bench.profile import (
    FLAGS,
    Profile,
    batch_span,
    check_within,
    dynamic_inputs,
    parse_profile,
)
from onnxprune.cli.args import Parser
from onnxprune.errors import UserError, first_line
from onnxprune.model.graph import InputSpec, graph_inputs, input_specs
from onnxprune.model.io import load
from onnxprune.model.runtime import random_feeds, session

DEFAULT_RUNS = 30
TOLERANCE = {False: 1e-3, True: 1e-2}  # relative output error vs ORT CPU: fp32, fp16


def _number(kind: type, low: float, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value
    return parse


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes like 1,8,32") from None
    if min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be distinct and >= 1")
    return sizes


def bench_parser() -> argparse.ArgumentParser:
    p = Parser(prog="onnxprune bench", description="Latency, p90 and throughput of ONNX "
               "models, interleaved so drift cancels; speed-up of each over the first.")
    p.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files; the first is the "
                   "baseline of the speed-ups")
    p.add_argument("--backend", choices=[k.value for k in BackendKind], default="ort-cpu",
                   help="onnxruntime CPU (default), CUDA or TensorRT provider, or TensorRT")
    p.add_argument("--batch", type=_batches, default=[1], metavar="N,N",
                   help="batch sizes (default 1); others than the model's are run on a copy "
                        "with a symbolic batch dimension")
    p.add_argument("--fp16", action="store_true", help="half precision (ort-trt, tensorrt)")
    p.add_argument("--threads", type=_number(int, 1, ">= 1"), metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--warmup", type=_number(int, 0, ">= 0"), default=5, metavar="W")
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument("--runs", type=_number(int, 1, ">= 1"), metavar="R",
                          help=f"timed rounds (default {DEFAULT_RUNS})")
    how_long.add_argument("--seconds", type=_number(float, 1e-9, "> 0"), metavar="S",
                          help="time rounds for S seconds per batch size instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cache-dir", metavar="DIR", help="TensorRT engine cache "
                   "(default $ONNXPRUNE_CACHE/engines or ~/.cache/onnxprune/engines)")
    p.add_argument("--layers", type=_number(int, 1, ">= 1"), metavar="N",
                   help="tensorrt: the N slowest layers of each model at the first batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    t = p.add_argument_group("TensorRT optimization profile (tensorrt, ort-trt; trtexec's "
                             "--minShapes / --optShapes / --maxShapes)")
    for flag, what in zip(FLAGS, ("smallest", "tuned-for", "largest")):
        t.add_argument(flag, metavar="SHAPES", help=f"the {what} shape of each dynamic input: "
                       "input:1x3x224x224 (several comma-separated; the name may be left out "
                       "for one input). Default with a dynamic input: the --batch sizes' span")
    return p


@dataclass
class Cell:
    """One model at one batch size."""

    batch: int
    stats: LatencyStats | None = None
    error: str | None = None
    comparison: dict[str, Any] | None = None
    speedup: float | None = None
    layers: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.stats is None:
            return {"batch": self.batch, "error": self.error}
        s = self.stats
        return {"batch": self.batch, "median_ms": s.median_ms, "p90_ms": s.p90_ms,
                "mean_ms": s.mean_ms, "runs": s.runs,
                "throughput": self.batch * 1e3 / s.median_ms, "speedup": self.speedup,
                "comparison": self.comparison, "layers": self.layers}


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], fp16: bool) -> dict:
    """Max abs error and max abs error / max |reference| over all outputs."""
    tolerance = TOLERANCE[fp16]
    if [np.shape(o) for o in outputs] != [np.shape(r) for r in reference]:
        return {"max_abs": None, "max_rel": None, "tolerance": tolerance, "mismatch": True,
                "note": "output shapes differ from onnxruntime CPU"}
    max_abs = max_rel = 0.0
    for out, ref in zip(outputs, reference):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.size == 0:
            continue
        diff = float(np.max(np.abs(out - ref)))
        scale = float(np.max(np.abs(ref)))
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    finite = math.isfinite(max_rel)
    return {"max_abs": max_abs if finite else None, "max_rel": max_rel if finite else None,
            "tolerance": tolerance, "mismatch": not finite or max_rel > tolerance}


def _check_rebatched(model: onnx.ModelProto, outputs: list[np.ndarray], batch: int) -> None:
    """Outputs that carried the batch must have `batch` rows: those whose declared dim 0 is the
    input's batch, symbolic, or unknown (only a different static dim 0 says "no batch")."""
    own = batch_dims(graph_inputs(model))
    own_batch = own[0] if own else None
    for out, declared, value in zip(model.graph.output, batch_dims(model.graph.output), outputs):
        carries = not isinstance(declared, int) or declared == own_batch
        if carries and np.ndim(value) and np.shape(value)[0] != batch:
            raise ValueError(f"output {out.name!r} has batch {np.shape(value)[0]}, not {batch} "
                             f"(a Reshape or a constant bakes in batch {own_batch})")


def bench_specs(model: onnx.ModelProto, batch: int, label: str) -> list[InputSpec]:
    """`onnxprune.model.graph.input_specs` at `batch`, its error said for bench: there is no
    --input-shape here, every dimension but the batch must be static."""
    try:
        return input_specs(model, batch)
    except UserError as exc:
        reason = str(exc).partition(": pass --input-shape")[0]
        raise UserError(f"{label}: {reason}; bench needs static shapes apart from the "
                        f"batch") from None


def _prepare(backend: Backend, model: onnx.ModelProto, label: str, batch: int, args,
             cell: Cell):
    """(runner, feeds) after one checked run; fills the comparison with ORT CPU."""
    rebatched = with_batch(model, batch)
    feeds = random_feeds(bench_specs(rebatched, batch, label), args.seed)
    runner = backend.prepare(rebatched, batch, args.fp16)
    outputs = backend.run(runner, feeds)
    _check_rebatched(model, outputs, batch)
    if backend.name != BackendKind.ORT_CPU.value:
        reference = session(rebatched, threads=args.threads, quiet=True).run(None, feeds)
        cell.comparison = compare(outputs, reference, args.fp16)
    return runner, feeds


def bench_batch(backend: Backend, models: list[onnx.ModelProto], labels: list[str],
                batch: int, args) -> list[Cell]:
    cells = [Cell(batch) for _ in models]
    live: list[tuple[int, Any, dict]] = []
    for i, (model, label) in enumerate(zip(models, labels)):
        try:
            runner, feeds = _prepare(backend, model, label, batch, args, cells[i])
        except (BackendUnavailable, UserError):
            raise
        except Exception as exc:  # noqa: BLE001  ORT / TensorRT errors: one line for this batch
            what = (f"cannot be re-batched to {batch}" if needs_rebatch(model, batch)
                    else f"cannot run at batch {batch}")
            cells[i].error = f"{what}: {first_line(exc)}"
            continue
        live.append((i, runner, feeds))
    if live:
        runs = None if args.seconds else (args.runs or DEFAULT_RUNS)
        times = interleave([backend.timer(r, f) for _, r, f in live], runs=runs,
                           warmup=args.warmup, seconds=args.seconds)
        for (i, runner, feeds), t in zip(live, times):
            cells[i].stats = summarize(t, backend.name)
            if args.layers and batch == args.batch[0]:
                profile = backend.layer_times(runner, feeds)  # tensorrt only (checked)
                cells[i].layers = dict(list(profile.items())[:args.layers])
    base = cells[0].stats
    for cell in cells:
        if base is not None and cell.stats is not None:
            cell.speedup = base.median_ms / cell.stats.median_ms
    return cells


def _record(args, labels: list[str], table: list[list[Cell]], warnings: list[str]) -> dict:
    first = [row[0] for row in table]  # every model at the first batch size
    speedup = first[1].speedup if len(first) > 1 else None
    return {"backend": args.backend, "precision": "fp16" if args.fp16 else "fp32",
            "threads": args.threads, "warmup": args.warmup,
            "runs": None if args.seconds else (args.runs or DEFAULT_RUNS),
            "seconds": args.seconds, "seed": args.seed, "batches": args.batch,
            "models": [{"path": label, "results": {str(c.batch): c.as_dict() for c in row}}
                       for label, row in zip(labels, table)],
            "speedup": speedup, "warnings": warnings}


def _warnings(args, labels: list[str], table: list[list[Cell]]) -> list[str]:
    lines = []
    for label, row in zip(labels, table):
        for c in row:
            cmp = c.comparison
            if cmp and cmp["mismatch"]:
                detail = cmp.get("note") or (f"relative error {cmp['max_rel']:.2e} > "
                                             f"{cmp['tolerance']:g} (max abs {cmp['max_abs']:.2e})"
                                             if cmp["max_rel"] is not None else "non-finite output")
                lines.append(f"warning: {label} at batch {c.batch}: {args.backend} output differs "
                             f"from onnxruntime CPU: {detail}")
    return lines


def text_table(args, labels: list[str], table: list[list[Cell]]) -> str:
    runs = f"for {args.seconds:g} s" if args.seconds else f"{args.runs or DEFAULT_RUNS} runs"
    threads = args.threads or "onnxruntime default"
    precision = "fp16" if args.fp16 else "fp32"
    lines = [f"backend {args.backend} ({precision}), interleaved {runs} after {args.warmup} "
             + f"warm-up, threads: {threads}"]
    width = max(len(label) for label in labels) + 2
    compared = args.backend != BackendKind.ORT_CPU.value
    lines.append(f"{'model':<{width}}{'batch':>6}{'median ms':>11}{'p90 ms':>10}{'samples/s':>11}"
                 f"{'speed-up':>10}" + (f"{'max abs':>10}{'rel err':>10}" if compared else ""))
    for b in range(len(args.batch)):
        for label, row in zip(labels, table):
            c = row[b]
            head = f"{label:<{width}}{c.batch:>6}"
            if c.stats is None:
                lines.append(f"{head}  {c.error}")
                continue
            s = c.stats
            line = (f"{head}{s.median_ms:>11.3f}{s.p90_ms:>10.3f}"
                    f"{c.batch * 1e3 / s.median_ms:>11.1f}"
                    + (f"{c.speedup:>9.2f}x" if c.speedup is not None else f"{'-':>10}"))
            if compared and c.comparison and c.comparison["max_rel"] is not None:
                line += f"{c.comparison['max_abs']:>10.1e}{c.comparison['max_rel']:>10.1e}"
            lines.append(line)
            for name, ms in (c.layers or {}).items():
                lines.append(f"    {ms:8.3f} ms  {name}")
    return "\n".join(lines)


def bench_profile(args, models: list[onnx.ModelProto], labels: list[str]) -> Profile | None:
    """The optimization profile of a TensorRT backend (bench/profile.py), every batch size of
    every model that builds with it checked to lie inside; None for the other backends."""
    texts = (args.min_shapes, args.opt_shapes, args.max_shapes)
    if args.backend not in (BackendKind.TENSORRT.value, BackendKind.ORT_TRT.value):
        if any(texts):
            raise UserError(f"{', '.join(FLAGS)}: optimization profiles are for --backend "
                            f"tensorrt or ort-trt")
        return None
    profile = parse_profile(texts, [i.name for i in graph_inputs(models[0])])
    if profile is None and any(dynamic_inputs(m) for m in models):
        sizes = (min(args.batch), args.batch[0], max(args.batch))
        profile = batch_span(*(bench_specs(models[0], b, labels[0]) for b in sizes))
    for model, label in zip(models, labels):
        for batch in args.batch if profile is not None else ():
            dynamic = ({i.name for i in graph_inputs(model)} if needs_rebatch(model, batch)
                       else dynamic_inputs(model))  # the inputs that build with the profile
            check_within(profile, [s for s in bench_specs(model, batch, label)
                                   if s.name in dynamic], label)
    return profile


def _backend(args, profile: Profile | None = None) -> Backend:
    options = BackendOptions(threads=args.threads, profile=profile)
    if args.cache_dir:
        options = BackendOptions(threads=args.threads, cache_dir=Path(args.cache_dir),
                                 profile=profile)
    backend = get_backend(BackendKind(args.backend), options)
    if args.fp16 and not backend.supports_fp16:
        raise UserError(f"--fp16 needs --backend ort-trt or tensorrt ({args.backend} runs the "
                        f"model in its own precision)")
    if args.layers and args.backend != BackendKind.TENSORRT.value:
        raise UserError("--layers needs --backend tensorrt (TensorRT's per-layer profiler)")
    return backend


def run_bench(argv: list[str]) -> int:
    args = bench_parser().parse_args(argv)
    _backend(args)  # option errors before loading anything
    models = [load(path) for path in args.models]
    for model, label in zip(models, args.models):
        bench_specs(model, 1, label)  # dynamic non-batch dims: a user error, before any work
    profile = bench_profile(args, models, args.models)
    backend = _backend(args, profile)
    backend.check()
    columns = [bench_batch(backend, models, args.models, batch, args) for batch in args.batch]
    table = [[column[i] for column in columns] for i in range(len(models))]
    warnings = _warnings(args, args.models, table)
    if args.json:
        print(json.dumps({**_record(args, args.models, table, warnings),
                          "profile": profile and profile.as_dict()}, indent=1))
    else:
        print(text_table(args, args.models, table))
        if profile is not None:
            print(f"optimization profile: {profile.describe()}")
        for line in warnings:
            print(line)
        if len(models) > 1 and table[1][0].speedup is not None:
            print(f"speed-up of {args.models[1]} over {args.models[0]} at batch "
                  f"{args.batch[0]}: {table[1][0].speedup:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m onnxprune.bench.cli`): user errors are one line, exit 2."""
    try:
        return run_bench(list(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        print(f"onnxprune bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
