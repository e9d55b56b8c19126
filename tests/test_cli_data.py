"""`onnxprune MODEL --data PATH`: the three data forms, the default criterion, bad input."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
from tiny import small_resnet

pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_resnet(width=8, size=16, batch=1), path)
    return path


def _images(folder, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    return folder


def _prune(model, tmp_path, *extra) -> tuple[int, dict]:
    """The CLI on `model`; --no-reconstruct keeps every sample for scoring (the refit would
    hold half of so little data out: tests/test_refit.py covers it)."""
    report = tmp_path / "r.json"
    code = main([str(model), "--target-mem", "0.7", "-o", str(tmp_path / "out.onnx"),
                 "--report", str(report), "--round-to", "1", "--no-reconstruct", *extra])
    return code, (json.loads(report.read_text()) if report.exists() else {})


def test_image_folder_with_classes_scores_fisher_by_default(model, tmp_path, capsys):
    code, record = _prune(model, tmp_path, "--data", str(_images(tmp_path / "imgs")),
                          "--batch-size", "4")
    assert code == 0, capsys.readouterr().err
    assert record["options"]["criterion"] == "fisher"
    cal = record["calibration"]
    assert cal["samples"] == 6 and cal["batches"] == 2 and cal["labels"] == "data labels"
    assert "2 classes" in cal["data"] or "6 images" in cal["data"]
    assert all("unit_scores" in g for g in record["groups"])
    assert "fisher: 6 samples" in capsys.readouterr().out


@pytest.mark.parametrize("criterion", ["hrank", "taylor", "fisher"])
def test_npz_without_labels(model, tmp_path, criterion):
    x = np.random.default_rng(1).standard_normal((10, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", anything=x)
    code, record = _prune(model, tmp_path, "--data", str(tmp_path / "d.npz"),
                          "--criterion", criterion)
    assert code == 0
    assert record["calibration"]["criterion"] == criterion and record["ratio"]["mem"] <= 0.7


def test_npy_and_no_labels_flag(model, tmp_path):
    np.save(tmp_path / "d.npy", np.ones((5, 3, 16, 16), np.float32))
    code, record = _prune(model, tmp_path, "--data", str(tmp_path / "d.npy"), "--no-labels")
    assert code == 0 and record["calibration"]["labels"].startswith("sampled")


@pytest.mark.parametrize("extra, message", [
    (["--criterion", "fisher"], "needs calibration data"),
    (["--data", "missing.npz"], "no such file"),
    (["--data", "{imgs}", "--batch-size", "0"], "--batch-size"),
    (["--data", "{imgs}", "--mean", "a,b"], "mean"),
    (["--data", "{imgs}", "--resize", "x"], "resize"),
])
def test_bad_data_options_are_one_line(model, tmp_path, capsys, extra, message):
    imgs = str(_images(tmp_path / "imgs"))
    code, _ = _prune(model, tmp_path, *[e.format(imgs=imgs) for e in extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()
