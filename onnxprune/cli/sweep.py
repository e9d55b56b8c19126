"""`onnxprune sweep MODEL --targets 0.9,0.7,0.5,0.3`: one prune per target, latency of all.

    onnxprune sweep model.onnx --targets 0.9,0.7,0.5,0.3 [--target-kind mem] [--criterion l1]
                    [--data PATH] [--out DIR] [--bench ort-cpu] [--bench-runs N]

Channels are scored once (the first prune computes the scores, a data criterion included; the
other targets reuse them), every target is planned, sliced and proven by the oracle, then the
original and every pruned model run interleaved in one measurement, so the latency column
compares like with like. A latency target is planned on the predicted table only (no measured
re-plans, unlike the prune command); the measured column shows what it reached. Writes
DIR/<stem>.<kind>-<target>.onnx, sweep.json, sweep.png (latency, and accuracy when known,
against memory) and sweep.md; if any target fails, nothing is written.

Accuracy hook: `sweep(..., evaluate=fn)` stores fn(model) -> float for the original and every
pruned model as `accuracy`. The CLI passes none (a labelled evaluation runs in torch and is not
built yet), so `accuracy` is null and the table has no accuracy column.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxprune import __version__
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
from onnxprune.cli.data import add_data
from onnxprune.config import LatencyConfig, Normalize, PruneConfig, Target, TargetKind
from onnxprune.errors import UserError

if TYPE_CHECKING:  # the heavy modules load only when a sweep runs
    from onnxprune.api import PruneResult
    from onnxprune.bench.onnxruntime import LatencyStats

Evaluate = Callable[[onnx.ModelProto], float]


@dataclass
class SweepPoint:
    target: float                  # 1.0 for the original
    model: onnx.ModelProto
    result: PruneResult | None = None   # None for the original
    latency: LatencyStats | None = None
    accuracy: float | None = None
    output: str | None = None

    def ratio(self, field: str) -> float:
        if self.result is None:
            return 1.0
        before, after = self.result.plan.before, self.result.plan.after
        b = getattr(before, field)
        return getattr(after, field) / b if b else 1.0


def sweep(model: onnx.ModelProto, targets: list[float], config: PruneConfig,
          latency: LatencyConfig, data=None, evaluate: Evaluate | None = None) -> list[SweepPoint]:
    """The original (first) and one verified prune per target, all timed in one interleaved
    measurement on `latency` (a LatencyConfig). Raises UserError if a target cannot be met."""
    from onnxprune.api import analyze, prune
    from onnxprune.latency.measure import measure

    points, scores = [], None
    # once for every target
    analysis = analyze(model, config.input_shapes, config.keep, config.attention)
    for goal in targets:
        result = prune(analysis, replace(config, target=Target(config.target.kind, goal)),
                       scores=scores, data=data)
        scores = result.scores
        points.append(SweepPoint(goal, result.model, result))
    points.insert(0, SweepPoint(1.0, points[0].result.analysis.model))
    for point, stats in zip(points, measure([p.model for p in points], latency, config.seed)):
        point.latency = stats
        point.accuracy = evaluate(point.model) if evaluate is not None else None
    return points


def sweep_record(points: list[SweepPoint], config: PruneConfig, latency: LatencyConfig,
                 source: str) -> dict:
    base = points[0].latency.median_ms
    return {"onnxprune": __version__, "input": source, "target_kind": config.target.kind.value,
            "criterion": config.criterion.value, "normalize": config.normalize.value,
            "round_to": config.round_to, "seed": config.seed, "backend": latency.backend.value,
            "batch": 1, "runs": latency.runs,
            "points": [{"target": p.target, "output": p.output or source,
                        "mem": p.ratio("mem"), "macs": p.ratio("macs"),
                        "params": p.ratio("params"), "latency_ms": p.latency.median_ms,
                        "p90_ms": p.latency.p90_ms, "speedup": base / p.latency.median_ms,
                        "accuracy": p.accuracy} for p in points]}


def _rows(record: dict) -> tuple[list[str], list[list[str]]]:
    accuracy = any(p["accuracy"] is not None for p in record["points"])
    header = ["target", "M", "MACs", "params", "latency ms", "speed-up"] + (
        ["accuracy"] if accuracy else []) + ["model"]
    rows = []
    for p in record["points"]:
        row = ["original" if p["target"] == 1.0 else f"{p['target']:g}", f"{p['mem']:.3f}",
               f"{p['macs']:.3f}", f"{p['params']:.3f}", f"{p['latency_ms']:.3f}",
               f"{p['speedup']:.2f}x"]
        if accuracy:
            row.append("" if p["accuracy"] is None else f"{p['accuracy']:.4f}")
        rows.append(row + [Path(p["output"]).name])
    return header, rows


def sweep_text(record: dict) -> str:
    header, rows = _rows(record)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [(f"{record['target_kind']} targets, {record['criterion']} / {record['normalize']}; "
             f"latency on {record['backend']} (batch 1, median of {record['runs']} interleaved "
             "runs); M, MACs, params as fractions of the original")]
    for r in [header, *rows]:
        lines.append("  ".join(c.rjust(w) if i < len(r) - 1 else c
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def sweep_markdown(record: dict) -> str:
    header, rows = _rows(record)
    return "\n".join([
        "# onnxprune sweep", "",
        (f"`{record['input']}`: `--target-{record['target_kind']}` targets, criterion "
        f"`{record['criterion']}`, normalised by `{record['normalize']}`, round-to "
        f"{record['round_to']}. Latency on {record['backend']}, batch 1, median of "
        f"{record['runs']} interleaved runs of all models. M, MACs and params are fractions of "
        "the original."), "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header[:-1]) + "|---|",
        *("| " + " | ".join(r) + " |" for r in rows), "", "![latency vs memory](sweep.png)", ""])


def _targets(text: str) -> list[float]:
    values = [fraction(part.strip()) for part in text.split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: targets must be distinct")
    return sorted(values, reverse=True)


def sweep_parser() -> argparse.ArgumentParser:
    p = Parser(prog="onnxprune sweep", description="Prune to several targets and time the "
               "original and every result interleaved: a table, sweep.json, sweep.png, "
               "sweep.md. --data scores the channels (fisher by default); accuracy is not "
               "evaluated yet (null in sweep.json).")
    p.add_argument("model", help="input .onnx (never modified)")
    p.add_argument("--targets", type=_targets, required=True, metavar="F,F,...",
                   help="fractions strictly between 0 and 1, e.g. 0.9,0.7,0.5,0.3")
    p.add_argument("--target-kind", choices=[k.value for k in TargetKind], default="mem")
    p.add_argument("--criterion", choices=CRITERIA, default=None,
                   help="as for the prune command (default: fisher with --data, else l1)")
    p.add_argument("--normalize", choices=[n.value for n in Normalize], default=None)
    add_planning(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: <model>.sweep)")
    p.add_argument("--seed", type=int, default=0)
    add_shape(p)
    add_bench(p)
    add_data(p)
    return p


def _out_dir(args) -> Path:
    source = Path(args.model)
    out = Path(args.out) if args.out else source.with_name(source.stem + ".sweep")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out needs a folder")
    if not out.parent.resolve().is_dir():
        raise UserError(f"{out.parent}: output folder's parent does not exist")
    return out


def _write(points: list[SweepPoint], record: dict, out: Path) -> None:
    import importlib.util

    from onnxprune.model.io import save_atomic, write_json_atomic, write_text_atomic
    from onnxprune.report.plots import sweep_plot

    out.mkdir(exist_ok=True)
    for point in points[1:]:
        save_atomic(point.model, point.output)
    write_json_atomic(record, out / "sweep.json")
    write_text_atomic(out / "sweep.md", sweep_markdown(record))
    if importlib.util.find_spec("matplotlib") is None:
        print("onnxprune sweep: no sweep.png (pip install matplotlib)", file=sys.stderr)
    else:
        sweep_plot(record["points"], out / "sweep.png")


def run_sweep(argv: list[str]) -> int:
    import os

    from onnxprune.model.io import load

    args = sweep_parser().parse_args(argv)
    out = _out_dir(args)
    latency = latency_config(args, needed=True)  # always timed; backend checked before any work
    model = load(args.model)
    target = Target(TargetKind(args.target_kind), args.targets[0])
    config = prune_config(args, target, input_shapes(args, model), latency)
    if args.data and not os.path.exists(args.data):
        raise UserError(f"{args.data}: no such file or folder")
    points = sweep(model, args.targets, config, latency, data=args.data)
    stem = Path(args.model).stem
    for point in points[1:]:
        point.output = str(out / f"{stem}.{config.target.kind.value}-{point.target:g}.onnx")
    record = sweep_record(points, config, latency, args.model)
    _write(points, record, out)
    print(sweep_text(record) + f"\nwrote {len(points) - 1} models, sweep.json, sweep.md"
          f"{', sweep.png' if (out / 'sweep.png').exists() else ''} in {out}")
    return 0
