"""Per-rule tiny graphs: the exact channel units each rule must produce, must-prune and
must-block cases. Each prunable graph is also pruned by random plans and checked by the oracle."""
import numpy as np
import pytest

from onnxprune.analysis.flow import Role
from onnxprune.analysis.rules import RULES
from onnxprune.api import prune
from onnxprune.config import PruneConfig, Target, TargetKind
from onnxprune.plan.planner import reachable_minimum
from onnxprune.report.record import analysis_text, group_records, prune_record
from tiny import Units, conv, make, node, prunes_exactly


def test_conv_chain_units_are_single_channels():
    c1, w1 = conv("x", "a", "w1", 3, 6, k=3, bias="b1")
    c2, w2 = conv("r", "y", "w2", 6, 4)
    m = make([c1, node("Relu", ["a"], ["r"]), c2], {"x": [1, 3, 8, 8]}, ["y"], {**w1, **w2})
    u = Units(m)
    assert u.distinct("a") and np.array_equal(u.of("a"), u.of("r"))
    assert np.array_equal(u.of_param("w1", 0), u.of("a"))
    assert np.array_equal(u.of_param("b1", 0), u.of("a"))
    assert np.array_equal(u.of_param("w2", 1), u.of("a"))
    assert not u.blocked("a").any()
    assert u.blocked("x").all() and "graph input" in u.reasons("x")
    assert u.blocked("y").all() and "graph output" in u.reasons("y")
    assert prunes_exactly(m) > 0


def test_residual_add_couples_both_branches():
    c1, w1 = conv("x", "a", "w1", 3, 6)
    c2, w2 = conv("a", "b", "w2", 6, 6, k=3)
    c3, w3 = conv("s", "y", "w3", 6, 2)
    m = make([c1, c2, node("Add", ["a", "b"], ["s"]), c3], {"x": [1, 3, 8, 8]}, ["y"],
             {**w1, **w2, **w3})
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("b")) and np.array_equal(u.of("a"), u.of("s"))
    assert u.distinct("s") and not u.blocked("s").any()
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("shape,param", [((6, 1, 1), True), ((1, 6, 1, 1), True), ((1,), False),
                                         ((1, 1, 1, 1), False)])
def test_per_channel_constant_is_a_unit_parameter(shape, param):
    c1, w1 = conv("x", "a", "w1", 3, 6)
    c2, w2 = conv("m", "y", "w2", 6, 2)
    m = make([c1, node("Mul", ["a", "k"], ["m"]), c2], {"x": [1, 3, 8, 8]}, ["y"],
             {**w1, **w2, "k": shape})
    u = Units(m)
    axis = len(shape) - 3
    assert u.has_param("k", axis) == param
    if param:
        assert np.array_equal(u.of_param("k", axis), u.of("a"))
    assert prunes_exactly(m) > 0


def test_squeeze_excite_gate_couples_with_trunk():
    c1, w1 = conv("x", "t", "w1", 3, 8)
    cs, ws = conv("p", "s", "ws", 8, 2, bias="bs")
    ce, we = conv("sr", "e", "we", 2, 8, bias="be")
    c2, w2 = conv("o", "y", "w2", 8, 3)
    nodes = [c1, node("GlobalAveragePool", ["t"], ["p"]), cs, node("Relu", ["s"], ["sr"]), ce,
             node("Sigmoid", ["e"], ["g"]), node("Mul", ["t", "g"], ["o"]), c2]
    m = make(nodes, {"x": [1, 3, 8, 8]}, ["y"], {**w1, **ws, **we, **w2})
    u = Units(m)
    assert np.array_equal(u.of("t"), u.of("g")) and np.array_equal(u.of("t"), u.of("o"))
    assert u.distinct("s") and not set(u.of("s")) & set(u.of("t"))
    assert prunes_exactly(m) > 0


