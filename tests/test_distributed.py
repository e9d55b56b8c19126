"""The calibration pass under torchrun: 2 gloo processes on the CPU score like 1 process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tiny import small_resnet

pytest.importorskip("torch")


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("labels", [True, False])
def test_two_processes_give_the_scores_of_one(tmp_path, labels):
    onnx.save(small_resnet(width=8, size=12, batch=1), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    arrays = {"input": rng.standard_normal((40, 3, 12, 12)).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, 10, 40)
    np.savez(tmp_path / "d.npz", **arrays)
    common = ["m.onnx", "--target-mem", "0.7", "--data", "d.npz", "--batch-size", "8",
              "--calib-batches", "0", "--round-to", "1", "--no-reconstruct"]  # all 40 score
    one = _run([sys.executable, "-m", "onnxprune", *common, "-o", "one.onnx",
                "--report", "one.json"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "onnxprune", *common, "-o", "two.onnx",
                "--report", "two.json"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    rec1 = json.loads((tmp_path / "one.json").read_text())
    rec2 = json.loads((tmp_path / "two.json").read_text())
    assert rec2["calibration"]["processes"] == 2 and rec1["calibration"]["processes"] == 1
    assert rec1["calibration"]["samples"] == rec2["calibration"]["samples"] == 40
    for g1, g2 in zip(rec1["groups"], rec2["groups"]):
        np.testing.assert_allclose(g2["unit_scores"], g1["unit_scores"], rtol=1e-5, atol=1e-12)
    assert rec1["slices"] == rec2["slices"]
    assert (tmp_path / "two.onnx").exists()


@pytest.mark.parametrize("schedule", ["oneshot", "gfp"])
def test_fine_tuning_runs_under_torchrun(tmp_path, schedule):
    """2 gloo processes fine-tune with DistributedDataParallel (GFP: all-reduced Fisher
    decides the removals); rank 0 writes one model and a report that counts both ranks. The
    tiny net has huge logits, hence the small --lr."""
    onnx.save(small_resnet(width=8, size=12, batch=1), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((64, 3, 12, 12)).astype(np.float32),
             labels=rng.integers(0, 10, 64))
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2", "-m", "onnxprune", "m.onnx", "--target-mem", "0.7",
                 "--data", "d.npz", "--batch-size", "8", "--round-to", "1",
                 "--finetune-steps", "6", "--schedule", schedule, "--prune-every", "1",
                 "--prune-count", "4", "--holdout", "16", "--lr", "1e-5", "-o", "two.onnx",
                 "--report", "two.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "two.json").read_text())
    tune = record["recovery"]["finetune"]
    assert tune["steps"] > 0 and tune["samples"] == tune["steps"] * 8 * 2
    assert record["ratio"]["mem"] <= 0.7
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.json", "two.onnx"]
    onnx.checker.check_model(str(tmp_path / "two.onnx"), full_check=True)
