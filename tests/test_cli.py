"""The command line as a user meets it: outputs, the report, and one-line errors (exit 2)."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxprune.cli.main import main
from tiny import small_resnet


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(small_resnet(width=32), path)
    return path


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_prune_writes_default_output_and_report(model_path, capsys):
    report = model_path.parent / "report.json"
    before = model_path.read_bytes()
    assert main([str(model_path), "--target-mem", "0.5", "--report", str(report)]) == 0
    out = model_path.with_name("net.pruned.onnx")
    assert out.exists() and model_path.read_bytes() == before
    assert "oracle" in capsys.readouterr().out
    record = json.loads(report.read_text())
    assert record["after"]["mem"] <= 0.5 * record["before"]["mem"]
    assert {"initializer", "axis", "removed", "role"} <= set(record["slices"][0])
    assert record["options"]["criterion"] == "l1" and record["timings"]


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_report_lets_anyone_recompute_the_oracle(model_path, tmp_path):
    """Zero the `removed` indices of every sink initializer of the original: equals pruned."""
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main([str(model_path), "--target-flops", "0.5", "-o", str(out), "--report", str(report),
                 "--round-to", "1"]) == 0
    original = onnx.load(model_path)
    original.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inits = {i.name: i for i in original.graph.initializer}
    for s in json.loads(report.read_text())["slices"]:
        if s["role"] in ("sink", "mask"):
            value = numpy_helper.to_array(inits[s["initializer"]]).copy()
            np.moveaxis(value, s["axis"], 0)[s["removed"]] = 0
            inits[s["initializer"]].CopyFrom(numpy_helper.from_array(value, s["initializer"]))
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    want, got = _run(original, feeds), _run(onnx.load(out), feeds)
    assert np.max(np.abs(want - got)) <= 1e-4 * max(1, np.max(np.abs(want)))


def test_analyze_prints_groups_and_minimums(model_path, capsys):
    assert main(["analyze", str(model_path)]) == 0
    text = capsys.readouterr().out
    assert "prunable" in text and "blocked: graph input" in text
    assert "--target-mem" in text and "reachable minimum" in text
    assert main(["analyze", str(model_path), "--max-prune-share", "0.5", "--round-to", "1"]) == 0
    text = capsys.readouterr().out
    assert "keeps >= 16" in text and "at least 50% of its channels" in text


def test_prune_meets_the_target_within_one_unit_and_says_by_how_much(model_path, capsys):
    report = model_path.parent / "report.json"
    assert main([str(model_path), "--target-mem", "0.5", "--report", str(report)]) == 0
    record = json.loads(report.read_text())
    reached = record["after"]["mem"] / record["before"]["mem"]
    assert record["plan"]["excess"] == pytest.approx(0.5 - reached)
    assert record["options"]["max_prune_share"] == 0.9


def _bad_inputs(tmp):
    empty, text, junk = tmp / "empty.onnx", tmp / "notes.txt", tmp / "junk.onnx"
    empty.write_bytes(b"")
    text.write_text("hello, this is not a model\n")
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    return {"missing": [str(tmp / "nope.onnx"), "--target-mem", "0.5"],
            "directory": [str(tmp), "--target-mem", "0.5"],
            "empty": [str(empty), "--target-mem", "0.5"],
            "text": [str(text), "--target-mem", "0.5"],
            "random bytes": [str(junk), "--target-mem", "0.5"]}


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "random bytes",
                                  "zero", "negative", "one", "nan", "word", "no target",
                                  "two targets", "no folder", "same path", "bad shape",
                                  "unreachable", "bad round", "bad share", "share above 1"])
def test_user_errors_are_one_line_exit_2_nothing_written(case, model_path, tmp_path, capsys):
    m = str(model_path)
    argv = {**_bad_inputs(tmp_path),
            "zero": [m, "--target-mem", "0"], "negative": [m, "--target-mem", "-0.5"],
            "one": [m, "--target-mem", "1"], "nan": [m, "--target-mem", "nan"],
            "word": [m, "--target-mem", "half"], "no target": [m],
            "two targets": [m, "--target-mem", "0.5", "--target-flops", "0.5"],
            "no folder": [m, "--target-mem", "0.5", "-o", str(tmp_path / "no" / "x.onnx")],
            "same path": [m, "--target-mem", "0.5", "-o", m],
            "bad shape": [m, "--target-mem", "0.5", "--input-shape", "1x3xbig"],
            "unreachable": [m, "--target-mem", "0.001"],
            "bad round": [m, "--target-mem", "0.5", "--round-to", "0"],
            "bad share": [m, "--target-mem", "0.5", "--max-prune-share", "0"],
            "share above 1": [m, "--target-mem", "0.5", "--max-prune-share", "1.5"]}[case]
    before = _files(tmp_path)
    original = model_path.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxprune: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert _files(tmp_path) == before and model_path.read_bytes() == original


def test_dynamic_spatial_dims_need_input_shape(tmp_path, capsys):
    model = small_resnet(width=16)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    assert main([str(path), "--target-mem", "0.5"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main([str(path), "--target-mem", "0.5", "--input-shape", "1x3x32x32"]) == 0


def test_old_opset_and_quantized_models_are_refused(tmp_path, capsys):
    old = small_resnet()
    old.opset_import[0].version = 9
    onnx.save(old, tmp_path / "old.onnx")
    assert main([str(tmp_path / "old.onnx"), "--target-mem", "0.5"]) == 2
    assert "opset 9" in capsys.readouterr().err
    q = small_resnet()  # QOperator (QDQ models prune: tests/test_qdq.py)
    q.graph.node.insert(0, helper.make_node("ConvInteger", ["input", "sc"], ["qx"]))
    onnx.save(q, tmp_path / "q.onnx")
    assert main([str(tmp_path / "q.onnx"), "--target-mem", "0.5"]) == 2
    assert "quantized model in the QOperator format (ConvInteger)" in capsys.readouterr().err


def test_console_script_runs_without_traceback(model_path):
    proc = subprocess.run([sys.executable, "-m", "onnxprune", str(model_path), "--target-mem",
                           "0.4", "-o", os.devnull + "x/y.onnx"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "onnxprune", str(model_path), "--target-mem",
                           "0.4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_prunes_on_a_machine_without_torch(model_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from onnxprune.cli.main import main\n"
            f"code = main([{str(model_path)!r}, '--target-mem', '0.5'])\n"
            "assert sys.modules['torch'] is None\n"
            "raise SystemExit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_model_with_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_resnet(width=32), path, save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    assert main([str(path), "--target-mem", "0.5", "-o", str(tmp_path / "out.onnx")]) == 0
    (tmp_path / "ext.onnx.data").unlink()
    assert main([str(path), "--target-mem", "0.5", "-o", str(tmp_path / "out2.onnx")]) == 2
    assert not (tmp_path / "out2.onnx").exists()
