"""calibrate.executor: an ONNX graph run as a torch module must equal onnxruntime.

Tiny hand-built graphs per tricky op (pads, ceil_mode, Resize modes, Slice steps, Split forms,
Gemm, Pad modes, opset variants) against onnxruntime with graph optimisation disabled; the
training behaviour (BatchNormalization running statistics, Dropout); unsupported models;
gradients; write_back; and the zoo (SMALL_ZOO at 64x64 by default, everything under -m slow).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from calibrate.executor import OnnxModule, UnsupportedModel
from onnxprune.errors import UserError
from onnxprune.model.runtime import session

node = helper.make_node
INT_MAX = 2**63 - 1
_RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------- helpers

def make(nodes, inputs, outputs, inits=None, opset=17):
    """inputs: name -> shape (float) or (TensorProto type, shape); inits: name -> array."""
    values = []
    for name, spec in inputs.items():
        typed = len(spec) == 2 and isinstance(spec[1], tuple)
        elem, shape = spec if typed else (TensorProto.FLOAT, spec)
        values.append(helper.make_tensor_value_info(name, elem, list(shape)))
    tensors = [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "t", values, [onnx.ValueInfoProto(name=o) for o in outputs],
                              tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def feeds_for(model, given=None):
    feeds = dict(given or {})
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in feeds and inp.name not in inits:
            shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            feeds[inp.name] = _RNG.standard_normal(shape).astype(np.float32)
    return feeds


def run_both(model, feeds=None, module=None):
    feeds = feeds_for(model, feeds)
    ref = session(model, optimize=False).run(None, feeds)
    module = module or OnnxModule(model)
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
    return ref, [o.numpy() for o in out]


def assert_same(model, feeds=None, module=None):
    ref, out = run_both(model, feeds, module)
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.shape == o.shape, (r.shape, o.shape)
        assert r.dtype == o.dtype, (r.dtype, o.dtype)
        if r.size:
            tol = 1e-4 * max(1.0, float(np.abs(r).max()))
            err = float(np.abs(r.astype(np.float64) - o).max())
            assert err <= tol, f"max |diff| {err:.3g} > {tol:.3g}"


def one(op, x_shape, opset=17, inits=None, extra_inputs=(), outputs=1, **attrs):
    """A single-node model reading x (float) plus named initializers / extra inputs."""
    names = ["x"] + list(extra_inputs)
    outs = [f"y{i}" for i in range(outputs)]
    return make([node(op, names, outs, **attrs)], {"x": x_shape}, outs, inits, opset)


def arr(values, dtype=np.int64):
    return np.array(values, dtype=dtype)


# ---------------------------------------------------------------------------------- conv

W = _RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
CONV_CASES = {
    "asymmetric": {"pads": [0, 1, 2, 1], "strides": [2, 1]},
    "dilated": {"pads": [2, 2, 2, 2], "dilations": [2, 2]},
    "same_upper": {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    "same_lower": {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    "valid": {"auto_pad": "VALID", "strides": [2, 3]},
}


@pytest.mark.parametrize("attrs", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv(attrs):
    assert_same(one("Conv", (2, 4, 9, 8), inits={"w": W, "b": W[:, 0, 0, 0]},
                    extra_inputs=("w", "b"), **attrs))


def test_conv_grouped_1d_3d():
    w = _RNG.standard_normal((6, 2, 3)).astype(np.float32)
    assert_same(one("Conv", (1, 4, 11), inits={"w": w}, extra_inputs=("w",), group=2,
                    pads=[1, 0]))
    w3 = _RNG.standard_normal((4, 1, 3, 3, 3)).astype(np.float32)
    assert_same(one("Conv", (1, 4, 5, 6, 7), inits={"w": w3}, extra_inputs=("w",), group=4,
                    pads=[1, 0, 1, 1, 2, 0]))


WT = _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
CONV_T_CASES = {
    "plain": {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    "asymmetric": {"strides": [2, 2], "pads": [0, 1, 2, 0]},
    "output_shape": {"strides": [2, 2], "output_shape": [10, 9]},
    "output_shape_upper": {"strides": [2, 2], "output_shape": [10, 9], "auto_pad": "SAME_UPPER"},
    "same_upper": {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    "same_lower": {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
    "large_output_padding": {"strides": [3, 3], "dilations": [2, 2], "output_padding": [2, 1],
                                 "pads": [1, 1, 1, 1]},
}


@pytest.mark.parametrize("attrs", CONV_T_CASES.values(), ids=CONV_T_CASES.keys())
def test_conv_transpose(attrs):
    assert_same(one("ConvTranspose", (1, 4, 5, 5), inits={"w": WT, "b": WT[0, :, 0, 0]},
                    extra_inputs=("w", "b"), **attrs))


def test_conv_transpose_grouped():
    w = _RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    assert_same(one("ConvTranspose", (1, 4, 5, 5), inits={"w": w}, extra_inputs=("w",),
                    group=2, strides=[2, 2], pads=[1, 0, 0, 1]))


# ---------------------------------------------------------------------------------- pools

POOL_CASES = {
    "ceil_pads": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    "ceil": {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    "asymmetric": {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 2, 0]},
    "asymmetric_ceil": {"kernel_shape": [3, 3], "strides": [3, 2], "pads": [1, 0, 0, 1],
                            "ceil_mode": 1},
    "large_pads": {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "same_upper": {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    "same_lower": {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    "plain": {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]},
}


@pytest.mark.parametrize("attrs", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_max_pool(attrs):
    assert_same(one("MaxPool", (1, 2, 9, 8), **attrs))


def test_max_pool_dilated_1d_3d():
    assert_same(one("MaxPool", (1, 2, 10, 9), kernel_shape=[2, 2], dilations=[2, 2],
                    pads=[1, 0, 1, 1], ceil_mode=1))
    assert_same(one("MaxPool", (1, 2, 11), kernel_shape=[3], strides=[2], pads=[1, 0]))
    assert_same(one("MaxPool", (1, 2, 5, 6, 7), kernel_shape=[2, 2, 2], strides=[2, 2, 2],
                    ceil_mode=1))


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("attrs", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_average_pool(attrs, include):
    assert_same(one("AveragePool", (1, 2, 9, 8), count_include_pad=include, **attrs))


def test_average_pool_1d_and_lp_pool():
    assert_same(one("AveragePool", (1, 2, 11), kernel_shape=[3], strides=[2], pads=[1, 2],
                    ceil_mode=1))
    assert_same(one("LpPool", (1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], p=2))
    for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        assert_same(one(op, (2, 3, 5, 4)))


# ---------------------------------------------------------------------------------- resize

def _resize(shape, scales=None, sizes=None, opset=19, **attrs):
    inits = {"roi": np.zeros(0, np.float32)}
    inputs = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        inputs.append("scales")
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        inputs += ["", "sizes"]
    return make([node("Resize", inputs, ["y"], **attrs)], {"x": shape}, ["y"], inits, opset)


COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_half_pixel_for_nn", "half_pixel_symmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
GEOMETRY = {"up2": {"scales": [1, 1, 2, 2]}, "up_odd": {"scales": [1, 1, 1.5, 2.5]},
            "down": {"scales": [1, 1, 0.5, 0.6]}, "sizes": {"sizes": [1, 2, 7, 13]},
            "up4": {"scales": [1, 1, 4, 4]}}


@pytest.mark.parametrize("geometry", GEOMETRY.values(), ids=GEOMETRY.keys())
@pytest.mark.parametrize("nearest", NEAREST)
@pytest.mark.parametrize("coords", COORDS)
def test_resize_nearest(coords, nearest, geometry):
    assert_same(_resize((1, 2, 5, 6), mode="nearest", coordinate_transformation_mode=coords,
                        nearest_mode=nearest, **geometry))


@pytest.mark.parametrize("geometry", GEOMETRY.values(), ids=GEOMETRY.keys())
@pytest.mark.parametrize("coords", COORDS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_cubic(mode, coords, geometry):
    assert_same(_resize((1, 2, 5, 6), mode=mode, coordinate_transformation_mode=coords,
                        **geometry))


@pytest.mark.parametrize("exclude", [0, 1])
def test_resize_cubic_options(exclude):
    assert_same(_resize((1, 1, 6, 6), scales=[1, 1, 1.7, 0.8], mode="cubic",
                        cubic_coeff_a=-0.5, exclude_outside=exclude))


def test_resize_other_forms():
    assert_same(_resize((1, 2, 4, 5), sizes=[8, 9], mode="linear", axes=[2, 3]))
    assert_same(_resize((1, 2, 4, 6), sizes=[1, 2, 8, 8], mode="nearest",
                        keep_aspect_ratio_policy="not_larger"))
    assert_same(_resize((1, 2, 7), scales=[1, 1, 2.5], mode="linear"))  # rank 3
    assert_same(make([node("Resize", ["x", "scales"], ["y"], mode="nearest")],
                     {"x": (1, 2, 3, 4)}, ["y"], {"scales": arr([1, 1, 2, 3], np.float32)},
                     opset=10))
    assert_same(make([node("Upsample", ["x", "scales"], ["y"], mode="linear")],
                     {"x": (1, 2, 3, 4)}, ["y"], {"scales": arr([1, 1, 2, 2], np.float32)},
                     opset=9))
    dynamic = make([node("Shape", ["x"], ["s"]), node("Mul", ["s", "two"], ["sizes"]),
                    node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")],
                   {"x": (1, 2, 3, 4)}, ["y"], {"two": arr([1, 1, 2, 2])}, opset=13)
    assert_same(dynamic)


# ---------------------------------------------------------------------------------- indexing

SLICES = {
    "negative_steps": ([5, -1], [0, -INT_MAX], [2, 3], [-2, -1]),
    "int_max": ([1, -3], [INT_MAX, INT_MAX], [1, 3], [1, 2]),
    "clamped": ([-100, 2], [100, -1], [0, 2], [1, 1]),
    "backwards_to_start": ([-1], [-INT_MAX - 1], [3], [-3]),
    "empty": ([4], [2], [2], [1]),
}


@pytest.mark.parametrize("case", SLICES.values(), ids=SLICES.keys())
def test_slice(case):
    starts, ends, axes, steps = (arr(v) for v in case)
    inits = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    assert_same(one("Slice", (2, 3, 7, 8), inits=inits,
                    extra_inputs=("starts", "ends", "axes", "steps")))


def test_slice_computed_and_opset9():
    model = make([node("Shape", ["x"], ["s"]), node("Gather", ["s", "i"], ["end"], axis=0),
                  node("Div", ["end", "two"], ["half"]),
                  node("Slice", ["x", "zero", "half", "ax"], ["y"])],
                 {"x": (2, 6, 4)}, ["y"],
                 {"i": arr([1]), "two": arr([2]), "zero": arr([0]), "ax": arr([1])})
    assert_same(model)
    assert_same(one("Slice", (4, 5), opset=9, starts=[1, -3], ends=[3, 100], axes=[0, 1]))


SPLITS = {
    "attr": (11, {"axis": 1, "split": [1, 3]}, ()),
    "input": (13, {"axis": 1}, ("sizes",)),
    "equal": (13, {"axis": -1}, ()),
    "num_outputs_uneven": (18, {"axis": 1, "num_outputs": 2}, ()),
}


@pytest.mark.parametrize("case", SPLITS.values(), ids=SPLITS.keys())
def test_split(case):
    opset, attrs, extra = case
    shape = (2, 4, 6) if "num_outputs" not in attrs else (2, 5, 6)
    assert_same(one("Split", shape, opset, inits={"sizes": arr([3, 1])}, extra_inputs=extra,
                    outputs=2, **attrs))


def test_gather_family():
    data = (3, 5, 4)
    assert_same(one("Gather", data, inits={"i": arr([[0, -1], [2, 1]])}, extra_inputs=("i",),
                    axis=1))
    assert_same(one("Gather", data, inits={"i": arr(-2)}, extra_inputs=("i",), axis=2))
    assert_same(one("GatherElements", data, inits={"i": arr(_RNG.integers(-5, 5, (3, 2, 4)))},
                    extra_inputs=("i",), axis=1))
    assert_same(one("GatherND", data, inits={"i": arr([[[1, 2]], [[0, -1]], [[4, 0]]])},
                    extra_inputs=("i",), batch_dims=1))
    assert_same(one("GatherND", data, inits={"i": arr([[0, 1], [2, 3]])}, extra_inputs=("i",)))
    assert_same(one("ScatterND", (4, 3), inits={"i": arr([[1], [3]]),
                                                "u": _RNG.standard_normal((2, 3)).astype(
                                                    np.float32)}, extra_inputs=("i", "u")))


# ---------------------------------------------------------------------------------- shape ops

def test_shape_ops():
    assert_same(one("Reshape", (2, 3, 4), inits={"s": arr([0, -1])}, extra_inputs=("s",)))
    assert_same(one("Reshape", (2, 3, 0), opset=14, inits={"s": arr([0, 3, 2])},
                    extra_inputs=("s",), allowzero=1))
    assert_same(one("Expand", (3, 1), inits={"s": arr([2, 1, 4])}, extra_inputs=("s",)))
    assert_same(one("Tile", (2, 3), inits={"r": arr([2, 3])}, extra_inputs=("r",)))
    assert_same(one("Unsqueeze", (2, 3), opset=11, axes=[0, -1]))
    assert_same(one("Unsqueeze", (2, 3), inits={"a": arr([-1, 1])}, extra_inputs=("a",)))
    assert_same(one("Squeeze", (1, 3, 1, 2)))
    assert_same(one("Squeeze", (1, 3, 1, 2), inits={"a": arr([-2])}, extra_inputs=("a",)))
    assert_same(one("Flatten", (2, 3, 4, 5), axis=-2))
    assert_same(one("Transpose", (2, 3, 4), perm=[2, 0, 1]))
    assert_same(one("Concat", (2, 3), inits={"z": np.zeros((2, 0), np.float32)},
                    extra_inputs=("z", "x"), axis=1))
    assert_same(one("DepthToSpace", (1, 8, 2, 3), blocksize=2, mode="DCR"))
    assert_same(one("DepthToSpace", (1, 8, 2, 3), blocksize=2, mode="CRD"))
    assert_same(one("SpaceToDepth", (1, 2, 4, 6), blocksize=2))
    constant = helper.make_tensor("v", TensorProto.INT64, [1], [7])
    model = make([node("Shape", ["x"], ["s"], start=1), node("ConstantOfShape", ["s"], ["c"],
                                                             value=constant),
                  node("Size", ["x"], ["n"]),
                  node("Range", ["a", "b", "d"], ["r"])],
                 {"x": (2, 3, 4)}, ["s", "c", "n", "r"],
                 {"a": np.float32(1.5), "b": np.float32(-2.0), "d": np.float32(-0.7)})
    assert_same(model)


# ---------------------------------------------------------------------------------- elementwise

def test_elementwise_and_logic():
    x = {"x": (2, 3, 4)}
    ints = {"a": (TensorProto.INT64, (5,)), "b": (TensorProto.INT64, (5,))}
    ab = {"a": arr([7, -7, 7, -7, 0]), "b": arr([2, 2, -2, -2, 3])}
    assert_same(make([node("Div", ["a", "b"], ["d"]), node("Mod", ["a", "b"], ["m"]),
                      node("Mod", ["a", "b"], ["f"], fmod=1)], ints, ["d", "m", "f"]), ab)
    nodes = [node("Greater", ["x", "half"], ["g"]), node("Less", ["x", "zero"], ["l"]),
             node("Or", ["g", "l"], ["o"]), node("Not", ["o"], ["n"]),
             node("And", ["n", "g"], ["a"]), node("Equal", ["x", "x"], ["e"]),
             node("Where", ["o", "x", "half"], ["w"]), node("Cast", ["o"], ["c"], to=1),
             node("CastLike", ["g", "x"], ["cl"]), node("Pow", ["x", "two"], ["p"]),
             node("Max", ["x", "half", "zero"], ["mx"]), node("Mean", ["x", "half"], ["mn"]),
             node("Sum", ["x", "x", "half"], ["sm"])]
    outs = ["g", "l", "o", "n", "a", "e", "w", "c", "cl", "p", "mx", "mn", "sm"]
    assert_same(make(nodes, x, outs, {"half": np.float32(0.5), "zero": np.float32(0),
                                      "two": np.float32(2)}))


UNARY = ["Neg", "Abs", "Exp", "Tanh", "Sigmoid", "HardSwish", "Relu", "Erf", "Mish",
         "Softplus", "Softsign", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos"]
ACTIVATIONS = {"LeakyRelu": {"alpha": 0.2}, "Elu": {"alpha": 0.7}, "Selu": {},
               "Celu": {"alpha": 1.3}, "HardSigmoid": {"alpha": 0.3, "beta": 0.4},
               "ThresholdedRelu": {"alpha": 0.3}, "Gelu": {"approximate": "tanh"}}


def test_unary_and_activations():
    for op in UNARY:
        assert_same(one(op, (3, 7), opset=18))
    for op in ("Log", "Sqrt", "Reciprocal"):
        assert_same(make([node("Abs", ["x"], ["a"]), node(op, ["a"], ["y"])], {"x": (3, 4)},
                         ["y"]))
    for op, attrs in ACTIVATIONS.items():
        assert_same(one(op, (3, 7), opset=20, **attrs))
    assert_same(one("PRelu", (2, 3, 4, 5), inits={"s": arr([[[0.1]], [[0.2]], [[-1.0]]],
                                                         np.float32)}, extra_inputs=("s",)))
    assert_same(one("Clip", (3, 7), opset=6, min=-0.5, max=0.3))
    assert_same(one("Clip", (3, 7), inits={"lo": np.float32(-0.2)}, extra_inputs=("lo",)))
    assert_same(one("Clip", (3, 7), inits={"lo": np.float32(0.5), "hi": np.float32(-0.5)},
                    extra_inputs=("lo", "hi")))
    computed = make([node("ReduceMean", ["x"], ["m"], keepdims=0),
                     node("Clip", ["x", "", "m"], ["y"])], {"x": (3, 7)}, ["y"])
    assert_same(computed)


# ---------------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2",
                                "ReduceProd", "ReduceL1", "ReduceSumSquare",
                                "ReduceLogSumExp", "ReduceLogSum"])
def test_reduce(op):
    if op == "ReduceLogSum":  # positive inputs
        positive = {"x": _RNG.uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)}
        assert_same(one(op, (2, 3, 4), opset=18, inits={"a": arr([], np.int64)},
                        extra_inputs=("a",), noop_with_empty_axes=1), positive)
        assert_same(one(op, (2, 3, 4), opset=11, axes=[1], keepdims=1), positive)
        return
    assert_same(one(op, (2, 3, 4), opset=11, axes=[1, -1], keepdims=1))
    assert_same(one(op, (2, 3, 4), opset=18, inits={"a": arr([-2])}, extra_inputs=("a",),
                    keepdims=0))
    assert_same(one(op, (2, 3, 4), opset=18, inits={"a": arr([], np.int64)},
                    extra_inputs=("a",), noop_with_empty_axes=1))
    assert_same(one(op, (2, 3, 4), opset=18))


def test_arg_topk_softmax():
    ties = {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)}
    for last in (0, 1):
        assert_same(one("ArgMax", (2, 4), axis=1, select_last_index=last), ties)
        assert_same(one("ArgMin", (2, 4), axis=0, keepdims=0, select_last_index=last), ties)
    assert_same(one("TopK", (3, 6), inits={"k": arr([2])}, extra_inputs=("k",), outputs=2))
    assert_same(one("TopK", (3, 6), inits={"k": arr([3])}, extra_inputs=("k",), outputs=2,
                    axis=0, largest=0))
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        assert_same(one(op, (2, 3, 4), opset=11, axis=1))
        assert_same(one(op, (2, 3, 4), opset=13, axis=1))


# ---------------------------------------------------------------------------------- linear

GEMMS = {"default": {}, "transA": {"transA": 1}, "transB": {"transB": 1},
         "both": {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, "alpha": {"alpha": 3.0}}


@pytest.mark.parametrize("attrs", GEMMS.values(), ids=GEMMS.keys())
@pytest.mark.parametrize("bias", [(4,), (3, 1), (), None], ids=["vec", "col", "scalar", "none"])
def test_gemm(attrs, bias):
    a = (5, 3) if attrs.get("transA") else (3, 5)
    b = (4, 5) if attrs.get("transB") else (5, 4)
    inits = {"b": _RNG.standard_normal(b).astype(np.float32)}
    extra = ["b"]
    if bias is not None:
        inits["c"] = _RNG.standard_normal(bias).astype(np.float32)
        extra.append("c")
    assert_same(one("Gemm", a, inits=inits, extra_inputs=extra, **attrs))


def test_matmul_einsum():
    assert_same(make([node("MatMul", ["x", "w"], ["y"])], {"x": (2, 3, 4)}, ["y"],
                     {"w": _RNG.standard_normal((4, 5)).astype(np.float32)}))
    assert_same(make([node("Einsum", ["x", "w"], ["y"], equation="bij, bjk -> bik")],
                     {"x": (2, 3, 4), "w": (2, 4, 5)}, ["y"]))
    assert_same(make([node("Einsum", ["x"], ["y"], equation="...ii->...i")], {"x": (2, 3, 3)},
                     ["y"]))


# ---------------------------------------------------------------------------------- norms

def test_normalisations():
    c = 6
    p = {n: _RNG.standard_normal(c).astype(np.float32) for n in ("s", "b", "m")}
    p["v"] = _RNG.uniform(0.5, 1.5, c).astype(np.float32)
    assert_same(one("BatchNormalization", (2, c, 4, 5), inits=p,
                    extra_inputs=("s", "b", "m", "v"), epsilon=1e-3))
    assert_same(one("BatchNormalization", (3, c), inits=p, extra_inputs=("s", "b", "m", "v")))
    assert_same(one("InstanceNormalization", (2, c, 4, 5), inits=p, extra_inputs=("s", "b")))
    ln = {"s": _RNG.standard_normal((4, 5)).astype(np.float32), "b": np.float32(0.3)}
    assert_same(one("LayerNormalization", (2, 3, 4, 5), inits=ln, extra_inputs=("s", "b"),
                    axis=-2))
    g = {"s": _RNG.standard_normal(3).astype(np.float32),
         "b": _RNG.standard_normal(3).astype(np.float32)}
    assert_same(one("GroupNormalization", (2, c, 4), opset=18, inits=g,
                    extra_inputs=("s", "b"), num_groups=3))
    assert_same(one("GroupNormalization", (2, c, 4), opset=21, inits=p,
                    extra_inputs=("s", "b"), num_groups=3))
    for p_norm in (1, 2):
        assert_same(one("LpNormalization", (2, 3, 4), axis=1, p=p_norm))


def test_batch_norm_train_updates_running_statistics():
    c, momentum = 3, 0.8
    p = {"s": arr([1.0, 2.0, 0.5], np.float32), "b": arr([0.1, 0.0, -0.2], np.float32),
         "m": arr([0.5, -0.5, 0.0], np.float32), "v": arr([1.0, 2.0, 0.5], np.float32)}
    model = one("BatchNormalization", (4, c, 5, 5), opset=15, inits=p,
                extra_inputs=("s", "b", "m", "v"), momentum=momentum, epsilon=1e-5)
    module = OnnxModule(model).train()
    assert set(module.buffers_by_name) == {"m", "v"} and set(module.params) == {"s", "b"}
    x = _RNG.standard_normal((4, c, 5, 5)).astype(np.float32) * 2 + 1
    (y,) = module(torch.from_numpy(x))
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))  # ONNX: biased batch variance
    np.testing.assert_allclose(module.buffers_by_name["m"].numpy(),
                               momentum * p["m"] + (1 - momentum) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.buffers_by_name["v"].numpy(),
                               momentum * p["v"] + (1 - momentum) * var, rtol=1e-5, atol=1e-6)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * \
        p["s"][:, None, None] + p["b"][:, None, None]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    # onnxruntime's own training-mode node computes the same running statistics
    train_node = node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                      momentum=momentum, epsilon=1e-5, training_mode=1)
    ort_model = make([train_node], {"x": (4, c, 5, 5)}, ["y", "rm", "rv"], p, opset=15)
    ref_y, ref_m, ref_v = session(ort_model, optimize=False).run(None, {"x": x})
    np.testing.assert_allclose(module.buffers_by_name["m"].numpy(), ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.buffers_by_name["v"].numpy(), ref_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-4, atol=1e-4)
    module.eval()  # eval: running statistics, no update
    before = module.buffers_by_name["m"].clone()
    module(torch.from_numpy(x))
    assert torch.equal(before, module.buffers_by_name["m"])


@pytest.mark.parametrize("opset", [11, 13])
def test_dropout_modes(opset):
    inits = {"r": np.float32(0.25)} if opset >= 12 else {}
    attrs = {"ratio": 0.25} if opset < 12 else {}
    model = one("Dropout", (64, 64), opset=opset, inits=inits,
                extra_inputs=("r",) if inits else (), **attrs)
    module = OnnxModule(model)
    x = torch.ones(64, 64)
    assert torch.equal(module(x)[0], x)  # eval (the default): identity
    y = module.train()(x)[0]
    dropped = float((y == 0).float().mean())
    assert 0.15 < dropped < 0.35
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))


# ---------------------------------------------------------------------------------- pad

PADS = {"constant": ("constant", [0, 1, 2, 0, 2, 1]), "reflect": ("reflect", [0, 2, 1, 0, 1, 3]),
        "edge": ("edge", [1, 0, 2, 0, 3, 1]), "crop": ("constant", [0, -1, 1, 0, 2, -2]),
        "wrap": ("wrap", [0, 2, 1, 0, 1, 3])}


@pytest.mark.parametrize("case", PADS.values(), ids=PADS.keys())
def test_pad(case):
    mode, pads = case
    opset = 19 if mode == "wrap" else 13
    inits = {"p": arr(pads), "v": np.float32(1.5)}
    assert_same(one("Pad", (2, 3, 4), opset=opset, inits=inits,
                    extra_inputs=("p", "v") if mode == "constant" else ("p",), mode=mode))


def test_pad_axes_and_opset2():
    inits = {"p": arr([1, 2, 0, 1]), "a": arr([-1, 1])}
    assert_same(one("Pad", (2, 3, 4), opset=18, inits=inits, extra_inputs=("p", "", "a"),
                    mode="reflect"))
    assert_same(one("Pad", (2, 3, 4), opset=2, pads=[0, 1, 1, 0, 0, 2], value=-1.0))


# ---------------------------------------------------------------------------------- control flow

def test_if_runs_the_chosen_branch_with_outer_values():
    then_graph = helper.make_graph([node("Mul", ["x", "w"], ["t"])], "then", [],
                                   [onnx.ValueInfoProto(name="t")])
    else_graph = helper.make_graph([node("Sub", ["x", "w"], ["e"])], "else", [],
                                   [onnx.ValueInfoProto(name="e")])
    nodes = [node("ReduceSum", ["x"], ["s"], keepdims=0), node("Greater", ["s", "zero"], ["c"]),
             node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make(nodes, {"x": (2, 3)}, ["y"], {"w": _RNG.standard_normal(3).astype(np.float32),
                                               "zero": np.float32(0)}, opset=13)
    for sign in (1, -1):
        assert_same(model, {"x": sign * np.abs(_RNG.standard_normal((2, 3))).astype(np.float32)})


# ---------------------------------------------------------------------------------- unsupported

def test_unsupported_models_fail_at_construction():
    body = helper.make_graph([node("Identity", ["c"], ["c_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
    loop = make([node("Loop", ["n", "cond"], [], body=body), node("Relu", ["x"], ["y"])],
                {"x": (2,)}, ["y"], {"n": arr(3), "cond": np.array(True)})
    with pytest.raises(UnsupportedModel, match="Loop"):
        OnnxModule(loop)
    custom = make([node("FancyOp", ["x"], ["y"], domain="com.example")], {"x": (2,)}, ["y"])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedModel, match="FancyOp"):
        OnnxModule(custom)
    crop = _resize((1, 1, 4, 4), scales=[1, 1, 2, 2], mode="linear",
                   coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(UnsupportedModel, match="Resize.*tf_crop_and_resize"):
        OnnxModule(crop)
    indices = make([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2])], {"x": (1, 1, 4)},
                   ["y", "i"])
    with pytest.raises(UnsupportedModel, match="MaxPool.*first output"):
        OnnxModule(indices)
    assert issubclass(UnsupportedModel, UserError)


# ---------------------------------------------------------------------------------- module API

def _small_cnn(opset=17):
    w1 = _RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = _RNG.standard_normal((10, 8)).astype(np.float32)
    bn = {"bn.s": _RNG.uniform(0.5, 1.5, 8).astype(np.float32),
          "bn.b": _RNG.standard_normal(8).astype(np.float32),
          "bn.m": _RNG.standard_normal(8).astype(np.float32) * 0.1,
          "bn.v": _RNG.uniform(0.5, 1.5, 8).astype(np.float32)}
    nodes = [node("Conv", ["x", "conv/w:0", "conv.b"], ["c"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"], ["n"]),
             node("Relu", ["n"], ["r"]), node("GlobalAveragePool", ["r"], ["g"]),
             node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    inits = {"conv/w:0": w1, "conv.b": np.zeros(8, np.float32), "fc.w": w2,
             "fc.b": _RNG.standard_normal(10).astype(np.float32), **bn}
    return make(nodes, {"x": (2, 3, 8, 8)}, ["y"], inits, opset)


def test_parameters_buffers_and_state_dict():
    model = _small_cnn()
    module = OnnxModule(model)
    assert module.input_names == ["x"] and module.output_names == ["y"]
    assert set(module.params) == {"conv/w:0", "conv.b", "fc.w", "fc.b", "bn.s", "bn.b"}
    assert set(module.buffers_by_name) == {"bn.m", "bn.v"}
    assert {id(p) for p in module.parameters()} == {id(p) for p in module.params.values()}
    state = module.state_dict()
    assert len(state) == 8 and all("." not in k and "/" not in k for k in state)
    clone = OnnxModule(model)
    clone.load_state_dict(state)
    assert_same(model, module=module.double().float())


def test_copies_and_dtype_moves_stay_consistent():
    model = _small_cnn()
    module = OnnxModule(model)
    twin = copy.deepcopy(module).train()
    x = torch.randn(2, 3, 8, 8)
    twin(x)  # a training step updates the twin's BatchNorm statistics only
    assert not torch.equal(twin.buffers_by_name["bn.m"], module.buffers_by_name["bn.m"])
    assert not module.training
    with torch.no_grad():
        twin.params["fc.b"].zero_()
    assert module.params["fc.b"].abs().sum() > 0
    wide = copy.deepcopy(module).double()
    assert wide.buffers_by_name["bn.v"].dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in wide.params.values())
    with torch.no_grad():
        np.testing.assert_allclose(wide(x.double())[0].numpy(), module(x)[0].numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_gradients_reach_params_and_inputs():
    module = OnnxModule(_small_cnn()).train()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    module(x)[0].pow(2).sum().backward()
    for name, p in module.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_input_transforms_apply_to_one_node_input():
    model = make([node("Relu", ["x"], ["r"]), node("Add", ["x", "r"], ["y"])], {"x": (2, 3)},
                 ["y"])
    module = OnnxModule(model)
    x = torch.randn(2, 3)
    module.input_transforms[(1, 0)] = lambda t: t * 0  # graph input, at the Add only
    assert torch.equal(module(x)[0], torch.relu(x))
    seen = []
    module.input_transforms = {(1, 1): lambda t: seen.append(t) or t}
    assert torch.equal(module(x)[0], x + torch.relu(x)) and torch.equal(seen[0], torch.relu(x))


def test_intermediate_values_are_freed():
    module = OnnxModule(_small_cnn())
    prog = module._program
    freed = [slot for step in prog.steps for slot in step[4] if slot]
    produced = {s for step in prog.steps for s in step[3] if s} | set(prog.inputs)
    assert sorted(freed) == sorted(produced - set(prog.outputs))


def test_write_back_round_trip():
    model = _small_cnn()
    module = OnnxModule(model)
    written = module.write_back(model)
    for a, b in zip(model.graph.initializer, written.graph.initializer):
        assert a.name == b.name and a.dims == b.dims and a.data_type == b.data_type
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()
    with torch.no_grad():
        module.params["conv/w:0"].mul_(-0.5)
        module.params["fc.b"].add_(1.0)
        module.buffers_by_name["bn.m"].add_(0.3)
    assert_same(module.write_back(model), module=module)
    with torch.no_grad():
        module.params["fc.b"].data = torch.zeros(3)
    with pytest.raises(ValueError, match="fc.b"):
        module.write_back(model)


def test_positional_and_keyword_inputs():
    model = make([node("Sub", ["a", "b"], ["y"])], {"a": (2,), "b": (2,)}, ["y"])
    module = OnnxModule(model)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])
    assert torch.equal(module(a, b)[0], module(b=b, a=a)[0])
    assert torch.equal(module(a, b=b)[0], a - b)
    with pytest.raises(TypeError):
        module(a)


# ---------------------------------------------------------------------------------- the zoo

def _zoo_check(model, shape_text=None):
    from onnxprune.model.graph import graph_inputs, parse_input_shapes

    names = [i.name for i in graph_inputs(model)]
    shapes = parse_input_shapes(shape_text, names)
    rng = np.random.default_rng(1)
    feeds = {}
    for inp in graph_inputs(model):
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shapes.get(inp.name, dims)).astype(np.float32)
    assert_same(model, feeds)


def _zoo_params(names, image_size, slow):
    from onnxprune.models.zoo import Exporter

    marks = [pytest.mark.slow] if slow else []
    return [pytest.param(n, e, image_size, id=f"{n}-{e.value}-{image_size}", marks=marks)
            for n in names for e in Exporter]


def _zoo_cases():
    pytest.importorskip("torchvision")
    from onnxprune.models.zoo import SMALL_ZOO, ZOO

    return _zoo_params(SMALL_ZOO, 64, False) + _zoo_params(ZOO, 224, True)


@pytest.mark.parametrize("name, exporter, image_size", _zoo_cases())
def test_zoo_matches_onnxruntime(name, exporter, image_size):
    from onnxprune.analysis.normalize import normalize
    from onnxprune.models.zoo import cached_model

    model = onnx.load(cached_model(name, exporter, image_size=image_size))
    _zoo_check(model)
    _zoo_check(normalize(model, {}))


def _other_cases():
    from onnxprune.models.other import MODELS

    return [pytest.param(m, id=m.id, marks=pytest.mark.slow) for m in MODELS]


@pytest.mark.parametrize("spec", _other_cases())
def test_other_frameworks_match_onnxruntime(spec):
    from onnxprune.analysis.normalize import normalize
    from onnxprune.model.graph import graph_inputs, parse_input_shapes
    from onnxprune.models.other import build

    pytest.importorskip(spec.package)
    model = onnx.load(build(spec))
    _zoo_check(model, spec.input_shape)
    shapes = parse_input_shapes(spec.input_shape, [i.name for i in graph_inputs(model)])
    _zoo_check(normalize(model, shapes), spec.input_shape)
