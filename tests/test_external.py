"""Large weights stay on disk (onnxprune/external.py): lazy stubs, streamed saves, and (slow)
a > 2 GB model pruned within 2.5x its size in memory. A kill mid-write: tests/test_inputs.py."""
import hashlib
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from onnxprune.model import external
from onnxprune.model.io import load, save_atomic
from onnxprune.model.runtime import random_inputs, run
from onnxprune.models.big import build, peak_rss, weight_bytes
from tiny import small_resnet


def _saved(tmp_path, name="ext.onnx", location=None, model=None):
    """small_resnet(width=128) with every initializer in one external file."""
    path = tmp_path / name
    onnx.save(model or small_resnet(width=128, batch=1), path, save_as_external_data=True,
              location=location or name + ".data", size_threshold=0)
    return path


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _locations(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data
            if e.key == "location"}


def test_large_weights_stay_on_disk_and_read_back_equal(tmp_path):
    path = _saved(tmp_path)
    model = load(path)
    full = onnx.load(str(path))
    lazy = {t.name for t in model.graph.initializer if external.is_lazy(t)}
    assert lazy == {"wc1", "wc2"}  # >= 2^18 elements; the rest was read in
    by_name = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(external.value(tensor), by_name[tensor.name])
        np.testing.assert_array_equal(external.view(tensor), by_name[tensor.name])
    feeds = random_inputs(full, 0)
    np.testing.assert_array_equal(run(model, feeds)[0], run(full, feeds)[0])


def test_pruning_a_lazy_model_equals_pruning_it_in_memory(tmp_path):
    """Same plan, same weights; the output keeps external data; the input is untouched."""
    (tmp_path / "in").mkdir()
    model = small_resnet(width=128, batch=1)
    save_atomic(model, tmp_path / "mem.onnx")
    path = _saved(tmp_path / "in", model=model)
    before = _digest(path.parent)
    out, ref = tmp_path / "out.onnx", tmp_path / "ref.onnx"
    assert main([str(path), "--target-mem", "0.5", "-o", str(out)]) == 0
    assert main([str(tmp_path / "mem.onnx"), "--target-mem", "0.5", "-o", str(ref)]) == 0
    assert _digest(path.parent) == before
    assert _locations(out) == {"out.onnx.data"} and not _locations(ref)
    pruned, expected = onnx.load(str(out)), onnx.load(str(ref))
    feeds = random_inputs(expected, 1)
    np.testing.assert_array_equal(run(pruned, feeds)[0], run(expected, feeds)[0])


def test_write_external_streams_every_kind_of_tensor(tmp_path):
    lazy_model = load(_saved(tmp_path))
    lazy = next(t for t in lazy_model.graph.initializer if external.is_lazy(t))
    raw = numpy_helper.from_array(np.arange(300_000, dtype=np.float32), "raw")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [2000], np.ones(2000).tolist())
    small = numpy_helper.from_array(np.array([1, 2], np.int64), "small")
    graph = helper.make_graph([], "g", [], [], [lazy, raw, typed, small])
    model = helper.make_model(graph)
    external.write_external(model, tmp_path / "w.onnx", tmp_path / "w.data", "w.data")
    back = onnx.load(str(tmp_path / "w.onnx"))
    assert model.graph.initializer[0].data_location == TensorProto.EXTERNAL  # not modified
    for want, got in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(got), external.value(want))
    stubs = onnx.load(str(tmp_path / "w.onnx"), load_external_data=False).graph.initializer
    offsets = [int(e.value) for t in stubs for e in t.external_data if e.key == "offset"]
    assert len(offsets) == 3 and all(o % 4096 == 0 for o in offsets)  # small stays inline


def test_overwriting_an_output_alternates_its_data_file(tmp_path):
    path, out = _saved(tmp_path), tmp_path / "out.onnx"
    for expect in ("out.onnx.data", "out.onnx.2.data", "out.onnx.data"):
        assert main([str(path), "--target-mem", "0.6", "-o", str(out)]) == 0
        assert _locations(out) == {expect}
        assert sorted(f.name for f in tmp_path.glob("out.onnx*")) == sorted(["out.onnx", expect])
        onnx.checker.check_model(str(out))


def test_output_never_overwrites_the_inputs_data_file(tmp_path):
    path = _saved(tmp_path, "in.onnx", location="out.onnx.data")
    before = _digest(tmp_path)
    assert main([str(path), "--target-mem", "0.5", "-o", str(tmp_path / "out.onnx")]) == 0
    assert _locations(tmp_path / "out.onnx") == {"out.onnx.2.data"}
    assert {k: v for k, v in _digest(tmp_path).items() if k in before} == before


def test_a_model_proto_with_unloaded_external_data_is_refused(tmp_path):
    from onnxprune.api import analyze
    from onnxprune.errors import UserError

    stubbed = onnx.load(str(_saved(tmp_path)), load_external_data=False)
    with pytest.raises(UserError, match="external data is not loaded"):
        analyze(stubbed)


@pytest.mark.parametrize("damage, expect", [
    ("truncate", "shorter than the tensor"),
    ("escape", "not a path inside the model's folder"),
])
def test_bad_external_data_is_one_line(tmp_path, capsys, damage, expect):
    path = _saved(tmp_path)
    if damage == "truncate":
        data = tmp_path / "ext.onnx.data"
        data.write_bytes(data.read_bytes()[:-4096])
    else:
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "../ext.onnx.data"
        onnx.save(model, str(path))
    before = sorted(os.listdir(tmp_path))
    assert main([str(path), "--target-mem", "0.5", "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_model_over_2gb_prunes_within_2_5x_its_size(tmp_path):
    path = build(tmp_path / "vgg.onnx", gigabytes=2.2)
    size = weight_bytes(path)
    assert size > 2**31
    out = tmp_path / "out.onnx"
    code, peak = peak_rss([sys.executable, "-m", "onnxprune", str(path), "--target-mem", "0.5",
                           "-o", str(out)])
    assert code == 0
    print(f"weights {size / 1e9:.2f} GB, peak RSS {peak / 1e9:.2f} GB "
          f"({peak / size:.2f}x)")
    assert peak <= 2.5 * size
    assert _locations(out) == {"out.onnx.data"}
    assert os.path.getsize(out) < 2 << 20
