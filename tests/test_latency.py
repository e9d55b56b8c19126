"""Latency on the prune command: --bench, --target-latency (per-layer tables), --plots."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune import api
from onnxprune.bench.backends import unavailable_reason
from onnxprune.bench.base import BackendKind
from onnxprune.bench.onnxruntime import LatencyStats
from onnxprune.cli.main import main
from onnxprune.config import Normalize, PruneConfig, Target, TargetKind
from onnxprune.latency import LatencyConfig, LatencyTerm, attach, measure, table
from onnxprune.latency.layers import GRID, LayerTable, layer_model
from onnxprune.latency.table import layer_specs
from tiny import make, node, small_resnet

FAST = ["--bench-runs", "3"]
QUICK = LatencyConfig(runs=3, warmup=1, table_runs=2)


@pytest.fixture(autouse=True)
def cache(isolated_cache):
    return isolated_cache


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "cache")


def test_bench_adds_latency_to_report_and_summary(latency_net, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main([str(latency_net), "--target-mem", "0.5", "--bench", "ort-cpu", *FAST,
                 "--bench-threads", "1", "--report", str(report)]) == 0
    assert "latency on ort-cpu" in capsys.readouterr().out
    lat = json.loads(report.read_text())["latency"]
    assert lat["backend"] == "ort-cpu" and lat["runs"] == 3 and lat["batch"] == 1
    assert lat["threads"] == 1
    for side in ("before", "after"):
        assert 0 < lat[side]["median_ms"] <= lat[side]["p90_ms"]
    assert lat["speedup"] == pytest.approx(lat["before"]["median_ms"] / lat["after"]["median_ms"])


@pytest.mark.parametrize("target", [["--target-mem", "0.5"], ["--target-latency", "0.7"]])
def test_unavailable_backend_exits_2_before_any_work(target, latency_net, tmp_path, capsys,
                                                     monkeypatch):
    if unavailable_reason(BackendKind.TENSORRT) is None:
        pytest.skip("TensorRT is available here")
    monkeypatch.setattr(api, "prune", lambda *a, **k: pytest.fail("pruned before the check"))
    before = _files(tmp_path)
    argv = [str(latency_net), *target, "--bench", "tensorrt", "--report", str(tmp_path / "r.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensorrt backend unavailable" in err
    assert _files(tmp_path) == before


def test_target_latency_reports_predicted_and_measured(latency_net, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main([str(latency_net), "--target-latency", "0.7", *FAST, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "latency target 0.7" in out and "latency ms, predicted" in out
    record = json.loads(report.read_text())
    t = record["latency_target"]
    assert record["options"]["normalize"] == "latency" and record["latency"]["runs"] == 3
    assert t["predicted"]["ratio"] <= 0.7 and t["measured"]["ratio"] > 0
    assert t["met"] == (t["measured"]["ratio"] <= 0.7)
    assert t["measured"]["before"]["median_ms"] > 0 and t["measured"]["after"]["median_ms"] > 0
    chosen = t["attempts"][t["chosen"]]
    assert chosen["predicted_ratio"] <= chosen["planned"] <= 0.7
    assert record["after"]["latency"] <= 0.7 * record["before"]["latency"]


def test_latency_normaliser_and_api_target():
    model = small_resnet(width=64, size=32)
    config = PruneConfig(Target(TargetKind.LATENCY, 0.7), normalize=Normalize.LATENCY,
                         round_to=1, latency=QUICK)
    result = api.prune(model, config)
    assert result.plan.after.latency <= 0.7 * result.plan.before.latency
    assert result.error <= 1e-4
    mem = api.prune(model, PruneConfig(Target(TargetKind.MEM, 0.6), normalize=Normalize.LATENCY,
                                       latency=QUICK))
    assert mem.plan.after.mem <= 0.6 * mem.plan.before.mem and mem.plan.after.latency > 0


def test_table_cache_is_reused(monkeypatch, cache):
    calls = []
    for name in ("time_layer", "time_models"):
        real = getattr(table, name)
        monkeypatch.setattr(table, name,
                            lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    model = small_resnet(width=16)
    first = attach(api.analyze(model), QUICK)
    timed = len(calls)
    assert timed > 0 and not first.table.cached and first.table.path.parent == cache / "latency"
    second = attach(api.analyze(model), QUICK)
    assert len(calls) == timed and second.table.cached
    np.testing.assert_allclose(second.table.values, first.table.values)


def _fake_table(n_layers: int) -> LayerTable:
    grid = np.asarray(GRID)
    values = np.stack([np.outer(grid, grid) * (i + 1) for i in range(n_layers)])
    return LayerTable([], values, model_ms=0.0, overhead_ms=0.01)


def test_term_interpolates_and_normalises():
    analysis = api.analyze(small_resnet(width=16))
    term = attach(analysis, QUICK)
    fake = _fake_table(len(term.table.layers))
    fake.layers, fake.model_ms = term.table.layers, float(fake.values[:, -1, -1].sum()) + 1.0
    term = LatencyTerm(fake, analysis.costs)
    sizes = analysis.costs.sizes
    assert term.rest == pytest.approx(1.0)
    assert term.total(sizes) == pytest.approx(0.01 + fake.model_ms)
    half = np.full(len(fake.layers), 0.5)
    np.testing.assert_allclose(term.interpolate(half, half), 0.25 * fake.values[:, -1, -1])
    tiny = np.full(len(fake.layers), 0.01)  # held at the narrowest width, never extrapolated
    np.testing.assert_allclose(term.interpolate(tiny, tiny), fake.values[:, 0, 0])
    per_node = analysis.costs.per_node_latency()
    assert (per_node >= 0).all() and per_node.sum() > 0


def _odd_layers():
    """Plain, depthwise and grouped Conv, plain and grouped ConvTranspose, Gemm, MatMul."""
    nodes = [node("Conv", ["x", "w1"], ["a"], pads=[1] * 4),
             node("Conv", ["a", "w2"], ["b"], group=16, kernel_shape=[3, 3], pads=[1] * 4),
             node("Conv", ["b", "w3", "b3"], ["c"], group=4),
             node("ConvTranspose", ["c", "w4"], ["d"], strides=[2, 2]),
             node("ConvTranspose", ["d", "w5", "b5"], ["e"], group=4, strides=[2, 2]),
             node("GlobalAveragePool", ["e"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w6", "b6"], ["h"], transB=1),
             node("MatMul", ["h", "w7"], ["y"])]
    inits = {"w1": (16, 8, 3, 3), "w2": (16, 1, 3, 3), "w3": (16, 4, 1, 1), "b3": (16,),
             "w4": (16, 8, 2, 2), "w5": (8, 2, 2, 2), "b5": (8,), "w6": (10, 8), "b6": (10,),
             "w7": (10, 6)}
    return make(nodes, {"x": [1, 8, 8, 8]}, ["y"], inits)


@pytest.mark.parametrize("f_in,f_out", [(1.0, 1.0), (0.5, 0.25), (0.125, 0.75)])
def test_one_node_layer_models_are_valid(f_in, f_out):
    specs = layer_specs(api.analyze(_odd_layers()).model)
    assert [s.layer.op for s in specs] == ["Conv"] * 3 + ["ConvTranspose"] * 2 + ["Gemm", "MatMul"]
    assert [s.layer.in_axis for s in specs] == [1, None, None, 0, None, 1, 0]
    for spec in specs:
        model = layer_model(spec, f_in, f_out)
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        sess.run(None, {"x": np.zeros(shape, np.float32)})


def _stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, ms, ms, 3, "CPUExecutionProvider")


@pytest.mark.parametrize("ratios,chosen,met", [([0.95, 0.85], 1, True),
                                               ([0.95, 0.92, 0.93], 1, False)])
def test_target_latency_replans_on_a_miss(ratios, chosen, met, monkeypatch):
    measured = iter(ratios)
    monkeypatch.setattr(measure, "measure", lambda models, *a: [_stats(10.0),
                                                                _stats(10.0 * next(measured))])
    config = PruneConfig(Target(TargetKind.LATENCY, 0.9), normalize=Normalize.LATENCY,
                         latency=QUICK, round_to=1)
    result, extra = measure.prune_to_latency(small_resnet(width=64, size=32), config)
    t = extra["latency_target"]
    assert [a["measured_ratio"] for a in t["attempts"]] == pytest.approx(ratios)
    assert t["chosen"] == chosen and t["met"] is met
    first = t["attempts"][0]
    assert t["attempts"][1]["planned"] == pytest.approx(first["predicted_ratio"] * 0.9 / 0.95)
    assert t["attempts"][1]["predicted_ratio"] < first["predicted_ratio"]
    assert result.plan.after.latency == pytest.approx(t["predicted"]["after_ms"])
    assert ("MISSES" in measure.summary_lines(extra)) is not met


def test_plots_option_writes_files(latency_net, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plots"
    assert main([str(latency_net), "--target-mem", "0.5", "--bench", "ort-cpu", *FAST,
                 "--plots", str(folder)]) == 0
    assert _files(folder) == ["costs.png", "groups.png", "summary.md"]
    assert "## Latency" in (folder / "summary.md").read_text()


@pytest.mark.parametrize("case", ["plots is a file", "bench runs", "bench threads",
                                  "bad backend"])
def test_latency_option_errors(case, latency_net, tmp_path, capsys):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    extra = {"plots is a file": ["--plots", str(afile)], "bench runs": ["--bench-runs", "0"],
             "bench threads": ["--bench-threads", "0"], "bad backend": ["--bench", "gpu9000"]}[case]
    before = _files(tmp_path)
    assert main([str(latency_net), "--target-latency", "0.7", *extra]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _files(tmp_path) == before


def test_config_is_light_and_latency_config_lives_there():
    """onnxprune.config (LatencyConfig included) imports neither onnxruntime nor onnx."""
    import subprocess
    import sys

    code = ("import sys, onnxprune.config as c; "
            "assert not {'onnxruntime', 'onnx', 'numpy'} & set(sys.modules), sorted(sys.modules); "
            "assert c.LatencyConfig().backend is c.BackendKind.ORT_CPU")
    subprocess.run([sys.executable, "-c", code], check=True)
    from onnxprune import config

    assert LatencyConfig is config.LatencyConfig  # onnxprune.latency re-exports it


def test_latency_cache_is_the_project_cache(cache):
    assert LatencyConfig().cache == cache / "latency"


def test_latency_with_finetuning_is_refused_before_work(monkeypatch):
    from onnxprune.config import FinetuneConfig
    from onnxprune.errors import UserError

    monkeypatch.setattr(api, "prune", lambda *a, **k: pytest.fail("pruned before the check"))
    config = PruneConfig(Target(TargetKind.LATENCY, 0.7), normalize=Normalize.LATENCY,
                         finetune=FinetuneConfig(steps=1))
    with pytest.raises(UserError, match="fine-tuning"):
        measure.prune_measured(small_resnet(), config, data=[])
