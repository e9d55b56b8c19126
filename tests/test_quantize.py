"""`--quantize int8`: the INT8 copy of the pruned file, its fidelity and latency in the report,
refused without data, never a partial file; `onnxprune bench` runs both files."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest

from onnxprune.bench.cli import run_bench
from onnxprune.cli.main import main
from onnxprune.errors import UserError
from onnxprune.rewrite import quantize
from tiny import small_resnet

SAMPLES = 24
FAST = ["--target-mem", "0.5", "--criterion", "l1", "--bench-runs", "2", "--bench-threads", "1"]


@pytest.fixture
def files(tmp_path):
    """A small CNN (static batch 1, as exporters write it) and labelled random inputs."""
    model, data = tmp_path / "net.onnx", tmp_path / "calib.npz"
    onnx.save(small_resnet(width=16, batch=1), model)
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.standard_normal((SAMPLES, 3, 16, 16)).astype(np.float32),
             labels=rng.integers(0, 10, SAMPLES))
    return model, data


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_file_report_and_summary(files, tmp_path, capsys):
    model, data = files
    report = tmp_path / "r.json"
    assert main([str(model), *FAST, "--data", str(data), "--quantize", "int8",
                 "--report", str(report)]) == 0
    int8 = tmp_path / "net.pruned.int8.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(int8)
    sess = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0]
    assert out.shape == (1, 10)
    record = json.loads(report.read_text())
    assert record["options"]["quantize"] == "int8"
    rec = record["int8"]
    assert rec["path"] == str(int8) and rec["format"] == "QDQ"
    fid = rec["fidelity"]
    held = SAMPLES // 2  # --holdout 500 is capped at half the data
    assert fid["samples"] == held and rec["calibration"]["samples"] == SAMPLES - held
    assert 0 <= fid["top1_agreement"] <= 1 and fid["max_relative_error"] < 0.5
    assert {"accuracy_float", "accuracy_int8", "mean_abs_error"} <= set(fid)
    for name in ("original", "pruned", "int8"):
        assert rec["latency"][name]["median_ms"] > 0
    assert rec["latency"]["backend"] == "ort-cpu" and rec["latency"]["runs"] == 2
    out = capsys.readouterr().out
    assert "int8 -> " in out and "int8 fidelity: 12 held-out samples" in out
    assert "ort-cpu latency" in out


def test_bench_runs_float_and_int8(files, tmp_path, capsys):
    model, data = files
    assert main([str(model), *FAST, "--data", str(data), "--quantize", "int8"]) == 0
    capsys.readouterr()
    paths = [str(model), str(tmp_path / "net.pruned.onnx"), str(tmp_path / "net.pruned.int8.onnx")]
    assert run_bench(paths + ["--runs", "2", "--warmup", "0", "--threads", "1", "--batch", "1,2",
                              "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    for entry in record["models"]:
        assert all(cell["median_ms"] > 0 for cell in entry["results"].values())


def test_without_data_is_one_line_and_writes_nothing(files, tmp_path, capsys):
    model, _ = files
    assert main([str(model), *FAST, "--quantize", "int8", "--report",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantize int8" in err and "--data" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "net.onnx"]


def test_int8_target_that_is_a_folder_is_refused_before_work(files, tmp_path, capsys):
    model, data = files
    (tmp_path / "net.pruned.int8.onnx").mkdir()
    assert main([str(model), *FAST, "--data", str(data), "--quantize", "int8"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "net.pruned.onnx").exists()


def test_quantizer_failure_leaves_no_partial_file(files, tmp_path, capsys, monkeypatch):
    import onnxruntime.quantization as ortq

    def half_written(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as f:
            f.write(b"\x08\x07partial")
        raise RuntimeError("calibration blew up")

    monkeypatch.setattr(ortq, "quantize_static", half_written)
    model, data = files
    assert main([str(model), *FAST, "--data", str(data), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err  # the error line, after any recovery warning
    errors = [line for line in err.splitlines() if not line.startswith("onnxprune: warning:")]
    assert len(errors) == 1 and "quantizer failed" in err and "calibration blew up" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["calib.npz", "net.onnx", "net.pruned.onnx"]  # no INT8 file, no temp file


def test_dynamic_batch_keeps_its_symbol_and_calibrates_in_batches(tmp_path):
    """A model with a symbolic batch is calibrated in whole batches; the INT8 file keeps it."""
    from calibrate.data import open_data
    from onnxprune.model.graph import input_specs

    path = tmp_path / "dyn.onnx"
    model = small_resnet(width=8, batch="N")
    onnx.save(model, path)
    data = open_data(np.ones((10, 3, 16, 16), np.float32), input_specs(model))
    options = quantize.QuantizeOptions(calibration_samples=8, batch_size=4, holdout=0)
    done = quantize.quantize_int8(path, data, options)
    assert done.samples == 8 and done.path == tmp_path / "dyn.int8.onnx"
    assert done.preprocessed.startswith("shape inference")
    dim = onnx.load(str(done.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "N"


def test_failed_shape_inference_is_recorded_not_fatal(tmp_path, monkeypatch):
    from onnxruntime.quantization import shape_inference

    from calibrate.data import open_data
    from onnxprune.model.graph import input_specs

    def fails(*args, **kwargs):
        raise ValueError("unknown op")

    monkeypatch.setattr(shape_inference, "quant_pre_process", fails)
    path = tmp_path / "m.onnx"
    model = small_resnet(width=8, batch=1)
    onnx.save(model, path)
    data = open_data(np.ones((4, 3, 16, 16), np.float32), input_specs(model))
    done = quantize.quantize_int8(path, data)
    assert done.preprocessed == "none: shape inference failed (unknown op)"
    assert done.path.exists()


def test_split_holds_out_at_most_half():
    from calibrate.data import open_data
    from onnxprune.model.graph import input_specs

    data = open_data(np.ones((5, 3, 16, 16), np.float32), input_specs(small_resnet(batch=1)))
    rest, held = quantize.split(data, quantize.QuantizeOptions(holdout=500))
    assert (rest.num_samples, held.num_samples) == (3, 2)
    assert "2 held out" in rest.description
    with pytest.raises(UserError, match="fewer calibration samples"):
        quantize._reader(small_resnet(batch=4), rest, quantize.QuantizeOptions())
