"""Contrib and custom-domain ops (issue 12, items 2 and 3): onnxruntime's contrib ops prune like
their standard forms; a node of an unknown domain (a TensorRT plugin) blocks the channels that
reach it, stays as written, and the oracle runs on the part of the graph before it, which the
report names."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis.rules import RULES
from onnxprune.analysis.rules.contrib import fused_conv, standard_op_type
from onnxprune.analysis.rules.pointwise import unary
from onnxprune.cli.main import main
from onnxprune.errors import VerificationError
from onnxprune.rewrite.surgery import apply_plan
from onnxprune.verify import partial
from onnxprune.verify.oracle import verify
from tiny import Units, conv, make, node, prunes_exactly, zero_sinks

MS = "com.microsoft"


def _with_domains(model, *domains):
    for domain in domains:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def _cnn():
    """Conv-BN-Relu twice, a residual Add, GAP-Flatten-Gemm: what the optimiser fuses."""
    parts = [conv("x", "a", "w1", 3, 32, k=3, bias="b1"), conv("ar", "b", "w2", 32, 32, k=3),
             conv("br", "c", "w3", 32, 32, k=3, bias="b3")]
    nodes = [parts[0][0], node("Relu", ["a"], ["ar"]), parts[1][0],
             node("BatchNormalization", ["b", "g", "be", "mu", "var"], ["bn"]),
             node("Relu", ["bn"], ["br"]), parts[2][0], node("Add", ["c", "ar"], ["s"]),
             node("GlobalAveragePool", ["s"], ["p"]), node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1)]
    inits = {k: v for _, shapes in parts for k, v in shapes.items()}
    inits.update({"g": np.linspace(0.5, 1.5, 32).astype(np.float32), "be": (32,), "mu": (32,),
                  "var": np.linspace(1, 2, 32).astype(np.float32), "wf": (10, 32), "bf": (10,)})
    return make(nodes, {"x": [1, 3, 16, 16]}, ["logits"], inits)


def _ort_optimised(model, path):
    """The file onnxruntime's optimiser writes at the extended level."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def _ops(model):
    return sorted((n.domain, n.op_type) for n in model.graph.node)


def test_onnxruntime_optimised_file_prunes_and_keeps_its_fused_ops(tmp_path, capsys):
    optimised = _ort_optimised(_cnn(), tmp_path / "opt.onnx")
    fused = [op for op in _ops(optimised) if op == (MS, "FusedConv")]
    assert len(fused) == 2, _ops(optimised)
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main([str(tmp_path / "opt.onnx"), "--target-mem", "0.5", "-o", str(out),
                 "--report", str(report)]) == 0
    record = json.loads(report.read_text())
    verification = record["verification"]
    assert verification["max_relative_error"] <= verification["tolerance"]
    assert verification["proven_outputs"] == ["logits"] and verification["unproven_nodes"] == []
    assert record["after"]["mem"] <= 0.5 * record["before"]["mem"] and record["slices"]
    assert {s["initializer"] for s in record["slices"]} & {"w1", "w2"}  # FusedConv weights
    pruned = onnx.load(out)
    assert [op for op in _ops(pruned) if op[0]] == fused
    assert "covers the graph up to" not in capsys.readouterr().out


def test_fused_ops_count_in_memory_and_macs_as_their_standard_forms(tmp_path):
    """M counts Conv / Gemm / MatMul outputs: a FusedConv is a Conv, so the optimised file has
    the costs of the original (an optimised file must not make --target-mem easier)."""
    import onnxprune as op

    plain = op.analyze(_cnn()).costs.costs()
    fused = op.analyze(_ort_optimised(_cnn(), tmp_path / "opt.onnx")).costs.costs()
    assert (fused.mem, fused.macs) == (plain.mem, plain.macs)


