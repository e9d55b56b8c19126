"""INT8 in: QDQ models (onnxruntime's `quantize_static`) prune; QOperator models are refused.

Weights stored quantized (`DequantizeLinear` of initializers) slice with their per-channel
scales and zero points; activation QuantizeLinear / DequantizeLinear pairs pass channels
through; the oracle sets removed sink columns of an integer weight to its zero point.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.analysis.flow import Role, param_key
from onnxprune.api import analyze, random_plan
from onnxprune.cli.main import main
from onnxprune.errors import VerificationError
from onnxprune.rewrite.surgery import apply_plan
from onnxprune.verify import oracle
from onnxprune.verify.oracle import TOLERANCE, verify
from tiny import Units, make, node, prunes_exactly, small_resnet

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _quantize(float_path, out_path, symmetric: bool = True):
    """`quantize_static` in QDQ format, weights per channel, on 4 random samples."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.samples = iter([{"input": rng.standard_normal((1, 3, 16, 16), np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.samples, None)

    kind = QuantType.QInt8 if symmetric else QuantType.QUInt8
    quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=kind, weight_type=kind,
                    extra_options={"WeightSymmetric": symmetric})
    return out_path


@pytest.fixture(scope="module")
def qdq_paths(tmp_path_factory):
    """(float model, its QDQ INT8 model, the same with asymmetric uint8 weights)."""
    folder = tmp_path_factory.mktemp("qdq")
    float_path = folder / "float.onnx"
    onnx.save(small_resnet(width=16), float_path)
    return (float_path, _quantize(float_path, folder / "int8.onnx"),
            _quantize(float_path, folder / "uint8.onnx", symmetric=False))


