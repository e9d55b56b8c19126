"""Batch-free copies of static-batch models: exact rewrite, or a reason."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxprune.model.batch import batch_free, make_batch_free
from onnxprune.model.runtime import session
from tiny import make, node, small_resnet


def _reshape_model(target, allowzero=0):
    return make([node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero),
                 node("Relu", ["y"], ["z"])],
                {"x": [1, 3, 4, 4]}, ["z"], {"shape": np.array(target, dtype=np.int64)})


def test_leading_one_becomes_copy_of_dim0():
    free, why = make_batch_free(_reshape_model([1, -1], allowzero=1))
    assert why is None
    inits = {i.name: numpy_helper.to_array(i) for i in free.graph.initializer}
    assert inits[free.graph.node[0].input[1]].tolist() == [0, -1]
    assert not any(a.name == "allowzero" for a in free.graph.node[0].attribute)
    out = session(free).run(None, {"x": np.ones((5, 3, 4, 4), np.float32)})[0]
    assert out.shape == (5, 48)


def test_shuffle_and_resnet_are_batch_free():
    shuffle = make([node("Reshape", ["x", "s1"], ["a"]),
                    node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]),
                    node("Reshape", ["b", "s2"], ["y"])],
                   {"x": [1, 4, 2, 2]}, ["y"],
                   {"s1": np.array([1, 2, 2, 2, 2], np.int64),
                    "s2": np.array([1, 4, 2, 2], np.int64)})
    for model in (shuffle, small_resnet(batch=1)):
        assert make_batch_free(model)[1] is None


def test_batch_tied_graph_keeps_the_original_and_says_why():
    model = make([node("Gather", ["x", "first"], ["y"], axis=0)], {"x": [1, 3, 4, 4]}, ["y"],
                 {"first": np.array([0], np.int64)})
    same, why = make_batch_free(model)
    assert same is model and "batch 2" in why


def test_target_without_the_batch_is_left_alone():
    free = batch_free(_reshape_model([3, 16]))
    inits = {i.name: numpy_helper.to_array(i) for i in free.graph.initializer}
    assert inits[free.graph.node[0].input[1]].tolist() == [3, 16]
    assert make_batch_free(_reshape_model([3, 16]))[1] is not None


def test_dynamic_batch_has_no_static_batch():
    assert batch_free(small_resnet(batch="N")) is None


def test_a_reshape_target_in_a_constant_node_is_made_batch_free():
    """The TorchScript exporter keeps some Reshape targets in Constant nodes (a ViT's
    [1, N, 3, H, Dh]); they get dim 0 copied too, so the model runs at batch 3."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.model.batch import batch_free

    target = numpy_helper.from_array(np.array([1, 4, 2, 3], np.int64), "t")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["shape"], value=target),
         helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    free = batch_free(model)
    x = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    (y,) = ort.InferenceSession(free.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(3, 4, 2, 3))
