"""Inputs a user may bring beyond plain CNNs: broken files, subgraphs, fp16, interrupted
writes. Each bad one ends in one line on stderr and exit 2, with nothing written."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from tiny import Units, conv, make, node, prunes_exactly, small_resnet


def _one_line_exit_2(argv, capsys, folder, expect):
    before = sorted(os.listdir(folder))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert sorted(os.listdir(folder)) == before


def test_truncated_model(tmp_path, capsys):
    data = small_resnet(width=32).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    _one_line_exit_2([str(tmp_path / "cut.onnx"), "--target-mem", "0.5"], capsys, tmp_path,
                     "onnxprune: error:")


def test_missing_initializer(tmp_path, capsys):
    model = small_resnet()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "wa1"))
    onnx.save(model, tmp_path / "m.onnx")
    _one_line_exit_2([str(tmp_path / "m.onnx"), "--target-mem", "0.5"], capsys, tmp_path,
                     "reads 'wa1', which nothing defines")


def test_nothing_prunable(tmp_path, capsys):
    c1, w1 = conv("x", "y", "w1", 3, 4)
    onnx.save(make([c1], {"x": [1, 3, 4, 4]}, ["y"], w1), tmp_path / "m.onnx")
    _one_line_exit_2([str(tmp_path / "m.onnx"), "--target-mem", "0.5"], capsys, tmp_path,
                     "reachable minimum is 1.000")


def _if_model():
    """`a` is read inside both branches of an If (outer scope), `q` only by convs."""
    c1, w1 = conv("x", "a", "w1", 3, 8)
    c3, w3 = conv("x", "q", "w3", 3, 8)
    c4, w4 = conv("q", "y2", "w4", 8, 2)
    branch = [helper.make_graph([node(op, ["a"], [op])], op, [],
                                [helper.make_tensor_value_info(op, TensorProto.FLOAT, None)])
              for op in ("Relu", "Sigmoid")]
    iff = node("If", ["c"], ["b"], then_branch=branch[0], else_branch=branch[1])
    c2, w2 = conv("b", "y", "w2", 8, 2)
    model = make([node("Greater", ["thr", "zero"], ["c"]), c1, iff, c2, c3, c4],
                 {"x": [1, 3, 4, 4]}, ["y", "y2"], {**w1, **w2, **w3, **w4})
    model.graph.input.append(helper.make_tensor_value_info("thr", TensorProto.FLOAT, []))
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    return model


def test_subgraphs_block_what_crosses_into_them():
    u = Units(_if_model())
    assert u.blocked("a").all() and any("If" in r for r in u.reasons("a"))
    assert not u.blocked("q").any()
    assert prunes_exactly(_if_model()) > 0


def test_fp16_model_prunes(tmp_path):
    model = small_resnet(width=16, batch=1)
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init) * 0.2
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), init.name))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, tmp_path / "h.onnx")
    assert main([str(tmp_path / "h.onnx"), "--target-mem", "0.6",
                 "-o", str(tmp_path / "o.onnx")]) == 0
    pruned = onnx.load(tmp_path / "o.onnx")
    assert pruned.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


_WRITER = """
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
from onnxprune.model.io import save_atomic
w = numpy_helper.from_array(np.full((4096, 8192), float(sys.argv[2]), np.float32), "w")
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8192])], [w])
model = helper.make_model(g)
print("ready", flush=True)
while True:
    save_atomic(model, sys.argv[1], external=sys.argv[3] == "external")
"""


@pytest.mark.parametrize("form", ["inline", "external"])
def test_killed_while_writing_leaves_old_or_no_file(tmp_path, form):
    """SIGKILL at random moments of a 128 MB write: the output is absent or a complete model.
    With external data, never an earlier model beside a newer data file (model.io.save_atomic)."""
    out = tmp_path / "out.onnx"
    rng = np.random.default_rng(0)
    for value in [1.0, 2.0, 3.0, 4.0]:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(value), form],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().startswith(b"ready")
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            w = numpy_helper.to_array(onnx.load(out).graph.initializer[0])
            assert w.shape == (4096, 8192) and w[0, 0] == w[-1, -1]