def _detector():
    """A small CNN whose two heads feed a TensorRT EfficientNMS_TRT plugin node."""
    parts = [conv("x", "a", "w1", 3, 32, k=3, bias="b1"), conv("ar", "h", "w2", 32, 32, k=3),
             conv("hr", "boxes", "w3", 32, 4, bias="b3"),
             conv("hr", "scores", "w4", 32, 5, bias="b4")]
    nms = node("EfficientNMS_TRT", ["bx", "sc"], ["num", "det_boxes", "det_scores", "det_cls"],
               name="nms", domain="TRT", background_class=-1, box_coding=0, iou_threshold=0.45,
               max_output_boxes=100, plugin_version="1", score_activation=0,
               score_threshold=0.25)
    nodes = [parts[0][0], node("Relu", ["a"], ["ar"]), parts[1][0], node("Relu", ["h"], ["hr"]),
             parts[2][0], parts[3][0], node("Reshape", ["boxes", "s4"], ["bx"]),
             node("Reshape", ["scores", "s5"], ["sc"]), nms]
    inits = {k: v for _, shapes in parts for k, v in shapes.items()}
    inits.update({"s4": np.array([1, 4, 256], np.int64), "s5": np.array([1, 5, 256], np.int64)})
    model = make(nodes, {"x": [1, 3, 16, 16]}, [], inits)
    outs = [("num", TensorProto.INT32, [1, 1]), ("det_boxes", TensorProto.FLOAT, [1, 100, 4]),
            ("det_scores", TensorProto.FLOAT, [1, 100]), ("det_cls", TensorProto.INT32, [1, 100])]
    model.graph.output.extend(helper.make_tensor_value_info(*o) for o in outs)
    return _with_domains(model, "TRT")


def _masked_reference(original, slices, outputs):
    """The report's oracle, recomputed: the original cut at `outputs` (onnx's own extractor),
    every sink slice zeroed."""
    return _extract(zero_sinks(original, slices), outputs)


def _extract(model, outputs):
    inferred = onnx.shape_inference.infer_shapes(model)
    return onnx.utils.Extractor(inferred).extract_model(["x"], outputs)


def test_plugin_node_is_kept_and_the_report_names_what_was_proven(tmp_path, capsys):
    model = _detector()
    path, out, report = tmp_path / "det.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    onnx.save(model, path)
    assert main([str(path), "--target-mem", "0.5", "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "oracle covers the graph up to bx, sc; not run: TRT::EfficientNMS_TRT (node nms)" in text
    record = json.loads(report.read_text())
    verification = record["verification"]
    assert verification["proven_outputs"] == ["bx", "sc"]
    assert verification["unproven_nodes"] == [
        {"name": "nms", "op_type": "EfficientNMS_TRT", "domain": "TRT"}]
    assert verification["max_relative_error"] <= verification["tolerance"]
    head = [g for g in record["groups"] if "boxes" in g["tensors"]]
    assert head and not head[0]["prunable"]
    assert any("TRT::EfficientNMS_TRT" in r for r in head[0]["reasons"])
    assert any(s["initializer"] == "w1" for s in record["slices"])  # the trunk prunes
    assert not {"w3", "b3", "w4", "b4"} & {s["initializer"] for s in record["slices"]
                                           if s["role"] != "sink"}
    pruned = onnx.load(out)
    assert pruned.graph.node[-1] == model.graph.node[-1]  # the plugin, attributes and all
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    reference = _masked_reference(model, record["slices"], ["bx", "sc"])
    cut = _extract(pruned, ["bx", "sc"])
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           for m in (reference, cut)]
    for want, got in zip(*(s.run(None, feeds) for s in run)):
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_the_partial_oracle_is_not_vacuous():
    """A wrong prune still fails on the part before the plugin."""
    u = Units(_detector())
    analysis = u.analysis
    removed = np.zeros(analysis.channels.n_components, dtype=bool)
    removed[u.of("a")[:3]] = True
    pruned, slices = apply_plan(analysis.channels, removed)
    verdict = verify(analysis.model, pruned, slices, runs=1)
    assert slices and verdict.coverage.proven_outputs == ("bx", "sc")
    w2 = next(i for i in pruned.graph.initializer if i.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w2) * 1.05, "w2"))
    with pytest.raises(VerificationError):
        verify(analysis.model, pruned, slices, runs=1)