def test_concat_keeps_channel_identity_at_offsets():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c2, w2 = conv("x", "b", "w2", 3, 5)
    c3, w3 = conv("c", "y", "w3", 9, 2)
    m = make([c1, c2, node("Concat", ["a", "b"], ["c"], axis=1), c3], {"x": [1, 3, 8, 8]},
             ["y"], {**w1, **w2, **w3})
    u = Units(m)
    assert np.array_equal(u.of("c"), np.r_[u.of("a"), u.of("b")])
    assert u.distinct("c")
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("opset,form", [(11, "attr"), (13, "input"), (18, "num_outputs")])
def test_split_on_channels_by_offsets(opset, form):
    c1, w1 = conv("x", "a", "w1", 3, 8)
    c2, w2 = conv("p", "y", "w2", 4, 2)
    c3, w3 = conv("q", "z", "w3", 4, 2)
    inits = {**w1, **w2, **w3}
    if form == "attr":
        split = node("Split", ["a"], ["p", "q"], axis=1, split=[4, 4])
    elif form == "input":
        split = node("Split", ["a", "sizes"], ["p", "q"], axis=1)
        inits["sizes"] = np.array([4, 4], np.int64)
    else:
        split = node("Split", ["a"], ["p", "q"], axis=1, num_outputs=2)
    m = make([c1, split, c2, c3, node("Add", ["y", "z"], ["o"])], {"x": [1, 3, 8, 8]}, ["o"],
             inits, opset=opset)
    u = Units(m)
    assert np.array_equal(u.of("a"), np.r_[u.of("p"), u.of("q")])
    assert prunes_exactly(m) > 0


def test_slice_of_channels():
    c1, w1 = conv("x", "a", "w1", 3, 8)
    c2, w2 = conv("s", "y", "w2", 3, 2)
    c3, w3 = conv("a", "z", "w3", 8, 2)
    inits = {**w1, **w2, **w3, "st": np.array([2], np.int64), "en": np.array([5], np.int64),
             "ax": np.array([1], np.int64)}
    m = make([c1, node("Slice", ["a", "st", "en", "ax"], ["s"]), c2, c3,
              node("Add", ["y", "z"], ["o"])], {"x": [1, 3, 8, 8]}, ["o"], inits)
    u = Units(m)
    assert np.array_equal(u.of("s"), u.of("a")[2:5])
    assert prunes_exactly(m, plans=6) > 0


def test_depthwise_and_grouped_conv_remove_whole_groups():
    c1, w1 = conv("x", "a", "w1", 3, 8)
    dw, wd = conv("a", "d", "wd", 8, 8, k=3, group=8)
    gc, wg = conv("d", "g", "wg", 8, 4, k=3, group=2)
    c2, w2 = conv("g", "y", "w2", 4, 2)
    m = make([c1, dw, gc, c2], {"x": [1, 3, 8, 8]}, ["y"], {**w1, **wd, **wg, **w2})
    u = Units(m)
    # depthwise: input channel c is output channel c
    assert np.array_equal(u.of("a"), u.of("d"))
    # grouped (2 groups, 4 in / 2 out per group): one unit per group, spanning both convs
    labels = u.of("d")
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
    assert np.array_equal(u.of("g"), np.repeat([labels[0], labels[4]], 2))
    assert prunes_exactly(m, plans=6) > 0


def test_channel_shuffle_is_a_permutation():
    c1, w1 = conv("x", "a", "w1", 3, 6)
    c2, w2 = conv("s", "y", "w2", 6, 2)
    inits = {**w1, **w2, "sh5": np.array([1, 2, 3, 8, 8], np.int64),
             "sh4": np.array([1, 6, 8, 8], np.int64)}
    nodes = [c1, node("Reshape", ["a", "sh5"], ["r"]),
             node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             node("Reshape", ["t", "sh4"], ["s"]), c2]
    m = make(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)
    u = Units(m)
    a, s = u.of("a"), u.of("s")
    for i in range(2):          # group
        for j in range(3):      # channel within group
            assert s[j * 2 + i] == a[i * 3 + j]
            assert a[i * 3 + j] == a[j]    # channel j of every group goes together
    assert prunes_exactly(m) > 0


def test_flatten_gemm_owns_feature_blocks():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    m = make([c1, node("Flatten", ["a"], ["f"]), node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)],
             {"x": [1, 3, 2, 2]}, ["y"], {**w1, "wg": (5, 16), "bg": (5,)})
    u = Units(m)
    assert np.array_equal(u.of_param("wg", 1), np.repeat(u.of("a"), 4))
    assert prunes_exactly(m) > 0


