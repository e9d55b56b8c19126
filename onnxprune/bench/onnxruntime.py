"""Interleaved CPU latency measurement of ONNX models with onnxruntime.

Comparing a pruned model with its original by timing one after the other is
skewed by machine drift (thermal throttling, turbo, noisy neighbours). Here
round r runs model 0, model 1, ... once each, so slow phases hit every model
alike, and medians are robust to the occasional outlier.

This module must not import torch (it is used in torch-free installs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ModelLike = onnx.ModelProto | str | os.PathLike[str]

# ORT input type string -> numpy dtype.
_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model over `runs` timed runs (milliseconds)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    provider: str


def make_session(model: ModelLike, threads: int | None = None) -> ort.InferenceSession:
    """CPU InferenceSession with all graph optimisations enabled."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source: str | bytes
    if isinstance(model, onnx.ModelProto):
        source = model.SerializeToString()
    else:
        source = str(Path(model))
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _concrete_shape(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    """Replace symbolic / unknown dims (e.g. batch) with 1."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def random_inputs(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every model input: floats ~ N(0, 1), integers/bools 0."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"unsupported input type {inp.type} for input {inp.name!r}")
        shape = _concrete_shape(inp.shape)
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _summarize(times_ms: list[float], provider: str) -> LatencyStats:
    arr = np.asarray(times_ms, dtype=np.float64)
    return LatencyStats(
        median_ms=float(np.median(arr)),
        p90_ms=float(np.percentile(arr, 90)),
        mean_ms=float(np.mean(arr)),
        runs=len(times_ms),
        provider=provider,
    )


def latency_interleaved(
    models: Sequence[ModelLike],
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> list[LatencyStats]:
    """Time `models` interleaved on CPU; one LatencyStats per model, same order.

    Every model gets inputs from the same seed, so models with equal input
    shapes see identical data. `threads` sets intra-op threads (None: ORT
    default).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs=}, {warmup=}")
    sessions = [make_session(m, threads) for m in models]
    feeds = [random_inputs(s, seed) for s in sessions]
    for _ in range(warmup):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            times[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [_summarize(t, s.get_providers()[0]) for t, s in zip(times, sessions)]