def test_nothing_after_a_plugin_is_pruned(tmp_path, capsys):
    """Conv -> custom node -> Conv -> Relu -> Conv: the middle channels could be pruned, but the
    oracle cannot run them, so they stay; the target is refused in one line (exit 2)."""
    c1, w1 = conv("x", "a", "w1", 3, 8, k=3)
    c2, w2 = conv("p", "b", "w2", 8, 8, k=3)
    c3, w3 = conv("br", "y", "w3", 8, 4)
    plugin = node("ScalePlugin", ["a"], ["p"], name="plug", domain="my.plugins", scale=2.0)
    model = _with_domains(make([c1, plugin, c2, node("Relu", ["b"], ["br"]), c3],
                               {"x": [1, 3, 8, 8]}, ["y"], {**w1, **w2, **w3}), "my.plugins")
    # the plugin's output declared with its shape: what follows it has static shapes too
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 8, 8, 8]))
    u = Units(model)
    assert u.blocked("a").all() and u.blocked("br").all()
    assert any("my.plugins::ScalePlugin" in r for r in u.reasons("a"))
    assert any("runs after my.plugins::ScalePlugin (node plug)" in r for r in u.reasons("br"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main([str(path), "--target-mem", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "reachable minimum" in err and len(err.splitlines()) == 1


def test_a_custom_domain_node_named_conv_is_not_a_conv():
    c1, w1 = conv("x", "a", "w1", 3, 8)
    fake = node("Conv", ["a", "wf"], ["b"], name="fake", domain="my.plugins", kernel_shape=[1, 1])
    c3, w3 = conv("b", "y", "w3", 8, 4)
    model = _with_domains(make([c1, fake, c3], {"x": [1, 3, 8, 8]}, ["y"],
                               {**w1, "wf": (8, 8, 1, 1), **w3}), "my.plugins")
    u = Units(model)
    assert not u.has_param("wf", 0) and not u.has_param("wf", 1)
    assert u.blocked("a").all()
    assert any("no channel rule for my.plugins::Conv" in r for r in u.reasons("a"))
    assert "Conv" in RULES and ("ai.onnx", "Conv") in RULES and ("my.plugins", "Conv") not in RULES
    assert RULES[(MS, "FusedConv")] is fused_conv and RULES[(MS, "Gelu")] is unary
    assert standard_op_type(fake) == "my.plugins::Conv"
    assert standard_op_type(node("FusedConv", ["a", "w"], ["b"], domain=MS)) == "Conv"
    assert standard_op_type(node("Conv", ["a", "w"], ["b"], domain="ai.onnx")) == "Conv"


# --- the contrib rules on tiny graphs: exact units, and random plans pass the oracle in ORT ---

def _ms(nodes, inputs, outputs, inits, opset=17):
    return _with_domains(make(nodes, inputs, outputs, inits, opset=opset), MS)


def test_fused_conv_is_a_conv_with_its_activation():
    nodes = [node("FusedConv", ["x", "w1", "b1"], ["a"], domain=MS, activation="Clip",
                  activation_params=[0.0, 6.0], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("FusedConv", ["a", "w2"], ["y"], domain=MS, activation="Relu",
                  kernel_shape=[1, 1])]
    m = _ms(nodes, {"x": [1, 3, 8, 8]}, ["y"], {"w1": (6, 3, 3, 3), "b1": (6,), "w2": (4, 6, 1, 1)})
    u = Units(m)
    assert u.distinct("a") and not u.blocked("a").any()
    for name, axis in (("w1", 0), ("b1", 0), ("w2", 1)):
        assert np.array_equal(u.of_param(name, axis), u.of("a"))
    assert u.blocked("y").all()
    assert prunes_exactly(m) > 0


def test_fused_conv_residual_input_couples_like_add():
    nodes = [node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             node("FusedConv", ["a", "w2", "b2", "a"], ["s"], domain=MS, activation="Relu",
                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Conv", ["s", "w3"], ["y"], kernel_shape=[1, 1])]
    m = _ms(nodes, {"x": [1, 3, 8, 8]}, ["y"],
            {"w1": (6, 3, 1, 1), "w2": (6, 6, 3, 3), "b2": (6,), "w3": (2, 6, 1, 1)})
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("s")) and u.distinct("s")
    assert np.array_equal(u.of_param("w2", 0), u.of("s"))
    assert np.array_equal(u.of_param("w2", 1), u.of("a"))
    assert prunes_exactly(m) > 0


def test_depthwise_fused_conv_keeps_its_group_attribute_consistent():
    nodes = [node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             node("FusedConv", ["a", "wd"], ["d"], domain=MS, activation="Relu", group=6,
                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Conv", ["d", "w3"], ["y"], kernel_shape=[1, 1])]
    m = _ms(nodes, {"x": [1, 3, 8, 8]}, ["y"],
            {"w1": (6, 3, 1, 1), "wd": (6, 1, 3, 3), "w3": (2, 6, 1, 1)})
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("d")) and u.distinct("d")
    analysis = u.analysis
    removed = np.zeros(analysis.channels.n_components, dtype=bool)
    removed[u.of("d")[:2]] = True
    pruned, _ = apply_plan(analysis.channels, removed)
    fused = next(n for n in pruned.graph.node if n.op_type == "FusedConv")
    assert helper.get_attribute_value(next(a for a in fused.attribute if a.name == "group")) == 4
    assert prunes_exactly(m) > 0


def test_fused_gemm_is_a_gemm_with_its_activation():
    nodes = [node("Flatten", ["x"], ["f"]),
             node("FusedGemm", ["f", "wa", "ba"], ["h"], domain=MS, transB=1, activation="Relu"),
             node("FusedGemm", ["h", "wb"], ["y"], domain=MS, activation="LeakyRelu",
                  activation_alpha=0.1)]
    m = _ms(nodes, {"x": [1, 12]}, ["y"], {"wa": (8, 12), "ba": (8,), "wb": (8, 3)})
    u = Units(m)
    assert u.distinct("h") and not u.blocked("h").any()
    assert np.array_equal(u.of_param("wa", 0), u.of("h"))
    assert np.array_equal(u.of_param("ba", 0), u.of("h"))
    assert np.array_equal(u.of_param("wb", 0), u.of("h"))
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("attrs,w_shape", [({"transB": 1, "alpha": 0.5}, (6, 12)),
                                           ({"transA": 1}, (12, 6)), ({}, (12, 6))])
def test_fused_matmul_reads_a_constant_weight_transposed(attrs, w_shape):
    """h (channels on its last axis, from a MatMul) -> FusedMatMul with a constant weight;
    with transA it reads h transposed (channels on axis 0)."""
    a = "ht" if attrs.get("transA") else "h"
    nodes = [node("MatMul", ["x", "w0"], ["h"]), node("Transpose", ["h"], ["ht"]),
             node("FusedMatMul", [a, "w"], ["y"], domain=MS, **attrs)]
    m = _ms(nodes, {"x": [5, 7]}, ["y"], {"w0": (7, 12), "w": w_shape})
    u = Units(m)
    assert u.distinct("h") and not u.blocked("h").any()
    assert np.array_equal(u.of_param("w", 1 if attrs.get("transB") else 0), u.of("h"))
    assert np.array_equal(u.of_param("w0", 1), u.of("h"))
    assert prunes_exactly(m) > 0


def test_fused_matmul_batch_transpose_moves_the_channel_axis():
    """transBatchA reads A[12, 2, 2] as [2, 12, 2]: A's channels (axis 0) land on the M axis
    and pass to the output's axis 1; B (a graph input) is summed over."""
    nodes = [node("MatMul", ["x", "w0"], ["h"]), node("Transpose", ["h"], ["ht"]),
             node("Reshape", ["ht", "s3"], ["a"]),
             node("FusedMatMul", ["a", "b"], ["m"], domain=MS, transBatchA=1),
             node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]), node("MatMul", ["mt", "w2"], ["y"])]
    m = _ms(nodes, {"x": [4, 7], "b": [2, 2, 5]}, ["y"],
            {"w0": (7, 12), "s3": np.array([12, 2, 2]), "w2": (12, 3)})
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("h")) and np.array_equal(u.of("m"), u.of("h"))
    assert u.distinct("m") and not u.blocked("m").any()
    assert np.array_equal(u.of_param("w2", 0), u.of("h"))
    assert prunes_exactly(m) > 0


def test_fused_matmul_of_two_activations_blocks_the_summed_channels():
    nodes = [node("MatMul", ["x", "wq"], ["q"]), node("MatMul", ["x", "wk"], ["k"]),
             node("FusedMatMul", ["q", "k"], ["s"], domain=MS, transB=1, alpha=0.25),
             node("MatMul", ["s", "wo"], ["y"])]
    m = _ms(nodes, {"x": [5, 7]}, ["y"], {"wq": (7, 8), "wk": (7, 8), "wo": (5, 3)})
    u = Units(m)
    assert u.blocked("q").all() and u.blocked("k").all()
    assert any("FusedMatMul" in r and "sums over the channels" in r for r in u.reasons("q"))


@pytest.mark.parametrize("op,inputs", [("BiasGelu", ["h", "b"]), ("FastGelu", ["h", "b"]),
                                       ("FastGelu", ["h"]), ("QuickGelu", ["h"]),
                                       ("Gelu", ["h"])])
def test_gelu_family_passes_channels_and_slices_the_bias(op, inputs):
    nodes = [node("MatMul", ["x", "w0"], ["h"]), node(op, inputs, ["g"], domain=MS),
             node("MatMul", ["g", "w1"], ["y"])]
    m = _ms(nodes, {"x": [5, 7]}, ["y"], {"w0": (7, 8), "b": (8,), "w1": (8, 3)})
    u = Units(m)
    assert np.array_equal(u.of("h"), u.of("g")) and u.distinct("g")
    assert not u.blocked("g").any()
    assert u.has_param("b", 0) == ("b" in inputs)
    if "b" in inputs:
        assert np.array_equal(u.of_param("b", 0), u.of("g"))
    assert np.array_equal(u.of_param("w1", 0), u.of("g"))
    assert prunes_exactly(m) > 0


def _bias_add():
    nodes = [node("MatMul", ["x", "w0"], ["h"]), node("MatMul", ["x", "w1"], ["r"]),
             node("BiasAdd", ["h", "b", "r"], ["s"], domain=MS)]
    m = _ms(nodes, {"x": [5, 7]}, [], {"w0": (7, 8), "w1": (7, 8), "b": (8,)})
    m.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [5, 8]))
    return m


def test_bias_add_couples_input_skip_and_bias(monkeypatch):
    """BiasAdd has no CPU kernel: its channels are blocked as unverifiable here; as if it had
    one, its rule couples input, skip and bias."""
    u = Units(_bias_add())
    assert any("onnxruntime cannot run com.microsoft::BiasAdd" in r for r in u.reasons("h"))
    kernels = partial._cpu_kernels() | {(MS, "BiasAdd")}
    monkeypatch.setattr(partial, "_cpu_kernels", lambda: kernels)
    u = Units(_bias_add())
    assert np.array_equal(u.of("h"), u.of("s")) and np.array_equal(u.of("r"), u.of("s"))
    assert np.array_equal(u.of_param("b", 0), u.of("s")) and u.distinct("s")
    assert u.reasons("h") == ["graph output"]


def test_skip_layer_norm_blocks_the_normalised_channels():
    """[1, 5, 8] tensors with their channels on the last axis (from a MatMul, unsqueezed)."""
    nodes = [node("MatMul", ["x", "w0"], ["h2"]), node("MatMul", ["x", "w1"], ["r2"]),
             node("Unsqueeze", ["h2", "ax"], ["h"]), node("Unsqueeze", ["r2", "ax"], ["r"]),
             node("SkipLayerNormalization", ["h", "r", "gamma", "beta", "bias"],
                  ["n", "", "", "sum"], domain=MS, epsilon=1e-5),
             node("MatMul", ["n", "w2"], ["y"]), node("MatMul", ["sum", "w3"], ["z"])]
    m = _ms(nodes, {"x": [5, 7]}, ["y", "z"],
            {"w0": (7, 8), "w1": (7, 8), "ax": np.array([0]), "gamma": (8,), "beta": (8,),
             "bias": (8,), "w2": (8, 3), "w3": (8, 3)})
    u = Units(m)
    for name in ("h2", "r2", "h", "r", "sum", "n"):
        assert np.array_equal(u.of(name), u.of("n")) and u.blocked(name).all()
    assert any("LayerNormalization normalises over the channels" in r for r in u.reasons("h"))


def test_simplified_layer_norm_uses_the_standard_defaults():
    """onnxruntime registers SimplifiedLayerNormalization in the standard domain, with no
    schema in onnx: the LayerNormalization rule with its defaults (axis -1) decides."""
    nodes = [node("Conv", ["x", "w0"], ["h"], kernel_shape=[1, 1]),
             node("SimplifiedLayerNormalization", ["h", "gamma"], ["n"], axis=-1),
             node("Conv", ["n", "w1"], ["y"], kernel_shape=[1, 1])]
    m = make(nodes, {"x": [1, 3, 4, 6]}, ["y"], {"w0": (6, 3, 1, 1), "gamma": (6,),
                                                 "w1": (2, 6, 1, 1)})
    u = Units(m)
    assert u.distinct("h") and not u.blocked("h").any()  # axis -1 is W, not the channels
    assert prunes_exactly(m) > 0