def test_reshape_to_vector_is_rewritten():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    m = make([c1, node("Reshape", ["a", "shape"], ["f"]),
              node("MatMul", ["f", "wm"], ["y"])], {"x": [1, 3, 2, 2]}, ["y"],
             {**w1, "shape": np.array([1, 16], np.int64), "wm": (16, 5)})
    u = Units(m)
    assert np.array_equal(u.of_param("wm", 0), np.repeat(u.of("a"), 4))
    assert prunes_exactly(m) > 0


def test_channels_last_matmul_and_layout_ops():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    nodes = [c1, node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             node("MatMul", ["t", "wm"], ["h"]), node("Relu", ["h"], ["r"]),
             node("MatMul", ["r", "wo"], ["y"])]
    m = make(nodes, {"x": [1, 3, 4, 4]}, ["y"], {**w1, "wm": (4, 6), "wo": (6, 5)})
    u = Units(m)
    assert np.array_equal(u.of("t"), u.of("a")) and np.array_equal(u.of_param("wm", 0), u.of("a"))
    assert u.distinct("h") and not u.blocked("h").any()
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("op,kwargs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}),
                                       ("Sigmoid", {}), ("HardSigmoid", {}), ("HardSwish", {}),
                                       ("Tanh", {}), ("Elu", {}), ("Selu", {}), ("Softplus", {}),
                                       ("Mish", {}), ("Erf", {}), ("Dropout", {}),
                                       ("Clip", {}), ("MaxPool", {"kernel_shape": [2, 2]}),
                                       ("AveragePool", {"kernel_shape": [2, 2]}),
                                       ("GlobalMaxPool", {}), ("InstanceNormalization", {})])
def test_passthrough_ops(op, kwargs):
    c1, w1 = conv("x", "a", "w1", 3, 5)
    c2, w2 = conv("p", "y", "w2", 5, 2)
    inputs, inits = ["a"], {**w1, **w2}
    if op == "InstanceNormalization":
        inputs, inits = ["a", "sc", "bi"], {**inits, "sc": (5,), "bi": (5,)}
    m = make([c1, node(op, inputs, ["p"], **kwargs), c2], {"x": [1, 3, 8, 8]}, ["y"], inits,
             opset=18)
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("p")) and u.distinct("p")
    assert prunes_exactly(m) > 0


def test_batchnorm_and_prelu_params_follow_the_channel():
    c1, w1 = conv("x", "a", "w1", 3, 5)
    c2, w2 = conv("p", "y", "w2", 5, 2)
    var = np.abs(np.random.default_rng(1).standard_normal(5)).astype(np.float32) + 0.5
    inits = {**w1, **w2, "s": (5,), "b": (5,), "mu": (5,), "var": var, "slope": (5, 1, 1)}
    m = make([c1, node("BatchNormalization", ["a", "s", "b", "mu", "var"], ["n"]),
              node("PRelu", ["n", "slope"], ["p"]), c2], {"x": [1, 3, 8, 8]}, ["y"], inits)
    u = Units(m)
    for name in ("s", "b", "mu", "var", "slope"):
        assert np.array_equal(u.of_param(name, 0), u.of("a"))
    assert prunes_exactly(m) > 0


