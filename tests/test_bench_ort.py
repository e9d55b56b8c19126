"""Smoke test for onnxprune.bench.onnxruntime.latency_interleaved."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.bench.onnxruntime import LatencyStats, latency_interleaved


def _conv_model(channels: int) -> onnx.ModelProto:
    """Conv -> Relu with a symbolic batch dim (exercises the batch -> 1 rule)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 16, 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_latency_interleaved_two_models(tmp_path):
    small = _conv_model(4)
    path = tmp_path / "big.onnx"
    onnx.save(_conv_model(16), str(path))
    stats = latency_interleaved([small, path], runs=3, warmup=1, threads=1)
    assert len(stats) == 2
    for s in stats:
        assert isinstance(s, LatencyStats)
        assert s.runs == 3
        assert s.provider == "CPUExecutionProvider"
        for v in (s.median_ms, s.p90_ms, s.mean_ms):
            assert math.isfinite(v) and v > 0
        assert s.median_ms <= s.p90_ms


def test_bench_does_not_import_torch():
    """The bench module must work in torch-free installs; check in a clean process."""
    import onnxprune.bench.onnxruntime as mod

    repo_root = Path(mod.__file__).resolve().parents[2]
    code = "import sys, onnxprune.bench.onnxruntime; assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_random_feeds_rule_and_one_session_factory(tmp_path):
    """Floats N(0, 1), integers in [0, 4), booleans random; same seed, same feeds; the session
    factory takes a path or a ModelProto with the bench options."""
    from onnxprune.model.graph import InputSpec
    from onnxprune.model.runtime import random_feeds, session

    specs = [InputSpec("f", (64,), np.dtype(np.float32)), InputSpec("i", (64,), np.dtype(np.int64)),
             InputSpec("b", (64,), np.dtype(np.bool_))]
    feeds = random_feeds(specs, 3)
    assert feeds["f"].dtype == np.float32 and feeds["f"].std() > 0.5
    assert feeds["i"].dtype == np.int64 and set(np.unique(feeds["i"])) <= {0, 1, 2, 3}
    assert len(np.unique(feeds["i"])) > 1 and 0 < feeds["b"].sum() < 64
    assert all((feeds[k] == random_feeds(specs, 3)[k]).all() for k in feeds)
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(4), str(path))
    x = {"x": np.ones((2, 3, 16, 16), np.float32)}
    a = session(path, threads=1, spinning=False, quiet=True).run(None, x)[0]
    b = session(_conv_model(4), optimize=False, providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
