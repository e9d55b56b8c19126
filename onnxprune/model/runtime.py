"""onnxruntime helpers shared by normalisation, verification and benchmarks (CPU only here)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.model.external import materialize
from onnxprune.model.graph import graph_inputs

_TWO_GB = 2**31 - 1
ort.set_default_logger_severity(3)  # graph-optimiser notes are not the user's business


def session(model: onnx.ModelProto, optimize: bool = True, threads: int | None = None,
            quiet: bool = False) -> ort.InferenceSession:
    """A CPU session; `quiet` also silences kernel errors the caller handles itself."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    model = materialize(model)  # lazy weights (external.py) are read for the session
    payload = model.SerializeToString() if model.ByteSize() < _TWO_GB else _spill(model)
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def _spill(model: onnx.ModelProto) -> str:
    """ORT cannot take a > 2 GB protobuf from memory: write it with external data."""
    import os
    import tempfile

    folder = tempfile.mkdtemp(prefix="onnxprune-")
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
    return path


def random_inputs(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal floats, small non-negative integers, random booleans; static shapes."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in graph_inputs(model):
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


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
