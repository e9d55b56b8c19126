"""Issue 12, items 5 and 6: malformed graphs end in one line and exit 2 before any work;
identical initializers are stored once in the pruned file, and the report counts what the
file stores."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import analyze, random_plan
from onnxprune.cli.main import main
from onnxprune.model.check import check_structure
from onnxprune.model.external import is_lazy
from onnxprune.model.io import load
from onnxprune.models.fuzzgraphs import random_cnn
from onnxprune.plan.planner import Removal
from onnxprune.rewrite.share import reshare
from onnxprune.rewrite.surgery import apply_plan
from tiny import make, node, prunes_exactly

_RNG = np.random.default_rng(3)
_K3 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}


def _w(*shape):
    return (_RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _chain(nodes, outputs=("y",)):
    """x[1,3,8,8] -> convs w1 (3->16), w2 (16->16), w3 (16->4), in any node order."""
    return make(nodes, {"x": [1, 3, 8, 8]}, list(outputs),
                {"w1": _w(16, 3, 3, 3), "w2": _w(16, 16, 3, 3), "w3": _w(4, 16, 1, 1)})


def _malformed():
    c1 = node("Conv", ["x", "w1"], ["a"], name="c1", **_K3)
    c3 = node("Conv", ["b", "w3"], ["y"], name="c3")
    branch = helper.make_graph([node("Relu", ["c"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    iff = node("If", ["flag"], ["b"], name="iff", then_branch=branch, else_branch=branch)
    through_if = _chain([c1, node("Greater", ["a", "a"], ["flag0"]),
                         node("ReduceMax", ["flag0"], ["flag"], keepdims=0), iff,
                         node("Conv", ["b", "w2"], ["c"], name="c2", **_K3), c3])
    return {
        "cycle": (_chain([c1, node("Add", ["a", "c"], ["b"], name="add"),
                          node("Conv", ["b", "w2"], ["c"], name="c2", **_K3), c3]),
                  "the graph has a cycle: "),
        "cycle through an If body": (through_if, "the graph has a cycle: "),
        "two writers": (_chain([c1, node("Relu", ["a"], ["b"], name="r"),
                                node("Sigmoid", ["a"], ["b"], name="s"), c3]),
                        "tensor 'b' is written twice, by Relu node 'r' and Sigmoid node 's'"),
        "writes an input": (_chain([c1, node("Relu", ["a"], ["x"], name="r"),
                                    node("Conv", ["a", "w2"], ["b"], **_K3), c3]),
                            "Relu node 'r' writes 'x', which is also a graph input"),
        "duplicate outputs": (_chain([c1, node("Conv", ["a", "w2"], ["b"], **_K3), c3],
                                     outputs=("y", "y")),
                              "graph output 'y' is listed twice"),
        "dangling input": (_chain([c1, node("Add", ["a", "zz"], ["b"], name="add"), c3]),
                           "Add node 'add' reads 'zz', which nothing defines"),
        "dangling output": (_chain([c1, node("Conv", ["a", "w2"], ["b"], **_K3), c3],
                                   outputs=("y", "q")),
                            "graph output 'q' is not computed by any node"),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_graph_one_line_exit_2(case, tmp_path, capsys):
    model, expect = _malformed()[case]
    onnx.save(model, tmp_path / "m.onnx")
    before = sorted(os.listdir(tmp_path))
    argv = [str(tmp_path / "m.onnx"), "--target-mem", "0.5", "--report",
            str(tmp_path / "r.json"), "-o", str(tmp_path / "o.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid model: " + expect in err, err
    assert sorted(os.listdir(tmp_path)) == before
    assert main(["analyze", str(tmp_path / "m.onnx")]) == 2


def test_unsorted_valid_graph_prunes(tmp_path, capsys):
    """Nodes listed consumers first: a valid file (only a cycle is an error)."""
    nodes = [node("Conv", ["r2", "w3"], ["y"]), node("Relu", ["c2"], ["r2"]),
             node("Conv", ["r1", "w2"], ["c2"], **_K3), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["x", "w1"], ["c1"], **_K3)]
    onnx.save(_chain(nodes), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.5", "--round-to", "1",
                 "-o", str(out)]) == 0, capsys.readouterr().err
    assert out.exists()


def test_unsorted_if_reading_the_outer_scope_is_valid():
    """The If is listed before the node making the tensor its branches read: Kahn orders them
    (the outer-scope read is a dependency), and nothing is reported dangling."""
    branch = [helper.make_graph([node(op, ["a"], [op])], op, [],
                                [helper.make_tensor_value_info(op, TensorProto.FLOAT, None)])
              for op in ("Relu", "Sigmoid")]
    model = _chain([node("If", ["flag"], ["b"], then_branch=branch[0], else_branch=branch[1]),
                    node("Conv", ["b", "w2"], ["c"], **_K3),
                    node("Conv", ["c", "w3"], ["y"]),
                    node("Conv", ["x", "w1"], ["a"], **_K3),
                    node("Greater", ["thr", "thr"], ["flag"])])
    model.graph.input.append(helper.make_tensor_value_info("thr", TensorProto.FLOAT, []))
    check_structure(model)
    assert prunes_exactly(model) > 0


def _shared_bias_model():
    """Four convs share one zero bias `zb` (two layer groups of 16: c1-c3, tied through `wt`,
    and c4); `wt` is a real tied weight (c2 and c3); c5 has its own zero bias `zb24`."""
    inits = {"w1": _w(16, 3, 3, 3), "wt": _w(16, 16, 3, 3), "w4": _w(16, 16, 1, 1),
             "w5": _w(24, 16, 1, 1), "w6": _w(8, 24, 1, 1), "b6": _w(8),
             "zb": np.zeros(16, np.float32), "zb24": np.zeros(24, np.float32)}
    nodes = [node("Conv", ["x", "w1", "zb"], ["c1"], **_K3), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "wt", "zb"], ["c2"], **_K3), node("Relu", ["c2"], ["r2"]),
             node("Conv", ["r2", "wt", "zb"], ["c3"], **_K3), node("Relu", ["c3"], ["r3"]),
             node("Conv", ["r3", "w4", "zb"], ["c4"]), node("Relu", ["c4"], ["r4"]),
             node("Conv", ["r4", "w5", "zb24"], ["c5"]), node("Relu", ["c5"], ["r5"]),
             node("Conv", ["r5", "w6", "b6"], ["y"])]
    return make(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)


def _stored(model: onnx.ModelProto) -> tuple[int, int]:
    """(elements of floating initializers, bytes of all initializers) of a file."""
    params = nbytes = 0
    for init in model.graph.initializer:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
        count = int(np.prod(init.dims, dtype=np.int64))
        params += count if np.issubdtype(dtype, np.floating) else 0
        nbytes += count * dtype.itemsize
    return params, nbytes


def test_normalised_copies_count_once_and_merge_back():
    model = _shared_bias_model()
    analysis = analyze(model)
    assert len(analysis.model.graph.initializer) > len(model.graph.initializer)  # per-use copies
    assert (analysis.costs.costs().params, analysis.costs.costs().weight_bytes) == _stored(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(analysis.model)
    assert _stored(reshare(copy)) == _stored(model)


@pytest.mark.parametrize("target", ["0.95", "0.5"])
def test_pruned_file_stores_shared_tensors_once(target, tmp_path, capsys):
    source, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(_shared_bias_model(), source)
    assert main([str(source), "--target-mem", target, "--round-to", "1", "-o", str(out),
                 "--report", str(report)]) == 0, capsys.readouterr().err
    pruned, record = onnx.load(out), json.loads(report.read_text())
    assert out.stat().st_size <= source.stat().st_size
    zeros = [i for i in pruned.graph.initializer if not numpy_helper.to_array(i).any()]
    assert len({tuple(i.dims) for i in zeros}) == len(zeros)  # one zero bias per shape
    assert sum(i.name == "wt" for i in pruned.graph.initializer) == 1
    assert (record["after"]["params"], record["after"]["weight_bytes"]) == _stored(pruned)
    assert (record["before"]["params"], record["before"]["weight_bytes"]) == _stored(
        onnx.load(source))


@pytest.mark.parametrize("seed", range(12))
def test_cost_model_predicts_the_stored_file(seed):
    """Random plans on random CNNs and on the shared-bias model: the params the planner
    predicts from kept counts are those of the resharded pruned model (weight bytes may differ
    by the int64 shape constants surgery rewrites; the report counts those in the file)."""
    model = _shared_bias_model() if seed % 3 == 0 else random_cnn(seed, 14)
    analysis = analyze(model)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        removed = random_plan(analysis, rng)
        removal = Removal(analysis.channels, analysis.costs)
        removal.remove(np.flatnonzero(removed))
        predicted = analysis.costs.costs(removal.kept)
        pruned, _ = apply_plan(analysis.channels, removed)
        assert predicted.params == _stored(reshare(pruned))[0]


def test_reshare_renames_reads_inside_subgraphs():
    z = np.zeros(4, np.float32)
    branch = [helper.make_graph([node(op, ["a", "z2"], [op])], op, [],
                                [helper.make_tensor_value_info(op, TensorProto.FLOAT, [4])])
              for op in ("Add", "Sub")]
    model = make([node("Add", ["x", "z1"], ["a"]),
                  node("If", ["flag"], ["y"], then_branch=branch[0], else_branch=branch[1])],
                 {"x": [4]}, ["y"], {"z1": z, "z2": z.copy()})
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    reshare(model)
    assert [i.name for i in model.graph.initializer] == ["z1"]
    x = np.arange(4, dtype=np.float32)
    feeds = {"x": x, "flag": np.array(True)}
    got = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(got, x)


def test_reshare_keeps_lazy_weights_on_disk(tmp_path):
    """Two identical 512x512 weights under different names, in external data: the loaded
    stubs stay lazy, one is dropped, and the model computes what it computed."""
    w = _w(512, 512)
    model = make([node("MatMul", ["x", "w1"], ["h"]), node("Relu", ["h"], ["r"]),
                  node("MatMul", ["r", "w2"], ["y"])], {"x": [1, 512]}, ["y"],
                 {"w1": w, "w2": w.copy()})
    x = _w(1, 512)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data")
    loaded = load(tmp_path / "m.onnx")
    assert all(is_lazy(i) for i in loaded.graph.initializer)
    reshare(loaded)
    assert [i.name for i in loaded.graph.initializer] == ["w1"]
    assert is_lazy(loaded.graph.initializer[0])
    assert [n.input[1] for n in loaded.graph.node if n.op_type == "MatMul"] == ["w1", "w1"]
    merged = onnx.load(tmp_path / "m.onnx")  # and the same merge with the data read in
    reshare(merged)
    np.testing.assert_array_equal(
        ort.InferenceSession(merged.SerializeToString()).run(None, {"x": x})[0], want)


def test_surgery_keeps_initializers_read_only_inside_a_subgraph():
    """An If branch reads an outer initializer that no node lists as an input: dropping unused
    initializers after slicing must not drop it (the branch would read nothing), and such a
    model prunes exactly."""
    from onnxprune.rewrite.surgery import _drop_unused_initializers

    branch = [helper.make_graph([node(op, ["a", "k"], [op])], op, [],
                                [helper.make_tensor_value_info(op, TensorProto.FLOAT, None)])
              for op in ("Add", "Sub")]
    model = _chain([node("Conv", ["x", "w1"], ["a"], **_K3),
                    node("Greater", ["thr", "thr"], ["flag"]),
                    node("If", ["flag"], ["b"], then_branch=branch[0], else_branch=branch[1]),
                    node("Conv", ["b", "w2"], ["c"], **_K3),
                    node("Conv", ["c", "w3"], ["y"])])
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.5), "k"))
    model.graph.input.append(helper.make_tensor_value_info("thr", TensorProto.FLOAT, []))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _drop_unused_initializers(copy)
    assert "k" in {i.name for i in copy.graph.initializer}
    assert prunes_exactly(model) > 0