def test_resize_with_sizes_and_reduce_over_space():
    c1, w1 = conv("x", "a", "w1", 3, 5)
    c2, w2 = conv("r", "y", "w2", 5, 2)
    inits = {**w1, **w2, "sizes": np.array([1, 5, 8, 8], np.int64)}
    nodes = [c1, node("Resize", ["a", "", "", "sizes"], ["r"], mode="nearest"), c2,
             node("ReduceMean", ["y"], ["o"], axes=[2, 3], keepdims=0)]
    m = make(nodes, {"x": [1, 3, 4, 4]}, ["o"], inits)
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("r"))
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("make_node,reason", [
    (lambda: node("Softmax", ["a"], ["p"], axis=1), "Softmax normalises across the channels"),
    (lambda: node("LayerNormalization", ["a", "g"], ["p"], axis=1), "LayerNormalization"),
    (lambda: node("DepthToSpace", ["a"], ["p"], blocksize=1), "no channel rule for DepthToSpace"),
    (lambda: node("ReduceMean", ["a"], ["p"], axes=[1], keepdims=1), "reduces over the channel"),
    (lambda: node("Pad", ["a", "pads"], ["p"], mode="reflect"), "Pad crops, reflects or repeats"),
])
def test_ops_that_mix_channels_block_with_a_reason(make_node, reason):
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c_in = {"reduces over the channel": 1, "Pad crops, reflects or repeats": 6}.get(reason, 4)
    c2, w2 = conv("p", "y", "w2", c_in, 2)
    inits = {**w1, **w2, "g": (4, 4, 4), "pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)}
    m = make([c1, make_node(), c2], {"x": [1, 3, 4, 4]}, ["y"], inits, opset=17)
    u = Units(m)
    assert u.blocked("a").all()
    assert any(reason in r for r in u.reasons("a")), u.reasons("a")


def test_weight_tying_couples_channels():
    c1, w1 = conv("x", "a", "w", 3, 3)
    c2, _ = conv("a", "b", "w", 3, 3)
    c3, w3 = conv("b", "y", "w3", 3, 2)
    m = make([c1, c2, c3], {"x": [1, 3, 4, 4]}, ["y"], {**w1, **w3})
    u = Units(m)
    # W is [3, 3]: axis 0 (outputs of both convs) and axis 1 (inputs of both) are shared
    assert np.array_equal(u.of("a"), u.of("b"))
    assert u.blocked("a").all()  # x (graph input) shares W's input axis with a


def test_identity_is_dropped_by_normalisation():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c2, w2 = conv("i", "y", "w2", 4, 2)
    m = make([c1, node("Identity", ["a"], ["i"]), c2], {"x": [1, 3, 4, 4]}, ["y"], {**w1, **w2})
    u = Units(m)
    assert all(n.op_type != "Identity" for n in u.analysis.model.graph.node)
    assert np.array_equal(u.of_param("w2", 1), u.of("a"))
    assert prunes_exactly(m) > 0


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group):
    c1, w1 = conv("x", "a", "w1", 3, 4)
    up = node("ConvTranspose", ["a", "wt", "bt"], ["u"], group=group, kernel_shape=[2, 2],
              strides=[2, 2])
    c2, w2 = conv("u", "y", "w2", 6, 2)
    m = make([c1, up, c2], {"x": [1, 3, 4, 4]}, ["y"],
             {**w1, **w2, "wt": (4, 6 // group, 2, 2), "bt": (6,)})
    u = Units(m)
    if group == 1:
        assert np.array_equal(u.of_param("wt", 0), u.of("a")) and u.distinct("u")
        assert np.array_equal(u.of_param("wt", 1), u.of("u"))
    else:
        assert len(set(u.of("a")[:2])) == 1 and set(u.of("u")[:3]) == set(u.of("a")[:2])
    assert prunes_exactly(m, plans=6) > 0


def test_spatial_pad_gelu_and_where_pass_channels():
    c1, w1 = conv("x", "a", "w1", 3, 5)
    c2, w2 = conv("w", "y", "w2", 5, 2, k=3)
    inits = {**w1, **w2, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "cond": np.array([[[True]], [[False]], [[True]], [[True]], [[False]]])}
    nodes = [c1, node("Pad", ["a", "pads"], ["p"]), node("Gelu", ["p"], ["g"]),
             node("Where", ["cond", "g", "p"], ["w"]), c2]
    m = make(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits, opset=20)
    u = Units(m)
    assert np.array_equal(u.of("a"), u.of("w")) and u.distinct("w")
    assert np.array_equal(u.of_param("cond", 0), u.of("a"))
    assert prunes_exactly(m) > 0


def test_grouped_conv_falls_back_to_per_index_units_when_groups_collapse():
    """ResNeSt-style radix sum ties channel j of group 0 to channel j of group 1: whole-group
    units would make the conv one unit; channel j of every group is one unit instead."""
    c1, w1 = conv("x", "a", "w1", 3, 8)
    gc, wg = conv("a", "g", "wg", 8, 8, k=3, group=2)
    c2, w2 = conv("s", "y", "w2", 4, 2)
    inits = {**w1, **wg, **w2, "sh": np.array([1, 2, 4, 4, 4], np.int64),
             "ax": np.array([1], np.int64)}
    nodes = [c1, gc, node("Reshape", ["g", "sh"], ["r"]),
             node("ReduceSum", ["r", "ax"], ["s"], keepdims=0), c2]
    m = make(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits)
    u = Units(m)
    g, a = u.of("g"), u.of("a")
    assert len(np.unique(g)) == 4 and np.array_equal(g[:4], g[4:])
    assert len(np.unique(a)) == 4 and np.array_equal(a[:4], a[4:])
    assert not u.blocked("g").any()
    assert prunes_exactly(m, plans=6) > 0


def test_constant_pad_of_channels_shifts_them_and_blocks_the_new_ones():
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c2, w2 = conv("p", "y", "w2", 6, 2)
    pads = np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)
    m = make([c1, node("Pad", ["a", "pads"], ["p"]), c2], {"x": [1, 3, 4, 4]}, ["y"],
             {**w1, **w2, "pads": pads})
    u = Units(m)
    assert np.array_equal(u.of("p")[1:5], u.of("a"))
    assert u.blocked("p")[[0, 5]].all() and not u.blocked("a").any()
    assert prunes_exactly(m) > 0


def test_attention_passes_value_channels_and_blocks_summed_ones():
    cq, wq = conv("x", "q", "wq", 3, 8)
    ck, wk = conv("x", "k", "wk", 3, 8)
    cv, wv = conv("x", "v", "wv", 3, 6)
    co, wo = conv("o", "y", "wo", 6, 2)
    inits = {**wq, **wk, **wv, **wo, "s8": np.array([1, 8, 16], np.int64),
             "s6": np.array([1, 6, 16], np.int64), "s4": np.array([1, 6, 4, 4], np.int64)}
    nodes = [cq, ck, cv, node("Reshape", ["q", "s8"], ["q3"]),
             node("Transpose", ["q3"], ["qt"], perm=[0, 2, 1]),
             node("Reshape", ["k", "s8"], ["k3"]),
             node("MatMul", ["qt", "k3"], ["att"]), node("Softmax", ["att"], ["p"], axis=-1),
             node("Reshape", ["v", "s6"], ["v3"]),
             node("Transpose", ["v3"], ["vt"], perm=[0, 2, 1]),
             node("MatMul", ["p", "vt"], ["ctx"]),
             node("Transpose", ["ctx"], ["ct"], perm=[0, 2, 1]),
             node("Reshape", ["ct", "s4"], ["o"]), co]
    m = make(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits)
    u = Units(m)
    assert u.blocked("q").all() and u.blocked("k").all()
    assert not u.blocked("v").any() and u.distinct("v")
    assert np.array_equal(u.of("ctx"), u.of("v")) and np.array_equal(u.of_param("wo", 1), u.of("v"))
    assert prunes_exactly(m) > 0


def _add_of(b_node, b_inputs: dict, inits: dict | None = None):
    """x -> Conv -> a; s = Add(a, b); s -> Conv -> y, with b made by `b_node` or a graph input."""
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c2, w2 = conv("s", "y", "w2", 4, 2)
    nodes = [c1] + ([b_node] if b_node is not None else []) + [node("Add", ["a", "b"], ["s"]), c2]
    return make(nodes, {"x": [1, 3, 4, 4], **b_inputs}, ["y"], {**w1, **w2, **(inits or {})})


@pytest.mark.parametrize("b_node,b_input", [
    (None, [1, 4, 4, 4]),                                              # a graph input
    (node("DepthToSpace", ["x4"], ["b"], blocksize=1), [1, 4, 4, 4]),  # an op without a rule
])
def test_add_with_channels_of_unknown_origin_blocks_with_a_structural_reason(b_node, b_input):
    m = _add_of(b_node, {"b" if b_node is None else "x4": b_input})
    u = Units(m)
    assert u.blocked("a").all() and np.array_equal(u.of("a"), u.of("b"))
    expected = "graph input" if b_node is None else "no channel rule for DepthToSpace"
    assert any(expected in r for r in u.reasons("a")), u.reasons("a")
    assert u.rule_errors("a") == [] and u.channels.rule_errors == []


@pytest.mark.parametrize("b_node,b_inputs,inits", [
    (conv("x", "b", "wb", 3, 1)[0], {}, conv("x", "b", "wb", 3, 1)[1]),   # [1, 1, H, W]
    (None, {"b": [1, 1, 4, 4]}, {}),                                      # [1, 1, H, W] input
    (None, {"b": []}, {}),                                                # a scalar input
    (node("ReduceMean", ["x"], ["b"], keepdims=0), {}, {}),               # a scalar activation
    (node("Relu", ["s0"], ["b"]), {"s0": []}, {}),                        # ... through a unary op
])
def test_add_with_a_broadcast_activation_keeps_the_channels_prunable(b_node, b_inputs, inits):
    m = _add_of(b_node, b_inputs, inits)
    u = Units(m)
    assert u.distinct("a") and not u.blocked("a").any()
    assert np.array_equal(u.of("a"), u.of("s"))
    assert u.channels.rule_errors == []
    assert prunes_exactly(m) > 0


def _broken(node, ctx):
    raise AttributeError("'NoneType' object has no attribute 'axis'\nmore detail")


def _relu_between_convs():
    """x -> Conv -> a -> Relu -> r -> Conv -> b -> Sigmoid -> g -> Conv -> y."""
    c1, w1 = conv("x", "a", "w1", 3, 4)
    c2, w2 = conv("r", "b", "w2", 4, 6)
    c3, w3 = conv("g", "y", "w3", 6, 2)
    nodes = [c1, node("Relu", ["a"], ["r"], name="relu"), c2, node("Sigmoid", ["b"], ["g"]), c3]
    return make(nodes, {"x": [1, 3, 4, 4]}, ["y"], {**w1, **w2, **w3})


def test_a_rule_that_raises_propagates_under_debug(monkeypatch):
    monkeypatch.setitem(RULES, "Relu", _broken)
    monkeypatch.setenv("ONNXPRUNE_DEBUG", "1")
    with pytest.raises(AttributeError, match="no attribute 'axis'"):
        Units(_relu_between_convs())


def test_a_rule_that_raises_is_a_rule_error_listed_apart(monkeypatch):
    monkeypatch.setitem(RULES, "Relu", _broken)
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)
    u = Units(_relu_between_convs())
    reason = ("rule error in Relu node relu: "
              "AttributeError: 'NoneType' object has no attribute 'axis'")
    assert [e.reason for e in u.channels.rule_errors] == [reason]
    assert u.blocked("a").all() and u.blocked("r").all()
    assert u.reasons("a") == [] and u.rule_errors("a") == [reason]
    assert u.reasons("r") == [] and u.rule_errors("r") == [f"output of {reason}"]
    assert not u.blocked("b").any()  # the rest of the model is analysed as usual
    records = {r["tensors"][0]: r for r in group_records(u.analysis)}
    assert records["a"]["reasons"] == [] and records["a"]["rule_errors"] == [reason]
    assert records["x"]["reasons"] == ["graph input"] and records["x"]["rule_errors"] == []
    minimum = reachable_minimum(u.channels, u.analysis.groups, u.analysis.costs, 1)
    text = analysis_text(u.analysis, minimum)
    assert "blocked by a rule error (see below)" in text
    assert "rule errors (bugs in onnxprune" in text
    assert "  Relu node relu: AttributeError: 'NoneType' object has no attribute 'axis'" in text


def test_the_json_report_lists_rule_errors_apart(monkeypatch):
    monkeypatch.setitem(RULES, "Relu", _broken)
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)
    config = PruneConfig(Target(TargetKind.MEM, 0.9), round_to=1)
    result = prune(_relu_between_convs(), config)
    assert result.slices and all(isinstance(s.role, Role) for s in result.slices)
    record = prune_record(result, config, "in.onnx", "out.onnx")
    assert record["rule_errors"] == [{"node": "relu", "op_type": "Relu", "message":
                                      "AttributeError: 'NoneType' object has no attribute 'axis'"}]
    by_tensor = {g["tensors"][0]: g for g in record["groups"]}
    assert by_tensor["a"]["rule_errors"] and not by_tensor["a"]["reasons"]
    assert by_tensor["b"]["prunable"] and by_tensor["b"]["rule_errors"] == []
    assert {s["role"] for s in record["slices"]} <= {"producer", "sink", "passthrough"}
    assert "sink" in {s["role"] for s in record["slices"]}
