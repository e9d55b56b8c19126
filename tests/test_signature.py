"""The pruned file keeps the original's signature (onnxprune.rewrite.signature): input and
output names, dtypes, ranks and dynamic dimensions with their names; the oracle runs at the
analysis shape and at a second one; a model tied to one size says so in one line (exit 2) and
prunes with --static-shape."""
from __future__ import annotations

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import prune
from onnxprune.cli.main import main
from onnxprune.config import Criterion, FinetuneConfig, PruneConfig, Schedule, Target, TargetKind
from onnxprune.model.graph import input_specs
from tiny import small_resnet

torch = pytest.importorskip("torch")
nn = torch.nn
TOLERANCE = 1e-4


class Net(nn.Module):
    """Conv-BN-ReLU, a residual block, a strided stage, flatten -> linear (a batch Reshape)."""

    def __init__(self, size: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32 * (size // 2) ** 2, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.down(torch.relu(x + self.block(x)))
        return self.fc(x.reshape(x.shape[0], -1))


class Dense(Net):
    """Fully convolutional: any H, W; a Resize to the input's size, a channel Slice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 10)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        y = self.down(torch.relu(y + self.block(y)))
        up = nn.functional.interpolate(self.head(y), size=x.shape[-2:])
        return self.fc(y.mean((2, 3))), up[:, :3]


def _export(net, path, dynamo: bool, axes: dict[int, str], size=16, outputs=("y",)):
    x = torch.randn(2 if dynamo else 1, 3, size, size)
    names = {"input_names": ["x"], "output_names": list(outputs)}
    if dynamo:
        dims = {a: torch.export.Dim(n, min=2 if a == 0 else 8) for a, n in axes.items()}
        torch.onnx.export(net.eval(), (x,), path, dynamo=True, dynamic_shapes=(dims,),
                          external_data=False, **names)
    else:
        torch.onnx.export(net.eval(), (x,), path, dynamo=False, **names,
                          dynamic_axes={"x": axes, **{o: {0: axes[0]} for o in outputs}})
    return path


def _types(vis) -> list:
    return [(vi.name, vi.type) for vi in vis]


def _inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _masked(original: onnx.ModelProto, record: dict) -> onnx.ModelProto:
    """The original file with every sink slice of the report zeroed (the report's recipe)."""
    masked = onnx.ModelProto()
    masked.CopyFrom(original)
    inits = {i.name: i for i in masked.graph.initializer}
    for s in record["slices"]:
        if s["role"] in ("sink", "mask"):
            value = numpy_helper.to_array(inits[s["initializer"]]).copy()
            np.moveaxis(value, s["axis"], 0)[s["removed"]] = 0
            inits[s["initializer"]].CopyFrom(numpy_helper.from_array(value, s["initializer"]))
    return masked


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _error(got, want) -> float:
    return max(float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max()))
               for g, w in zip(got, want))


def _prune(tmp_path, source, *args) -> tuple[int, dict | None]:
    out, report = tmp_path / "out.onnx", tmp_path / "out.json"
    code = main([str(source), "--target-mem", "0.5", "-o", str(out), "--report", str(report),
                 *args])
    return code, json.loads(report.read_text()) if code == 0 else None


def _same_as_masked_original(tmp_path, source, record, shapes) -> None:
    original, pruned = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    assert _types(_inputs(pruned)) == _types(_inputs(original))  # names, dtypes, dims
    assert _types(pruned.graph.output) == _types(original.graph.output)
    masked, rng = _masked(original, record), np.random.default_rng(1)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        got, want, unmasked = _run(pruned, x), _run(masked, x), _run(original, x)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert _error(got, want) <= TOLERANCE, shape
        assert _error(got, unmasked) > TOLERANCE  # not vacuous: the prune changed the outputs


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_dynamic_batch_survives_and_is_proven_at_two_batches(tmp_path, capsys, dynamo):
    source = _export(Net(), tmp_path / "net.onnx", dynamo, {0: "batch"})
    code, record = _prune(tmp_path, source)
    assert code == 0, capsys.readouterr().err
    dims = onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    _same_as_masked_original(tmp_path, source, record, [(1, 3, 16, 16), (5, 3, 16, 16),
                                                        (32, 3, 16, 16)])
    checks = record["verification"]["shapes"]
    assert [c["inputs"]["x"] for c in checks] == [[1, 3, 16, 16], [2, 3, 16, 16]]
    assert all(c["max_relative_error"] <= TOLERANCE for c in checks)
    assert record["verification"]["dynamic_dims"] == [{"input": "x", "axis": 0,
                                                       "name": "batch"}]
    assert "oracle at input 1x3x16x16: " in capsys.readouterr().out


def test_a_second_batch_of_three_when_the_analysis_batch_is_two(tmp_path):
    source = _export(Net(), tmp_path / "net.onnx", False, {0: "batch"})
    code, record = _prune(tmp_path, source, "--input-shape", "2x3x16x16")
    assert code == 0
    assert [c["inputs"]["x"][0] for c in record["verification"]["shapes"]] == [2, 3]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_dynamic_height_and_width_survive(tmp_path, capsys, dynamo):
    axes = {0: "batch", 2: "h", 3: "w"}
    source = _export(Dense(), tmp_path / "dense.onnx", dynamo, axes, outputs=("y", "up"))
    code, record = _prune(tmp_path, source, "--input-shape", "1x3x32x32")
    assert code == 0, capsys.readouterr().err
    checks = record["verification"]["shapes"]
    assert [c["inputs"]["x"] for c in checks] == [[1, 3, 32, 32], [2, 3, 64, 96]]
    _same_as_masked_original(tmp_path, source, record, [(1, 3, 32, 32), (3, 3, 48, 40),
                                                        (2, 3, 24, 80)])


def test_a_pruned_dynamic_file_records_its_analysis_shape(tmp_path, capsys):
    """Where one static shape is needed (latency of --bench, `onnxprune bench`, pruning the
    file again), its dynamic dims take the analysis size the file records."""
    source = _export(Dense(), tmp_path / "dense.onnx", False, {0: "batch", 2: "h", 3: "w"},
                     outputs=("y", "up"))
    code, record = _prune(tmp_path, source, "--input-shape", "1x3x32x24", "--bench", "ort-cpu",
                          "--bench-runs", "2")
    assert code == 0, capsys.readouterr().err
    assert record["latency"]["after"]["median_ms"] > 0
    pruned = onnx.load(tmp_path / "out.onnx")
    assert [s.shape for s in input_specs(pruned)] == [(1, 3, 32, 24)]
    assert main(["bench", str(tmp_path / "out.onnx"), "--runs", "2"]) == 0
    again = tmp_path / "again.onnx"
    assert main([str(tmp_path / "out.onnx"), "--target-mem", "0.9", "--round-to", "1", "-o",
                 str(again)]) == 0
    assert input_specs(onnx.load(again))[0].shape == (1, 3, 32, 24)


def test_a_size_the_original_cannot_run_at_is_one_line_and_static_shape_prunes(tmp_path,
                                                                                capsys):
    """Flatten -> Linear fixes H, W although the export declares them dynamic."""
    source = _export(Net(), tmp_path / "net.onnx", False, {0: "batch", 2: "h", 3: "w"})
    code, _ = _prune(tmp_path, source, "--input-shape", "1x3x16x16")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "does not run at a second size" in err and "--static-shape" in err
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.json").exists()
    code, record = _prune(tmp_path, source, "--input-shape", "1x3x16x16", "--static-shape")
    assert code == 0
    dims = onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 16, 16]
    assert len(record["verification"]["shapes"]) == 1 and record["verification"]["static_shape"]
    assert "--static-shape, the file keeps the analysis shape 1x3x16x16" in capsys.readouterr().out