def _ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _inits(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_qdq_model_prunes_through_the_cli(qdq_paths, tmp_path):
    _, qdq, _ = qdq_paths
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    assert main([str(qdq), "--target-mem", "0.5", "-o", str(out), "--report", str(report)]) == 0
    original, pruned, record = onnx.load(qdq), onnx.load(out), json.loads(report.read_text())
    assert {op: _ops(pruned)[op] for op in QDQ_OPS} == {op: _ops(original)[op] for op in QDQ_OPS}
    assert record["ratio"]["mem"] <= 0.5
    assert record["verification"]["max_relative_error"] <= TOLERANCE
    before, after = _inits(original), _inits(pruned)
    assert after["wc1_quantized"].dtype == np.int8
    assert after["wc1_quantized"].shape[0] < before["wc1_quantized"].shape[0]
    for dq in (n for n in pruned.graph.node if n.op_type == "DequantizeLinear"):
        data, scale, zero = (after.get(name) for name in dq.input)
        if data is not None and scale.ndim == 1:  # per-channel weights: one scale per row
            assert scale.shape[0] == zero.shape[0] == data.shape[0]
    removed = {(s["initializer"], s["axis"]): s["removed"] for s in record["slices"]}
    # identical tensors are stored once in the output (rewrite/share.py): read each sliced
    # scale / zero point under the name its DequantizeLinear reads now
    stored = {}
    for dq in (n for n in pruned.graph.node if n.op_type == "DequantizeLinear"):
        original_dq = next(o for o in original.graph.node if o.output[0] == dq.output[0])
        stored.update(zip(original_dq.input, dq.input))
    for name in ("wc1_scale", "wc1_zero_point", "bc1_quantized_scale"):
        assert removed[(name, 0)] == removed[("wc1_quantized", 0)]
        assert np.array_equal(after[stored[name]],
                              np.delete(before[name], removed[(name, 0)]))


def test_params_and_macs_count_weights_stored_quantized(qdq_paths, tmp_path):
    """A QDQ model has its float model's parameters (scales and zero points are not) and MACs."""
    records = []
    for path in qdq_paths[:2]:
        report = tmp_path / f"{path.stem}.json"
        assert main([str(path), "--target-mem", "0.5", "-o", str(tmp_path / path.name),
                     "--report", str(report)]) == 0
        records.append(json.loads(report.read_text())["before"])
    assert records[0]["params"] == records[1]["params"] > 0
    assert records[0]["macs"] == records[1]["macs"] > 0
    assert records[1]["weight_bytes"] < records[0]["weight_bytes"]


def _pruned(path, seed: int = 0):
    analysis = analyze(onnx.load(path))
    removed = random_plan(analysis, np.random.default_rng(seed))
    pruned, slices = apply_plan(analysis.channels, removed)
    return analysis, pruned, slices


def test_oracle_on_qdq_is_not_vacuous(qdq_paths):
    analysis, pruned, slices = _pruned(qdq_paths[1])
    assert any(s.role is Role.SINK and s.initializer.endswith("_quantized") for s in slices)
    verify(analysis.model, pruned, slices)
    weight = next(i for i in pruned.graph.initializer if i.name == "wf_quantized")
    value = numpy_helper.to_array(weight).copy()
    row, col = np.unravel_index(np.argmax(np.abs(value)), value.shape)
    value[row, col] = -value[row, col]  # one kept int8 weight changed
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    with pytest.raises(VerificationError):
        verify(analysis.model, pruned, slices)


def test_removed_sinks_of_asymmetric_weights_are_set_to_their_zero_point(qdq_paths,
                                                                          monkeypatch):
    analysis, pruned, slices = _pruned(qdq_paths[2])
    sinks = {s.initializer for s in slices if s.role is Role.SINK}
    zeros = oracle.zero_points(analysis.model, sinks)
    assert any(np.any(z != 0) for z in zeros.values())
    verify(analysis.model, pruned, slices)
    assert prunes_exactly(onnx.load(qdq_paths[2]), plans=3) == 3
    monkeypatch.setattr(oracle, "zero_points", lambda model, names: {})  # zeroed to 0: wrong
    with pytest.raises(VerificationError):
        verify(analysis.model, pruned, slices)


# tiny graphs: x -> Conv(w1) -> a -> Conv(DequantizeLinear(wq, sc, zp)) -> y -> Conv(w3) -> out

def _dq_conv(scale_shape=(4,), axis: int = 0, bias: bool = False, extra=()):
    rng = np.random.default_rng(1)
    inits = {"w1": (6, 3, 1, 1), "w3": (2, 4, 1, 1),
             "wq": rng.integers(-100, 100, (4, 6, 1, 1)).astype(np.int8),
             "sc": rng.uniform(0.01, 0.02, scale_shape).astype(np.float32),
             "zp": rng.integers(-5, 5, scale_shape).astype(np.int8)}
    nodes = [node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             node("DequantizeLinear", ["wq", "sc", "zp"], ["w2"], axis=axis)]
    inputs = ["a", "w2"]
    if bias:
        inits.update({"bq": rng.integers(-1000, 1000, (4,)).astype(np.int32),
                      "bsc": rng.uniform(0.001, 0.002, (4,)).astype(np.float32)})
        nodes.append(node("DequantizeLinear", ["bq", "bsc"], ["b2"], axis=0))
        inputs.append("b2")
    nodes += [node("Conv", inputs, ["y"], kernel_shape=[1, 1]),
              node("Conv", ["y", "w3"], ["out"], kernel_shape=[1, 1]), *extra]
    outputs = ["out"] + [n.output[0] for n in extra]
    return make(nodes, {"x": [1, 3, 5, 5]}, outputs, inits, opset=13)


def test_per_channel_weight_slices_with_its_scale_and_zero_point():
    model = _dq_conv(bias=True)
    u = Units(model)
    y = u.of("y")
    for name in ("wq", "sc", "zp", "bq", "bsc"):
        assert np.array_equal(u.of_param(name, 0), y), name
        assert u.channels.spaces[param_key(name, 0)].role is Role.PRODUCER
    assert np.array_equal(u.of_param("wq", 1), u.of("a"))
    assert u.channels.spaces[param_key("wq", 1)].role is Role.SINK
    assert u.distinct("y") and not u.blocked("y").any()
    assert not u.has_param("w2", 0) and not u.has_param("w2", 1)
    normalised = u.analysis.model
    assert _ops(normalised)["DequantizeLinear"] == 2
    assert _inits(normalised)["wq"].dtype == np.int8
    assert prunes_exactly(model) > 0


def test_per_tensor_scale_and_zero_point_stay():
    model = _dq_conv(scale_shape=())
    u = Units(model)
    assert np.array_equal(u.of_param("wq", 0), u.of("y"))
    assert not u.has_param("sc", 0) and not u.has_param("zp", 0)
    assert prunes_exactly(model) > 0


def test_scale_on_the_input_axis_is_a_sink_with_its_weight():
    """DequantizeLinear axis 1 (per input channel): scale and zero point slice as sinks."""
    model = _dq_conv(scale_shape=(6,), axis=1)
    u = Units(model)
    for name in ("wq", "sc", "zp"):
        axis = 1 if name == "wq" else 0
        assert np.array_equal(u.of_param(name, axis), u.of("a")), name
        assert u.channels.spaces[param_key(name, axis)].role is Role.SINK
    assert not u.has_param("sc", 1)
    assert prunes_exactly(model) > 0


def test_a_quantized_weight_read_by_an_unknown_op_blocks():
    """Gather has no channel rule: the weight's channels, read by it too, stay."""
    model = _dq_conv(extra=(node("Gather", ["w2", "idx"], ["u"]),))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0]), "idx"))
    u = Units(model)
    assert u.blocked("y").all()
    assert any("initializer wq is also read by Gather" in r for r in u.reasons("y"))


