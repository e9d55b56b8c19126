"""onnxruntime helpers shared by normalisation, verification and benchmarks: the one session
factory (`session`) and the one random-input rule (`random_feeds`)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.model.external import materialize
from onnxprune.model.graph import InputSpec, graph_inputs

ModelLike = onnx.ModelProto | str | os.PathLike[str]
Provider = str | tuple[str, dict]
CPU_ONLY: tuple[Provider, ...] = ("CPUExecutionProvider",)

_TWO_GB = 2**31 - 1
ort.set_default_logger_severity(3)  # graph-optimiser notes are not the user's business


def session(model: ModelLike, optimize: bool = True, threads: int | None = None,
            quiet: bool = False, *, spinning: bool = True,
            providers: Sequence[Provider] = CPU_ONLY) -> ort.InferenceSession:
    """The project's one InferenceSession factory (CPU unless `providers` says otherwise).

    `model` is a path (onnxruntime reads it and its external data) or a ModelProto: its lazy
    weights (external.py) are read, and one over 2 GB, which onnxruntime cannot take from
    memory, is spilled to a temporary file with external data. `optimize=False` disables
    graph optimisations (verification runs the graph as written); `threads` sets the intra-op
    threads (inter-op 1: execution is sequential).

    onnxruntime silently falls back to the CPU when a requested provider cannot start:
    callers that asked for another one must check `session.get_providers()`. `quiet` also
    silences the error log of failures the caller reports itself. `spinning=False` stops idle
    intra-op workers from busy-waiting: with several sessions alive (interleaved timing) the
    idle ones' spinning workers otherwise steal the running one's cores (on a busy 2-core
    machine, ResNet-18 took 89 ms interleaved with spinning, 37 ms without).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4 if quiet else 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(os.fspath(model), opts, providers=list(providers))
    model = materialize(model)  # lazy weights (external.py) are read for the session
    if model.ByteSize() < _TWO_GB:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=list(providers))
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        # onnxruntime cannot take a > 2 GB protobuf from memory: spill it with external
        # data; the session holds (or maps) the weights, so the files can go right after
        path = os.path.join(folder, "model.onnx")
        onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, opts, providers=list(providers))


def random_feeds(specs: Sequence[InputSpec], seed: int) -> dict[str, np.ndarray]:
    """Random inputs of the given shapes; the project's one rule, drawn input by input:

    - floats: standard normal (drawn in float64, then cast);
    - booleans: True or False with probability 1/2;
    - integers: uniform in [0, 4). Integer inputs are mostly indices (Gather, embeddings,
      token ids): small non-negative values are valid for any table of 4 entries or more,
      and unlike zeros they still tell rows apart.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(spec.shape) < 0.5
        else:
            feeds[spec.name] = rng.integers(0, 4, size=spec.shape).astype(dtype)
    return feeds


def random_inputs(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """`random_feeds` for every real input of `model`, any dynamic dimension taken as 1."""
    specs = []
    for inp in graph_inputs(model):
        tt = inp.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, shape,
                               np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return random_feeds(specs, seed)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def run_with_intermediates(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """Values of the named tensors on one random input (used to learn their shapes)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(probe, optimize=False)
    wanted = [o.name for o in sess.get_outputs()]
    values = sess.run(wanted, random_inputs(model, seed=0))
    return {n: v for n, v in zip(wanted, values) if n in set(names)}
