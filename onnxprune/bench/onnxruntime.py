"""Interleaved CPU latency measurement of ONNX models with onnxruntime.

Comparing a pruned model with its original by timing one after the other is
skewed by machine drift (thermal throttling, turbo, noisy neighbours). Here
round r runs model 0, model 1, ... once each, so slow phases hit every model
alike, and medians are robust to the occasional outlier. Sessions come from
`onnxprune.model.runtime.session`, random inputs from its `random_feeds`.

This module must not import torch (it is used in torch-free installs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from onnxprune.model.graph import InputSpec
from onnxprune.model.runtime import ModelLike, random_feeds, session

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


def _concrete_shape(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    """Replace symbolic / unknown dims (e.g. batch) with 1."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def session_specs(sess: ort.InferenceSession) -> list[InputSpec]:
    """The session's inputs as InputSpecs, symbolic dims as 1 (for `random_feeds`)."""
    specs = []
    for inp in sess.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"unsupported input type {inp.type} for input {inp.name!r}")
        specs.append(InputSpec(inp.name, _concrete_shape(inp.shape), dtype))
    return specs


def summarize(times_ms: Sequence[float], provider: str) -> LatencyStats:
    arr = np.asarray(times_ms, dtype=np.float64)
    return LatencyStats(
        median_ms=float(np.median(arr)),
        p90_ms=float(np.percentile(arr, 90)),
        mean_ms=float(np.mean(arr)),
        runs=len(times_ms),
        provider=provider,
    )


def interleave(timers: Sequence[Callable[[], float]], runs: int | None = 30, warmup: int = 5,
               seconds: float | None = None) -> list[list[float]]:
    """Call every timer once per round, in order; each call runs its model once and returns
    the elapsed milliseconds. `runs` rounds, or with `seconds` as many rounds as fit in that
    wall time (at least one). Returns the per-timer lists of times."""
    if (runs is None) == (seconds is None):
        raise ValueError("give exactly one of runs and seconds")
    if (runs is not None and runs < 1) or (seconds is not None and seconds <= 0) or warmup < 0:
        raise ValueError(f"need runs >= 1, seconds > 0, warmup >= 0, got {runs=}, {seconds=}, "
                         f"{warmup=}")
    for _ in range(warmup):
        for timer in timers:
            timer()
    times: list[list[float]] = [[] for _ in timers]
    deadline = None if seconds is None else time.perf_counter() + seconds
    rounds = 0
    while (rounds < runs) if runs is not None else (rounds == 0 or time.perf_counter() < deadline):
        for i, timer in enumerate(timers):
            times[i].append(timer())
        rounds += 1
    return times


def cpu_timer(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]
              ) -> Callable[[], float]:
    """A timer for `interleave`: one host-clocked `sess.run` in milliseconds."""
    def timed() -> float:
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        return (time.perf_counter_ns() - t0) / 1e6
    return timed


def latency_interleaved(
    models: Sequence[ModelLike],
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    seed: int = 0,
    spinning: bool = True,
) -> list[LatencyStats]:
    """Time `models` interleaved on CPU; one LatencyStats per model, same order.

    Every model gets inputs from the same seed, so models with equal input
    shapes see identical data. `threads` sets intra-op threads (None: ORT
    default). `spinning=False` keeps idle sessions from busy-waiting on the cores the
    running one needs (`onnxprune.model.runtime.session`).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs=}, {warmup=}")
    sessions = [session(m, threads=threads, spinning=spinning) for m in models]
    timers = [cpu_timer(s, random_feeds(session_specs(s), seed)) for s in sessions]
    times = interleave(timers, runs=runs, warmup=warmup)
    return [summarize(t, s.get_providers()[0]) for t, s in zip(times, sessions)]
