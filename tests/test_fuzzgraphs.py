"""Tests of the random CNN generator itself (tests/fuzzgraphs.py), not of the pruner."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings

from onnxprune.models.fuzzgraphs import OPSETS, graphs, random_cnn

SEEDS = range(50)
# Every op the generator can emit; each must show up in the 50 default-size seeds.
ALL_OPS = {
    "Conv", "BatchNormalization", "Relu", "Sigmoid", "LeakyRelu", "HardSwish", "Clip", "Add",
    "Mul", "GlobalAveragePool", "ReduceMean", "Concat", "Split", "Slice", "Reshape", "Transpose",
    "MaxPool", "AveragePool", "Resize", "Pad", "Flatten", "Gemm", "Constant", "MatMul",
    "Softmax",
}
RARE_OPS = {"Squeeze"}  # a fused qkv's Split -> Squeeze: not among SEEDS (see the test below)


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_model(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    """Check the model (full_check) and run it in onnxruntime CPU on a random input."""
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).normal(size=_dims(model.graph.input[0])).astype(np.float32)
    (out,) = sess.run(None, {"input": x})
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_model_is_valid_and_runs(seed):
    model = random_cnn(seed)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    out = run_model(model, seed)
    assert list(out.shape) == _dims(model.graph.output[0])
    assert np.isfinite(out).all()


def test_deterministic():
    for seed in (0, 1, 12345):
        assert random_cnn(seed).SerializeToString() == random_cnn(seed).SerializeToString()


def test_coverage_of_ops_and_opsets():
    ops, opsets = collections.Counter(), set()
    for seed in SEEDS:
        model = random_cnn(seed)
        opsets.add(model.opset_import[0].version)
        ops.update(n.op_type for n in model.graph.node)
    assert ALL_OPS <= set(ops), ALL_OPS - set(ops)
    assert set(ops) <= ALL_OPS | RARE_OPS, set(ops) - ALL_OPS - RARE_OPS
    assert opsets == set(OPSETS)


def test_attention_blocks_come_fused_and_separate():
    """Seeds 0..199 hold both qkv forms, each graph runs, and in both forms groups of heads
    are found (a block of one head has none: its head dim stays blocked)."""
    from onnxprune.api import analyze

    forms = set()
    for seed in range(200):
        model = random_cnn(seed)
        ops = {n.op_type for n in model.graph.node}
        if "Softmax" not in ops:
            continue
        run_model(model, seed)
        if any(g.heads for g in analyze(model).groups):
            forms.add("fused" if "Squeeze" in ops else "separate")
    assert forms == {"fused", "separate"}


def test_small_max_nodes_gives_small_graphs():
    for seed in range(20):
        model = random_cnn(seed, max_nodes=1)
        run_model(model, seed)
        assert len(model.graph.node) <= 24  # one block + head (+ Constant nodes)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(graphs())
def test_strategy_draws_valid_models(model):
    assert np.isfinite(run_model(model)).all()