def _tied(kind: str) -> onnx.ModelProto:
    """Two convs, then a graph tied to batch 1: a Reshape to a constant [1, -1] before a Gemm,
    or a Gather of row 0 of the batch axis, under a declared batch "N"."""
    rng = np.random.default_rng(0)
    inits = {"w0": (16, 3, 3, 3), "w1": (8, 16, 3, 3), "w2": (4, 8, 3, 3), "fw": (10, 512)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in inits.items()]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1] * 4)]
    if kind == "reshape":
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
        nodes += [helper.make_node("Reshape", ["c1", "flat"], ["f"]),
                  helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
        out = ["N", 10]
    else:
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "row"))
        nodes += [helper.make_node("Gather", ["c1", "row"], ["g"], axis=0),
                  helper.make_node("Conv", ["g", "w2"], ["y"], pads=[1] * 4)]
        out = ["N", 4, 8, 8]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kind, why", [("reshape", "does not run at a second size"),
                                       ("gather", "the model ties it to the analysis size")])
def test_a_model_tied_to_batch_one_says_so_and_prunes_with_static_shape(tmp_path, capsys,
                                                                          kind, why):
    source = tmp_path / f"{kind}.onnx"
    onnx.save(_tied(kind), source)
    code = main([str(source), "--target-mem", "0.8", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert why in err and "input 'x' axis 0 (N)" in err and "--static-shape" in err
    assert not (tmp_path / "out.onnx").exists()
    assert main([str(source), "--target-mem", "0.8", "-o", str(tmp_path / "out.onnx"),
                 "--static-shape"]) == 0
    dims = onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1


def test_unnamed_dynamic_dims_stay_unnamed_and_static_models_are_unaffected(tmp_path):
    free = small_resnet(batch=None)
    assert not free.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_param")
    onnx.save(free, tmp_path / "free.onnx")
    code, record = _prune(tmp_path, tmp_path / "free.onnx")
    assert code == 0
    dim = onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim.HasField("dim_param") and not dim.HasField("dim_value")
    assert record["verification"]["dynamic_dims"] == [{"input": "input", "axis": 0,
                                                       "name": "?"}]
    onnx.save(small_resnet(batch=1), tmp_path / "static.onnx")
    code, record = _prune(tmp_path, tmp_path / "static.onnx")
    assert code == 0 and "signature" not in record["timings"]
    assert len(record["verification"]["shapes"]) == 1
    assert not record["verification"]["dynamic_dims"]


class Shuffle(nn.Module):
    """A channel shuffle at a dynamic H, W: its Reshape targets need the input's H and W on
    other axes, so the rewrite gathers them from Shape(input)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        n, c, h, w = y.shape
        y = y.reshape(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.c(y)


def test_channel_shuffle_at_dynamic_size_reads_sizes_from_shape(tmp_path, capsys):
    source = _export(Shuffle(), tmp_path / "shuffle.onnx", False, {0: "batch", 2: "h", 3: "w"})
    code, record = _prune(tmp_path, source, "--input-shape", "1x3x16x16", "--round-to", "1")
    assert code == 0, capsys.readouterr().err
    pruned = onnx.load(tmp_path / "out.onnx")
    assert any(n.op_type == "Shape" and "__free" in n.name for n in pruned.graph.node)
    _same_as_masked_original(tmp_path, source, record, [(1, 3, 16, 16), (2, 3, 24, 40)])


@pytest.mark.parametrize("schedule", ["oneshot", "gfp"])
def test_fine_tuned_slice_keeps_the_signature(tmp_path, schedule):
    """The rewrite reads shapes only: the fine-tuned slice (other weights) gets it too; the
    proof at both batches is on the slice with the original's weights."""
    buf = io.BytesIO()
    _export(Net(size=8), buf, False, {0: "batch"}, size=8)
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    config = PruneConfig(Target(TargetKind.MEM, 0.6), criterion=Criterion.FISHER, round_to=1,
                         finetune=FinetuneConfig(steps=6, batch_size=16, prune_every=1,
                                                 schedule=Schedule(schedule)), holdout=16)
    result = prune(onnx.load_from_string(buf.getvalue()), config,
                   data=[({"x": x}, (x[:, 0].mean((1, 2)) > 0).astype(np.int64))])
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [c.inputs["x"][0] for c in result.shapes] == [1, 2]
    assert _run(result.model, x[:5])[0].shape == (5, 10)
