"""`onnxprune sweep`: one prune per target, one interleaved measurement, table / json / png / md."""
import json

import onnx
import pytest

from onnxprune.bench.backends import unavailable_reason
from onnxprune.bench.base import BackendKind
from onnxprune.cli.main import main
from onnxprune.cli.sweep import sweep, sweep_record, sweep_text
from onnxprune.config import PruneConfig, Target, TargetKind
from onnxprune.latency import LatencyConfig
from tiny import small_resnet

FAST = ["--bench-runs", "3"]


@pytest.fixture(autouse=True)
def cache(isolated_cache):
    return isolated_cache


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "cache")


def test_sweep_writes_models_json_png_md(latency_net, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["sweep", str(latency_net), "--targets", "0.6,0.9", "--round-to", "1",
                 "--out", str(out), *FAST]) == 0
    assert _files(out) == ["net.mem-0.6.onnx", "net.mem-0.9.onnx", "sweep.json", "sweep.md",
                           "sweep.png"]
    text = capsys.readouterr().out
    assert "speed-up" in text and "original" in text and "accuracy" not in text
    record = json.loads((out / "sweep.json").read_text())
    points = record["points"]
    assert [p["target"] for p in points] == [1.0, 0.9, 0.6]
    assert points[0]["speedup"] == 1.0 and all(p["latency_ms"] > 0 for p in points)
    assert all(p["accuracy"] is None for p in points)
    assert points[2]["mem"] <= 0.6 and points[1]["mem"] <= 0.9
    assert record["backend"] == "ort-cpu" and record["runs"] == 3
    assert "| 0.6 |" in (out / "sweep.md").read_text()
    for p in points[1:]:
        onnx.checker.check_model(onnx.load(p["output"]))


def test_sweep_default_folder_and_latency_kind(latency_net, capsys):
    assert main(["sweep", str(latency_net), "--targets", "0.8", "--target-kind", "latency",
                 *FAST]) == 0
    folder = latency_net.with_name("net.sweep")
    assert "net.latency-0.8.onnx" in _files(folder)
    record = json.loads((folder / "sweep.json").read_text())
    assert record["target_kind"] == "latency" and record["normalize"] == "latency"


def test_accuracy_hook():
    latency = LatencyConfig(runs=2, warmup=0, table_runs=2)
    config = PruneConfig(Target(TargetKind.MEM, 0.7), latency=latency)
    points = sweep(small_resnet(width=16), [0.7, 0.5], config, latency,
                   evaluate=lambda model: float(len(model.graph.initializer)))
    assert all(p.accuracy is not None for p in points)
    record = sweep_record(points, config, latency, "net.onnx")
    assert "accuracy" in sweep_text(record)


@pytest.mark.parametrize("case", ["unreachable", "bad fraction", "duplicate", "out is a file",
                                  "unavailable backend"])
def test_sweep_errors_write_nothing(case, latency_net, tmp_path, capsys):
    if case == "unavailable backend" and unavailable_reason(BackendKind.TENSORRT) is None:
        pytest.skip("TensorRT is available here")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    m = str(latency_net)
    argv = {"unreachable": [m, "--targets", "0.9,0.001"],
            "bad fraction": [m, "--targets", "0.5,1.5"],
            "duplicate": [m, "--targets", "0.5,0.5"],
            "out is a file": [m, "--targets", "0.5", "--out", str(afile)],
            "unavailable backend": [m, "--targets", "0.5", "--bench", "tensorrt"]}[case]
    before = _files(tmp_path)
    assert main(["sweep", *argv, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxprune: error:") and len(err.splitlines()) == 1, err
    assert _files(tmp_path) == before
