"""TensorRT (10 / 11 Python API) backend for `onnxprune bench --backend tensorrt`.

An engine is built from the ONNX bytes (OnnxParser, errors reported; one optimisation profile,
`bench/profile.py`: the `--min/--opt/--max-shapes` ranges of dynamic inputs, else fixed at the
benchmarked shapes; `build_serialized_network`) and cached on disk, keyed by the model bytes'
hash, the profile's ranges, the precision and the TensorRT version. Execution uses
named I/O tensors (`set_input_shape`, `set_tensor_address`, `execute_async_v3` on a stream).

Device memory, the stream and the CUDA events that time each run come from **torch.cuda**
(chosen over cuda-python: torch is already the project's GPU dependency for calibrate/ and the
zoo, and `torch.cuda.Event.elapsed_time` is plain CUDA-event timing). So this backend needs
`tensorrt` and a CUDA build of torch; without either, or without a GPU, it raises
BackendUnavailable with one line and the rest of the CLI is untouched.

`--fp16` sets BuilderFlag.FP16 (TensorRT 10). TensorRT 11 removed the weak-typing flags: there
a float32 model is built in float32 and `--fp16` asks for a float16 model instead.

This module imports tensorrt and torch only inside functions.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.bench.base import BackendOptions, BackendUnavailable, Feeds
from onnxprune.bench.profile import Range, apply, engine_ranges, tag
from onnxprune.errors import UserError
from onnxprune.model.graph import input_specs
from onnxprune.model.io import write_bytes_atomic


def _modules() -> tuple[Any, Any]:
    """(tensorrt, torch), or BackendUnavailable with the reason."""
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001  ImportError, or libnvinfer failing to load
        raise BackendUnavailable(f"tensorrt backend unavailable: cannot import the tensorrt "
                                 f"package ({type(exc).__name__}: {exc})") from None
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("tensorrt backend unavailable: needs torch with CUDA for device "
                                 "memory, streams and CUDA-event timing") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt backend unavailable: no CUDA GPU "
                                 "(torch.cuda.is_available() is False)")
    return trt, torch


def engine_path(cache_dir: Path, model_bytes: bytes, ranges: dict[str, Range], fp16: bool,
                trt_version: str) -> Path:
    digest = hashlib.sha256(model_bytes).hexdigest()[:32]
    return (cache_dir / f"{digest}-p{tag(ranges)}-{'fp16' if fp16 else 'fp32'}"
            f"-trt{trt_version}.engine")


def build_engine(trt: Any, model_bytes: bytes, ranges: dict[str, Range], fp16: bool) -> bytes:
    """A serialized engine with one optimization profile: `ranges` per network input."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    if fp16:
        flag = getattr(trt.BuilderFlag, "FP16", None)
        if flag is None:
            raise UserError(f"--fp16: TensorRT {trt.__version__} has no FP16 builder flag "
                            f"(TensorRT 11 builds strongly typed networks: convert the model to "
                            f"float16 first, e.g. with ModelOpt AutoCast)")
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    apply(profile, ranges, [network.get_input(i).name for i in range(network.num_inputs)])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine (its log above says why)")
    return bytes(serialized)


@dataclass
class TrtRunner:
    runtime: Any
    engine: Any
    context: Any
    stream: Any                  # torch.cuda.Stream
    buffers: dict[str, Any]      # tensor name -> torch CUDA tensor (inputs and outputs)
    inputs: list[str]
    outputs: list[str]           # graph output order


class TensorRTBackend:
    name = "tensorrt"
    supports_fp16 = True

    def __init__(self, options: BackendOptions):
        self.options = options

    def check(self) -> None:
        _modules()

    def _engine(self, trt: Any, model: onnx.ModelProto, fp16: bool,
                ranges: dict[str, Range]) -> bytes:
        data = model.SerializeToString()
        path = engine_path(self.options.cache_dir, data, ranges, fp16, trt.__version__)
        if path.exists():
            return path.read_bytes()
        blob = build_engine(trt, data, ranges, fp16)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, blob)
        return blob

    def prepare(self, model: onnx.ModelProto, batch: int, fp16: bool) -> TrtRunner:
        trt, torch = _modules()
        specs = input_specs(model, batch)
        shapes = {s.name: s.shape for s in specs}
        ranges = engine_ranges(model, specs, self.options.profile)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(self._engine(trt, model, fp16, ranges))
        if engine is None:
            raise RuntimeError(f"cannot deserialize the cached engine (delete "
                               f"{self.options.cache_dir} to rebuild)")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            context.set_input_shape(name, shapes[name])
        buffers = {}
        for name in names:
            dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype,
                                        device="cuda")
            context.set_tensor_address(name, buffers[name].data_ptr())
        return TrtRunner(runtime, engine, context, torch.cuda.Stream(), buffers, inputs,
                         [o.name for o in model.graph.output])

    def _upload(self, runner: TrtRunner, feeds: Feeds) -> None:
        import torch

        for name in runner.inputs:
            target = runner.buffers[name]
            host = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(target.dtype)
            target.copy_(host)
        torch.cuda.synchronize()

    def _execute(self, context: Any, stream: Any) -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def run(self, runner: TrtRunner, feeds: Feeds) -> list[np.ndarray]:
        self._upload(runner, feeds)
        self._execute(runner.context, runner.stream)
        runner.stream.synchronize()
        return [runner.buffers[n].cpu().numpy() for n in runner.outputs]

    def timer(self, runner: TrtRunner, feeds: Feeds) -> Callable[[], float]:
        """Each call: one execute_async_v3 between two CUDA events on the runner's stream."""
        import torch

        self._upload(runner, feeds)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def timed() -> float:
            start.record(runner.stream)
            self._execute(runner.context, runner.stream)
            end.record(runner.stream)
            end.synchronize()
            return start.elapsed_time(end)
        return timed

    def layer_times(self, runner: TrtRunner, feeds: Feeds, runs: int = 10) -> dict[str, float]:
        """Mean milliseconds per engine layer over `runs` runs (IProfiler), slowest first."""
        trt, _ = _modules()

        class _Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.total: dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.total[layer_name] = self.total.get(layer_name, 0.0) + ms

        context = runner.engine.create_execution_context()  # keep the timed context clean
        for name in runner.inputs:
            context.set_input_shape(name, tuple(runner.buffers[name].shape))
        for name, buffer in runner.buffers.items():
            context.set_tensor_address(name, buffer.data_ptr())
        profiler = _Profiler()
        context.profiler = profiler
        self._upload(runner, feeds)
        for _ in range(runs):
            self._execute(context, runner.stream)
            runner.stream.synchronize()
        ranked = sorted(profiler.total.items(), key=lambda kv: -kv[1])
        return {name: ms / runs for name, ms in ranked}
