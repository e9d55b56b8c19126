"""`onnxprune bench` (ORT CPU here; GPU backends unavailable or `gpu`-marked) and the plots."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.api import prune
from onnxprune.bench import backends
from onnxprune.bench.backends import unavailable_reason
from onnxprune.bench.base import BackendKind, BackendUnavailable
from onnxprune.bench.cli import main, run_bench
from onnxprune.config import PruneConfig, Target, TargetKind
from onnxprune.errors import UserError
from onnxprune.report import plots
from onnxprune.report.record import prune_record
from tiny import make, node, small_resnet

FAST = ["--runs", "3", "--warmup", "1", "--threads", "1"]
GPU_KINDS = [BackendKind.ORT_CUDA, BackendKind.ORT_TRT, BackendKind.TENSORRT]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    paths = [folder / "big.onnx", folder / "small.onnx"]
    onnx.save(small_resnet(width=32, batch=1), paths[0])
    onnx.save(small_resnet(width=16, batch=1), paths[1])
    return [str(p) for p in paths]


def _json(capsys, argv):
    assert run_bench(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_two_models(two_models, capsys):
    record = _json(capsys, two_models + FAST)
    assert record["backend"] == "ort-cpu" and record["speedup"] > 0
    for model in record["models"]:
        cell = model["results"]["1"]
        assert 0 < cell["median_ms"] <= cell["p90_ms"]
        assert cell["throughput"] > 0 and cell["runs"] == 3
    assert record["models"][0]["results"]["1"]["speedup"] == 1.0
    assert record["speedup"] == record["models"][1]["results"]["1"]["speedup"]


def test_one_model_has_no_speedup_and_seconds_mode(two_models, capsys):
    record = _json(capsys, two_models[:1] + ["--seconds", "0.05", "--warmup", "0"])
    assert record["speedup"] is None and record["models"][0]["results"]["1"]["runs"] >= 1


def test_rebatching(two_models, capsys):
    record = _json(capsys, two_models + FAST + ["--batch", "1,4"])
    assert record["batches"] == [1, 4]
    for model in record["models"]:
        assert model["results"]["4"]["median_ms"] > 0


def test_text_table(two_models, capsys):
    assert run_bench(two_models + FAST + ["--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "speed-up of" in out and out.count("small.onnx") >= 2


def _reshape_model(path, shape):
    """Reshape with the batch baked into its constant target."""
    model = make([node("Reshape", ["x", "shape"], ["y"]), node("Relu", ["y"], ["z"])],
                 {"x": [1, 3, 4, 4]}, ["z"], {"shape": np.array(shape, dtype=np.int64)})
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("shape", [[1, 48], [1, -1]])
def test_batch_one_reshape_targets_are_rebatched(tmp_path, capsys, shape):
    path = _reshape_model(tmp_path / "r.onnx", shape)
    record = _json(capsys, [path] + FAST + ["--batch", "1,4"])
    assert record["models"][0]["results"]["4"]["median_ms"] > 0


def test_hard_coded_batch_is_one_line_not_a_crash(tmp_path, capsys):
    """Gather(x, [0], axis=0) picks sample 0 whatever the batch: no rewrite can fix it."""
    model = make([node("Gather", ["x", "first"], ["y"], axis=0), node("Relu", ["y"], ["z"])],
                 {"x": [1, 3, 4, 4]}, ["z"], {"first": np.array([0], dtype=np.int64)})
    path = str(tmp_path / "g.onnx")
    onnx.save(model, path)
    record = _json(capsys, [path] + FAST + ["--batch", "1,4"])
    results = record["models"][0]["results"]
    assert results["1"]["median_ms"] > 0
    assert "cannot be re-batched to 4" in results["4"]["error"]


@pytest.mark.parametrize("argv, message", [
    (["missing.onnx"], "no such file"),
    (["{m}", "--batch", "1,x"], "--batch"),
    (["{m}", "--batch", "0"], "--batch"),
    (["{m}", "--backend", "cuda"], "--backend"),
    (["{m}", "--runs", "0"], "--runs"),
    (["{m}", "--runs", "3", "--seconds", "1"], "not allowed"),
    (["{m}", "--fp16"], "--fp16"),
    (["{m}", "--layers", "5"], "--layers"),
])
def test_user_errors(two_models, argv, message):
    argv = [a.format(m=two_models[0]) for a in argv]
    with pytest.raises(UserError, match=message):
        run_bench(argv)


def test_dynamic_spatial_dims_are_a_user_error(tmp_path):
    model = small_resnet(width=8)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    onnx.save(model, tmp_path / "dyn.onnx")
    with pytest.raises(UserError, match="dynamic dimension 'H'.*bench needs static shapes"):
        run_bench([str(tmp_path / "dyn.onnx")] + FAST)


def test_engine_cache_is_the_project_cache(isolated_cache):
    assert backends.BackendOptions().cache_dir == isolated_cache / "engines"


def test_main_prints_one_line_and_exits_2(capsys):
    assert main(["missing.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


@pytest.mark.parametrize("kind", GPU_KINDS, ids=lambda k: k.value)
def test_gpu_backends_unavailable_here(two_models, kind):
    if unavailable_reason(kind) is None:
        pytest.skip(f"{kind.value} runs on this machine")
    with pytest.raises(BackendUnavailable, match=f"{kind.value} backend unavailable"):
        run_bench(two_models + ["--backend", kind.value] + FAST)


def test_silent_cpu_fallback_is_detected(monkeypatch):
    """onnxruntime-gpu without a GPU lists CUDA as available, then runs on the CPU."""
    if unavailable_reason(BackendKind.ORT_CUDA) is None:
        pytest.skip("CUDA runs on this machine")
    monkeypatch.setattr(backends.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="fell back to CPUExecutionProvider"):
        backends.get_backend(BackendKind.ORT_CUDA, backends.BackendOptions()).check()


def test_compare_flags_mismatch():
    from onnxprune.bench.cli import compare

    ref = [np.ones((2, 3), np.float32)]
    assert not compare([ref[0] + 1e-5], ref, fp16=False)["mismatch"]
    assert compare([ref[0] + 1e-2], ref, fp16=False)["mismatch"]
    assert not compare([ref[0] + 1e-3], ref, fp16=True)["mismatch"]
    assert compare([np.ones((3, 2), np.float32)], ref, fp16=False)["mismatch"]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", GPU_KINDS, ids=lambda k: k.value)
def test_gpu_backend_matches_cpu(two_models, capsys, kind, tmp_path):
    reason = unavailable_reason(kind)
    if reason is not None:
        pytest.skip(reason)
    extra = ["--cache-dir", str(tmp_path), "--batch", "1,4"]
    if kind is BackendKind.TENSORRT:
        extra += ["--layers", "3"]
    record = _json(capsys, two_models + FAST + ["--backend", kind.value] + extra)
    cell = record["models"][1]["results"]["1"]
    assert cell["median_ms"] > 0 and not cell["comparison"]["mismatch"]
    if kind is BackendKind.TENSORRT:
        assert cell["layers"]


# --- plots -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def record():
    config = PruneConfig(Target(TargetKind.MEM, 0.5))
    rec = prune_record(prune(small_resnet(width=32), config), config, "in.onnx", "out.onnx")
    rec["latency"] = {"backend": "ort-cpu", "before_ms": 1.5, "after_ms": 0.75}
    return rec


def _png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(record, tmp_path):
    written = plots.write_all(record, tmp_path)
    assert _png(written["groups"]) and _png(written["costs"])
    assert "| M (feature-map elements) |" in written["summary"].read_text()
    points = [{"target": t, "mem": t, "macs": t * 0.7, "latency_ms": 1 + t,
               "accuracy": 0.8 + 0.1 * t} for t in (0.3, 0.5, 1.0)]
    assert _png(plots.sweep_plot(points, tmp_path / "sweep.png"))
    assert _png(plots.sweep_plot([{k: v for k, v in p.items() if k != "accuracy"}
                                  for p in points], tmp_path / "sweep2.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "costs.png", "groups.png", "summary.md", "sweep.png", "sweep2.png"]  # no temp files


def test_markdown_summary(record, two_models, capsys):
    text = plots.markdown_summary(record)
    assert "| cost | before | after | after / before |" in text
    assert "| MACs |" in text and "**exact**" in text and "## Latency" in text
    assert "## Timings" in text and "Pruned most" in text
    record = dict(record, latency=_json(capsys, two_models + FAST))
    assert "| model | batch | median ms |" in plots.markdown_summary(record)


def test_sweep_point_without_latency_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="latency_ms"):
        plots.sweep_plot([{"target": 0.5, "mem": 0.5, "macs": 0.4}], tmp_path / "s.png")


def test_plots_without_matplotlib(record, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` -> ImportError
    with pytest.raises(UserError, match="matplotlib"):
        plots.costs_plot(record, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())
    assert "## Costs" in plots.markdown_summary(record)  # text needs no matplotlib



def test_bench_cli_and_plots_import_no_optional_packages():
    """torch, tensorrt and matplotlib load only when a backend or a plot asks for them."""
    code = ("import sys, onnxprune.bench.cli, onnxprune.report.plots; "
            "assert not {'torch', 'tensorrt', 'matplotlib'} & set(sys.modules)")
    root = Path(plots.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(root)})


# --- TensorRT optimization profiles (no TensorRT here: parsing, options, a fake builder) -----

def _dynamic(tmp_path, name="dyn.onnx"):
    path = tmp_path / name
    onnx.save(small_resnet(width=8, batch="N"), path)
    return str(path)


def _profile(argv):
    from onnxprune.bench.cli import bench_parser, bench_profile
    from onnxprune.model.io import load

    args = bench_parser().parse_args(argv)
    return bench_profile(args, [load(m) for m in args.models], args.models)


SHAPES = ["--min-shapes", "input:1x3x16x16", "--opt-shapes", "4x3x16x16",
          "--max-shapes", "input:32x3x16x16"]


def test_profile_flags_are_trtexecs_min_opt_max(tmp_path):
    profile = _profile([_dynamic(tmp_path), "--backend", "tensorrt", "--batch", "1,8"] + SHAPES)
    assert profile.as_dict() == {"input": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16],
                                           "max": [32, 3, 16, 16]}}
    assert profile.describe() == "input 1x3x16x16 to 32x3x16x16, opt 4x3x16x16"


def test_default_profile_spans_the_batches_of_a_dynamic_model(tmp_path, two_models):
    profile = _profile([_dynamic(tmp_path), "--backend", "ort-trt", "--batch", "4,1,16"])
    r = profile.get("input")
    assert (r.min[0], r.opt[0], r.max[0]) == (1, 4, 16) and r.min[1:] == (3, 16, 16)
    assert _profile(two_models + ["--backend", "ort-trt", "--batch", "1,4"]) is None  # static
    assert _profile([_dynamic(tmp_path), "--batch", "1,4"]) is None  # ort-cpu: no engine


@pytest.mark.parametrize("argv, message", [
    (SHAPES[:4], "give all three or none"),
    (["--min-shapes", "8x3x16x16", "--opt-shapes", "4x3x16x16", "--max-shapes", "16x3x16x16"],
     "min <= opt <= max"),
    (["--min-shapes", "x:1x3x16x16", "--opt-shapes", "4x3x16x16", "--max-shapes", "8x3x16x16"],
     "--min-shapes names 'x'"),
    (["--min-shapes", "1x3", "--opt-shapes", "4x3x16x16", "--max-shapes", "8x3x16x16"],
     "different ranks"),
    (["--min-shapes", "1x3x16x16", "--opt-shapes", "4x3x16x16", "--max-shapes", "8x3x16x16",
      "--batch", "16"], "outside the optimization profile"),
])
def test_profile_errors_are_one_line(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        _profile([_dynamic(tmp_path), "--backend", "tensorrt"] + argv)


def test_profile_flags_need_a_tensorrt_backend(tmp_path):
    with pytest.raises(UserError, match="profiles are for --backend tensorrt or ort-trt"):
        run_bench([_dynamic(tmp_path)] + SHAPES + FAST)


def test_ort_trt_provider_options_carry_the_profile(tmp_path, two_models):
    from onnxprune.bench.profile import parse_profile

    profile = parse_profile(("1x3x16x16", "4x3x16x16", "32x3x16x16"), ["input"])
    options = backends.BackendOptions(cache_dir=tmp_path / "engines", profile=profile)
    ort_trt = backends.get_backend(BackendKind.ORT_TRT, options)
    dynamic = onnx.load(_dynamic(tmp_path))
    (name, trt), *rest = ort_trt._providers(False, dynamic, 4)
    assert name == "TensorrtExecutionProvider" and rest[-1] == "CPUExecutionProvider"
    assert trt["trt_profile_min_shapes"] == "input:1x3x16x16"
    assert trt["trt_profile_opt_shapes"] == "input:4x3x16x16"
    assert trt["trt_profile_max_shapes"] == "input:32x3x16x16"
    assert "profile-" in trt["trt_engine_cache_path"]  # an engine folder per profile
    static = onnx.load(two_models[0])  # static inputs: a fixed engine, no profile options
    (_, trt), *_ = ort_trt._providers(False, static, 1)
    assert not any(k.startswith("trt_profile") for k in trt)
    assert trt["trt_engine_cache_path"] == str(tmp_path / "engines")


class _FakeTensorRT:
    """Just enough of the tensorrt module for build_engine: records the profile's set_shape."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class BuilderFlag:
        FP16 = "fp16"

    def __init__(self, inputs):
        self.inputs, self.shapes, self.flags = inputs, [], []
        fake = self

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.shapes.append((name, tuple(low), tuple(opt), tuple(high)))

        class Network:
            num_inputs = len(inputs)

            def get_input(self, i):
                return type("Input", (), {"name": inputs[i]})()

        class Config:
            def set_flag(self, flag):
                fake.flags.append(flag)

            def add_optimization_profile(self, profile):
                fake.added = profile

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_tensorrt_builds_with_the_profile(tmp_path):
    from onnxprune.bench.profile import Range, engine_ranges, parse_profile
    from onnxprune.bench.tensorrt import build_engine, engine_path
    from onnxprune.model.graph import input_specs

    profile = parse_profile(("1x3x16x16", "8x3x16x16", "32x3x16x16"), ["input"])
    model = onnx.load(_dynamic(tmp_path))
    ranges = engine_ranges(model, input_specs(model, 4), profile)
    trt = _FakeTensorRT(["input"])
    assert build_engine(trt, b"onnx", ranges, fp16=True) == b"engine"
    assert trt.shapes == [("input", (1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))]
    assert trt.flags == ["fp16"]
    fixed = engine_ranges(model, input_specs(model, 4), None)  # no profile: the run shape
    assert fixed == {"input": Range((4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16))}
    paths = {engine_path(tmp_path, b"onnx", r, False, "10.0") for r in (ranges, fixed, ranges)}
    assert len(paths) == 2  # the cache key names the profile
