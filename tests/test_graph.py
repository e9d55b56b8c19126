"""Loading and atomic saving."""
import os

import numpy as np
import onnx
import pytest

import onnxprune.model.io as model_io
from onnxprune.model.io import save_atomic
from onnxprune.model.runtime import random_inputs, run
from tiny import small_resnet


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "_TWO_GB", 1000)  # pretend the tiny model is over 2 GB
    model = small_resnet(width=32, batch=1)
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    save_atomic(model, tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    loaded = onnx.load(tmp_path / "m.onnx")
    feeds = random_inputs(loaded, 0)
    np.testing.assert_array_equal(run(loaded, feeds)[0], run(expected, feeds)[0])


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", broken)
    with pytest.raises(OSError):
        save_atomic(small_resnet(), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []
