"""The public API (`import onnxprune`) and layers kept by request (`--keep`)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune.analysis.flow import tensor_key
from onnxprune.cli.main import main
from tiny import small_resnet


def _named_resnet() -> onnx.ModelProto:
    model = small_resnet(width=16)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}_{node.op_type.lower()}"
    return model


def test_public_names_resolve_and_stay_light():
    for name in op.__all__:
        assert getattr(op, name) is not None, name
    from onnxprune.config import PruneConfig

    assert op.PruneConfig is PruneConfig
    code = ("import sys, onnxprune; from onnxprune import PruneConfig, Target; "
            "assert not {'onnxruntime', 'torch'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        op.no_such_name  # noqa: B018


def test_prune_with_custom_scores_and_save(tmp_path):
    """README's Python section: analyse, score every unit yourself, prune, write."""
    model = small_resnet(width=16)
    analysis = op.analyze(model)
    scores = np.arange(analysis.channels.n_components, dtype=float)  # low ids go first
    config = op.PruneConfig(op.Target(op.TargetKind.MEM, 0.6), round_to=1)
    result = op.prune(model, config, scores=scores)
    assert result.plan.after.mem <= 0.6 * result.plan.before.mem
    assert result.error <= 1e-4 * 10
    op.save(result.model, tmp_path / "out.onnx")
    assert onnx.load(tmp_path / "out.onnx").graph.node


def _kept_width(model: onnx.ModelProto, tensor: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == tensor:
            return vi.type.tensor_type.shape.dim[1].dim_value
    raise KeyError(tensor)


@pytest.mark.parametrize("name, tensor", [("a1", "a1"), ("n2_conv", "a1")])
def test_keep_blocks_the_named_tensor_or_node_outputs(name, tensor):
    model = _named_resnet()
    free = op.analyze(model)
    assert not free.channels.blocked[free.channels.labels[
        free.channels.nodes(tensor_key(tensor))]].any()
    kept = op.analyze(model, keep=[name])
    labels = kept.channels.labels[kept.channels.nodes(tensor_key(tensor))]
    assert kept.channels.blocked[labels].all()
    assert set(np.unique(labels)) == set(kept.kept.tolist())
    assert all(f"kept by request ({name})" in kept.channels.reasons[u] for u in kept.kept)
    result = op.prune(model, op.PruneConfig(op.Target(op.TargetKind.MEM, 0.8), round_to=1,
                                            keep=(name,)))
    assert _kept_width(result.model, tensor) == 16
    assert result.error <= 1e-3


def test_keep_of_a_residual_branch_keeps_the_whole_residual_group():
    model = _named_resnet()
    analysis = op.analyze(model, keep=["a2"])  # the second conv of a block, summed into r0
    r0 = analysis.channels.labels[analysis.channels.nodes(tensor_key("r0"))]
    assert analysis.channels.blocked[r0].all()


def test_keep_of_an_unknown_name_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(op.UserError, match="no tensor or node"):
        op.analyze(_named_resnet(), keep=["nope"])
    onnx.save(_named_resnet(), tmp_path / "m.onnx")
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.7", "--keep", "nope"]) == 2
    assert "no tensor or node" in capsys.readouterr().err
    assert not (tmp_path / "m.pruned.onnx").exists()


def test_cli_keep_shows_in_analyze_and_report(tmp_path, capsys):
    onnx.save(_named_resnet(), tmp_path / "m.onnx")
    assert main(["analyze", str(tmp_path / "m.onnx"), "--keep", "n2_conv"]) == 0
    assert "kept by request (n2_conv)" in capsys.readouterr().out
    report = tmp_path / "r.json"
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.8", "--round-to", "1",
                 "--keep", "n2_conv", "a2", "--report", str(report)]) == 0
    record = json.loads(report.read_text())
    assert record["options"]["keep"] == ["n2_conv", "a2"]
    assert _kept_width(onnx.load(tmp_path / "m.pruned.onnx"), "a1") == 16


def test_prune_reuses_an_analysis(monkeypatch):
    """A sweep or a latency target's re-plans analyse the model once."""
    model = small_resnet(width=16)
    analysis = op.analyze(model)
    calls = []
    real = op.api.analyze
    monkeypatch.setattr(op.api, "analyze", lambda *a, **k: calls.append(1) or real(*a, **k))
    for goal in (0.8, 0.6):
        result = op.prune(analysis, op.PruneConfig(op.Target(op.TargetKind.MEM, goal)))
        assert result.analysis is analysis
        assert result.plan.after.mem <= goal * result.plan.before.mem and result.error <= 1e-3
    assert calls == []
    with pytest.raises(op.UserError, match="same keep"):
        op.prune(analysis, op.PruneConfig(op.Target(op.TargetKind.MEM, 0.8), keep=("a1",)))
