"""`--quantize int8` measured: the INT8 copy of the pruned file, its fidelity and its latency.

After the pruned float file is written, `onnxprune.rewrite.quantize` writes `<stem>.int8.onnx`
beside it, calibrated on the calibration data minus a held-out share. Quantization changes
weights on purpose, so the oracle does not apply; the record states instead (DESIGN.md §3):

- `fidelity`: the INT8 model against the float pruned model on the held-out samples
  (`onnxprune.verify.fidelity`): top-1 agreement for a classifier output, max relative and
  mean absolute output error, and the top-1 accuracy of both with labels;
- `latency`: ORT-CPU medians of the original (normalised, as `--bench` times it), the pruned
  float and the pruned INT8 model, interleaved in one run (`latency_interleaved`), idle
  sessions not spinning, `--bench-runs` rounds, `--bench-threads` threads.

The CLI calls this module (cli/main.py, `run_prune`); it imports calibrate.data (numpy only)
and onnxruntime's quantizer lazily.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxprune.bench.onnxruntime import LatencyStats, latency_interleaved
from onnxprune.errors import UserError
from onnxprune.model.graph import input_specs
from onnxprune.model.io import load
from onnxprune.report.record import fidelity_text
from onnxprune.rewrite.quantize import QuantizeOptions, int8_path, quantize_int8, split
from onnxprune.verify.fidelity import fidelity

if TYPE_CHECKING:
    from onnxprune.api import PruneResult
    from onnxprune.config import PruneConfig

WARMUP = 3
_RENAMED = {"accuracy_original": "accuracy_float", "accuracy_pruned": "accuracy_int8"}


def check_target(float_path: str | os.PathLike, source: str | os.PathLike) -> None:
    """Before any work: the INT8 file may neither be the input nor a folder."""
    target, source = int8_path(float_path), Path(source)
    if target.is_dir():
        raise UserError(f"{target}: is a directory (the INT8 copy is written there)")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise UserError(f"{target}: the INT8 copy would overwrite the input")


def _stats(s: LatencyStats) -> dict:
    return {"median_ms": s.median_ms, "p90_ms": s.p90_ms, "mean_ms": s.mean_ms}


def _latency(models: list[onnx.ModelProto], runs: int, threads: int | None, seed: int) -> dict:
    original, pruned, int8 = latency_interleaved(models, runs=runs, warmup=WARMUP,
                                                 threads=threads, seed=seed, spinning=False)
    return {"backend": "ort-cpu", "batch": 1, "runs": runs, "warmup": WARMUP, "threads": threads,
            "original": _stats(original), "pruned": _stats(pruned), "int8": _stats(int8),
            "speedup_pruned": original.median_ms / pruned.median_ms,
            "speedup_int8": original.median_ms / int8.median_ms}


def int8_record(result: PruneResult, config: PruneConfig, data_path: str,
                float_path: str | os.PathLike, holdout: int = 500, runs: int = 20,
                threads: int | None = None) -> dict:
    """Quantize the float file written at `float_path` (the model of `result`) on the data
    at `data_path` minus `holdout` samples (at most half), then measure; the report's `int8`
    record. Batch size, image options and seed are the calibration's (`config`)."""
    from calibrate.data import open_data

    options = QuantizeOptions(holdout=holdout, batch_size=config.calibration.batch_size,
                              seed=config.seed)
    data = open_data(data_path, input_specs(result.analysis.model), config.calibration.image,
                     no_labels=config.calibration.no_labels)
    calibration, held = split(data, options)
    done = quantize_int8(float_path, calibration, options)
    int8 = load(done.path)
    record = done.as_dict()
    measured = fidelity(result.model, int8, held, options.batch_size)
    record["fidelity"] = (None if measured is None
                          else {_RENAMED.get(k, k): v for k, v in measured.items()})
    record["latency"] = _latency([result.analysis.model, result.model, int8], runs, threads,
                                 options.seed)
    return record


def summary_lines(record: dict | None) -> str:
    """The human summary of an `int8` record ("" without one)."""
    if not record:
        return ""
    cal = record["calibration"]
    lines = [f"  int8 -> {record['path']} (QDQ, per-channel weights; calibrated on "
             f"{cal['samples']} samples of {cal['data']})"]
    fid = record["fidelity"]
    if fid is None:
        lines.append("  int8 fidelity: not measured, no held-out samples (--holdout 0, or the "
                     "data has a single sample)")
    else:
        lines.append("  int8 fidelity: " + fidelity_text(fid, "the float model", "float", "int8"))
    lat = record["latency"]
    lines.append(f"  ort-cpu latency (median of {lat['runs']} interleaved runs): original "
                 f"{lat['original']['median_ms']:.3f} ms, pruned "
                 f"{lat['pruned']['median_ms']:.3f} ms ({lat['speedup_pruned']:.2f}x), int8 "
                 f"{lat['int8']['median_ms']:.3f} ms ({lat['speedup_int8']:.2f}x)")
    return "\n".join(lines)