def _activation_qdq(scale_shape=(), axis: int = 1):
    rng = np.random.default_rng(2)
    inits = {"w1": (4, 3, 1, 1), "w2": (2, 4, 1, 1),
             "s": rng.uniform(0.01, 0.02, scale_shape).astype(np.float32),
             "z": np.zeros(scale_shape, np.int8)}
    nodes = [node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             node("QuantizeLinear", ["a", "s", "z"], ["q"], axis=axis),
             node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=axis),
             node("Conv", ["d", "w2"], ["out"], kernel_shape=[1, 1])]
    return make(nodes, {"x": [1, 3, 5, 5]}, ["out"], inits, opset=13)


def test_per_tensor_activation_qdq_passes_channels():
    model = _activation_qdq()
    u = Units(model)
    assert np.array_equal(u.of("q"), u.of("a")) and np.array_equal(u.of("d"), u.of("a"))
    assert u.distinct("a") and not u.blocked("a").any()
    assert prunes_exactly(model) > 0


def test_per_channel_activation_qdq_slices_its_parameters():
    model = _activation_qdq(scale_shape=(4,))
    u = Units(model)
    for name in ("s", "z"):
        assert np.array_equal(u.of_param(name, 0), u.of("a"))
        assert u.channels.spaces[param_key(name, 0)].role is Role.PASSTHROUGH
    assert u.distinct("a") and not u.blocked("a").any()
    assert prunes_exactly(model) > 0


def test_per_channel_activation_qdq_on_another_axis_blocks():
    u = Units(_activation_qdq(scale_shape=(5,), axis=2))
    assert u.blocked("a").all()
    assert any("per-channel QuantizeLinear along axis 2" in r for r in u.reasons("a"))


def test_qoperator_model_is_refused_in_one_line(tmp_path, capsys):
    inits = {"s": np.float32(0.02), "z": np.uint8(128), "ws": np.float32(0.01),
             "wz": np.int8(0), "w": np.ones((4, 3, 1, 1), np.int8)}
    nodes = [node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
             node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz", "s", "z"], ["yq"]),
             node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    path = tmp_path / "qop.onnx"
    onnx.save(make(nodes, {"input": [1, 3, 4, 4]}, ["y"], inits, opset=13), path)
    out = tmp_path / "out.onnx"
    assert main([str(path), "--target-mem", "0.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "QOperator" in err and "QLinearConv" in err and "QDQ" in err
    assert not out.exists()



def test_l1_scores_read_quantized_weights_dequantized(qdq_paths):
    """The data-free ranking of a QDQ model is that of its float model up to rounding: norms
    of dequantized rows, not of raw int8 rows plus scales and int32 biases."""
    from onnxprune.config import Criterion
    from onnxprune.plan.importance import data_free_scores

    float_path, int8_path, _ = qdq_paths
    scores = {}
    for name, path in (("float", float_path), ("int8", int8_path)):
        analysis = analyze(path)
        prunable = ~analysis.channels.blocked
        per_unit = data_free_scores(analysis.channels, Criterion.L1, 0)[prunable]
        scores[name] = np.sort(per_unit)
    assert len(scores["float"]) == len(scores["int8"])
    np.testing.assert_allclose(scores["int8"], scores["float"], rtol=0.05)
