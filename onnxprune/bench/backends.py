"""Inference backends for `onnxprune bench`: onnxruntime CPU / CUDA / TensorRT EPs, TensorRT.

A backend turns an in-memory ONNX model at one batch size into a runner (`prepare`), runs it on
numpy feeds for the output comparison with onnxruntime CPU (`run`), and hands out a timer for
`interleave` (`timer`: a closure that runs once and returns milliseconds). GPU timers feed
inputs that already live on the device, so host-device copies are not part of the latency.

onnxruntime-gpu lists the CUDA and TensorRT providers as available even without a GPU and then
silently runs on the CPU; so a session's *active* provider is checked after it is created, and
a backend that cannot run raises `BackendUnavailable` (a UserError: one line, exit 2).
TensorRT itself lives in tensorrt.py and is imported only when asked for. The shared types
(BackendKind, BackendOptions, BackendUnavailable, Feeds, Backend) live in base.py, which
tensorrt.py imports; this factory imports both, never the other way round. Sessions come from
`onnxprune.model.runtime.session`.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxprune.bench.base import (
    Backend,
    BackendKind,
    BackendOptions,
    BackendUnavailable,
    Feeds,
)
from onnxprune.bench.onnxruntime import cpu_timer
from onnxprune.bench.profile import engine_ranges, provider_options, tag
from onnxprune.model.batch import batch_free
from onnxprune.model.graph import graph_inputs, input_specs
from onnxprune.model.runtime import session

# the shared types live in base.py; they are re-exported here for callers of the factory
__all__ = ["BATCH_PARAM", "Backend", "BackendKind", "BackendOptions", "BackendUnavailable",
           "Feeds", "OrtBackend", "batch_dims", "get_backend", "needs_rebatch",
           "unavailable_reason", "with_batch"]

BATCH_PARAM = "batch"


def _probe_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@dataclass(frozen=True)
class OrtBackend:
    """onnxruntime with one execution provider; the CPU provider is the fallback for ops the
    requested provider does not take (as onnxruntime itself does)."""

    name: str
    provider: str
    options: BackendOptions
    supports_fp16: bool = False

    def _providers(self, fp16: bool, model: onnx.ModelProto, batch: int
                   ) -> list[str | tuple[str, dict]]:
        """The provider list; for TensorRT, the ranges of `model`'s dynamic inputs at `batch`
        (profile.engine_ranges) are its optimization profile, cached in a folder of its own."""
        if self.provider == "TensorrtExecutionProvider":
            ranges = engine_ranges(model, input_specs(model, batch), self.options.profile)
            profile = provider_options(ranges)
            cache = self.options.cache_dir / (f"profile-{tag(ranges)}" if profile else "")
            cache.mkdir(parents=True, exist_ok=True)
            trt_options = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                           "trt_engine_cache_path": str(cache), **profile}
            return [(self.provider, trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        if self.provider == "CUDAExecutionProvider":
            return [self.provider, "CPUExecutionProvider"]
        return [self.provider]

    def check(self) -> None:
        available = ort.get_available_providers()
        if self.provider not in available:
            raise BackendUnavailable(
                f"{self.name} backend unavailable: onnxruntime {ort.__version__} has no "
                f"{self.provider} (available: {', '.join(available)}; install onnxruntime-gpu)")
        self.prepare(_probe_model(), 1, False)

    def prepare(self, model: onnx.ModelProto, batch: int, fp16: bool) -> ort.InferenceSession:
        with warnings.catch_warnings():  # "provider not available": checked right below
            warnings.simplefilter("ignore")
            sess = session(model, threads=self.options.threads, quiet=True,
                           spinning=self.options.spinning,
                           providers=self._providers(fp16, model, batch))
        active = sess.get_providers()[0]
        if active != self.provider:
            raise BackendUnavailable(
                f"{self.name} backend unavailable: onnxruntime fell back to {active} (no usable "
                f"GPU, or the CUDA / cuDNN / TensorRT libraries are missing)")
        return sess

    def run(self, runner: ort.InferenceSession, feeds: Feeds) -> list[np.ndarray]:
        return runner.run(None, feeds)

    def timer(self, runner: ort.InferenceSession, feeds: Feeds) -> Callable[[], float]:
        if self.provider == "CPUExecutionProvider":
            return cpu_timer(runner, feeds)
        return _device_timer(runner, feeds)


def _device_timer(sess: ort.InferenceSession, feeds: Feeds) -> Callable[[], float]:
    """Inputs and outputs bound to GPU memory once (IOBinding); each call times one run."""
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", 0)

    def timed() -> float:
        t0 = time.perf_counter_ns()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter_ns() - t0) / 1e6
    return timed


def get_backend(kind: BackendKind, options: BackendOptions) -> Backend:
    if kind is BackendKind.TENSORRT:
        from onnxprune.bench.tensorrt import TensorRTBackend

        return TensorRTBackend(options)
    provider = {BackendKind.ORT_CPU: "CPUExecutionProvider",
                BackendKind.ORT_CUDA: "CUDAExecutionProvider",
                BackendKind.ORT_TRT: "TensorrtExecutionProvider"}[kind]
    return OrtBackend(kind.value, provider, options, supports_fp16=kind is BackendKind.ORT_TRT)


def unavailable_reason(kind: BackendKind, options: BackendOptions | None = None) -> str | None:
    """None if `kind` runs here, else the one-line reason (used by tests to skip)."""
    try:
        get_backend(kind, options or BackendOptions()).check()
    except BackendUnavailable as exc:
        return str(exc)
    return None


# --- the model side: batch sizes ------------------------------------------------------------

def _dim0(vi: onnx.ValueInfoProto) -> onnx.TensorShapeProto.Dimension | None:
    tt = vi.type.tensor_type
    return tt.shape.dim[0] if tt.HasField("shape") and len(tt.shape.dim) else None


def batch_dims(values: list[onnx.ValueInfoProto]) -> list[int | str | None]:
    """The declared dim 0 of each value (int, symbol, or None if unknown)."""
    result: list[int | str | None] = []
    for vi in values:
        d = _dim0(vi)
        result.append(None if d is None else d.dim_value if d.HasField("dim_value")
                      else d.dim_param or None)
    return result


def needs_rebatch(model: onnx.ModelProto, batch: int) -> bool:
    return any(d != batch for d in batch_dims(graph_inputs(model)))


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """`model` itself if its inputs already have `batch` at dim 0; else its batch-free copy
    (`onnxprune.model.batch.batch_free`: symbolic dim 0, batch-1 Reshape targets rewritten). The
    caller checks every output's batch size, which catches what the rewrite cannot fix."""
    if not needs_rebatch(model, batch):
        return model
    free = batch_free(model)
    if free is not None:
        return free
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in graph_inputs(copy) + list(copy.graph.output):
        d = _dim0(vi)
        if d is not None:
            d.Clear()
            d.dim_param = BATCH_PARAM
    del copy.graph.value_info[:]
    return copy
