"""tools/peer_onnxsim.py: onnxsim's pruning bisected to onnxprune's memory target (skipped
without onnxsim, an optional comparison dependency)."""
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.api import analyze
from onnxprune.model.runtime import session
from tiny import conv, make, node

onnxsim = pytest.importorskip("onnxsim")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("peer_onnxsim", ROOT / "tools" / "peer_onnxsim.py")
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)

FEED = {"input": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def chain_net(shared_bias: bool = False, bn: bool = False) -> onnx.ModelProto:
    """conv 8 -> conv 8 -> conv 4 -> GAP -> Gemm 2; optionally the first two convs read one
    bias initializer (exporters deduplicate equal tensors), or every conv is followed by a
    BatchNormalization (a BN-kept export)."""
    parts = [conv("input", "a", "wa", 3, 8, k=3, bias="b"),
             conv("ar", "c", "wb", 8, 8, k=3, bias="b" if shared_bias else "b2"),
             conv("cr", "d", "wc", 8, 4, k=3, bias="bc")]
    nodes, inits = [], {}
    for (conv_node, shapes), out in zip(parts, "acd"):
        inits.update(shapes)
        nodes.append(conv_node)
        if bn:
            width = shapes[conv_node.input[1]][0]
            stats = [f"{out}_{k}" for k in ("scale", "shift", "mean", "var")]
            inits.update({stats[0]: np.full(width, 0.5, np.float32),
                          stats[1]: np.zeros(width, np.float32),
                          stats[2]: np.zeros(width, np.float32),
                          stats[3]: np.ones(width, np.float32)})
            nodes.append(node("BatchNormalization", [out, *stats], [f"{out}_bn"]))
        nodes.append(node("Relu", [f"{out}_bn" if bn else out], [f"{out}r"]))
    nodes += [node("GlobalAveragePool", ["dr"], ["g"]), node("Flatten", ["g"], ["f"]),
              node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1)]
    inits.update({"wf": (2, 4), "bf": (2,)})
    return make(nodes, {"input": [1, 3, 8, 8]}, ["logits"], inits)


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    images = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.savez(path, input=images, labels=np.zeros(6, np.int64))
    return path


def _saved(tmp_path, model) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    return path


def _mem(model) -> float:
    return analyze(model).costs.costs().mem


def _steps(s: float) -> float:
    return 1.0 - 0.5 * (s >= 0.3) - 0.2 * (s >= 0.6)


def test_bisection_finds_the_smallest_sparsity_that_meets_the_target():
    sparsity, reached = peer.bisect_sparsity(_steps, 0.5)
    assert reached and 0.3 <= sparsity <= 0.3 + peer.SPARSITY_TOLERANCE


def test_bisection_stops_at_the_floor_when_the_target_is_unreachable():
    sparsity, reached = peer.bisect_sparsity(_steps, 0.1)
    assert not reached and 0.6 <= sparsity <= 0.6 + peer.SPARSITY_TOLERANCE
    assert peer.bisect_sparsity(lambda s: 1.0, 0.5) == (0.0, False)


@pytest.mark.parametrize("method", ["l2", "wanda"])
def test_prunes_to_the_memory_target_as_closely_as_one_sparsity_allows(tmp_path, calib,
                                                                       method):
    path = _saved(tmp_path, chain_net())
    out, info = peer.onnxsim_prune(path, 0.8, calib, method, workdir=tmp_path / "out")
    ratio = _mem(str(out)) / _mem(str(path))
    assert info["reached"] and ratio <= 0.8 and ratio == info["ratio"]["mem"]
    probe = peer._probe(peer.Method(method))
    looser = probe(onnx.load(path), info["sparsity"] - 2 * peer.SPARSITY_TOLERANCE)
    assert _mem(looser) / _mem(str(path)) > 0.8
    assert info["calibration_images"] == 6 and peer.ort_failure(onnx.load(out), FEED) is None


def test_bn_kept_model_is_left_unpruned_and_reported_unreachable(tmp_path, calib):
    out, info = peer.onnxsim_prune(_saved(tmp_path, chain_net(bn=True)), 0.9, calib, "l2",
                                   workdir=tmp_path)
    assert not info["reached"] and info["sparsity"] == 0.0 and info["ratio"]["mem"] == 1.0


def test_shared_bias_is_unshared_and_recorded(tmp_path, calib):
    model = chain_net(shared_bias=True)
    assert peer.ort_failure(onnxsim.apply_structured_pruning(model, sparsity=0.5), FEED)
    out, info = peer.onnxsim_prune(_saved(tmp_path, model), 0.8, calib, "l2",
                                   workdir=tmp_path)
    assert info["unshared_initializers"] == ["b"] and info["first_failure"]
    assert info["reached"] and info["ratio"]["mem"] <= 0.8
    assert peer.ort_failure(onnx.load(out), FEED) is None


def test_unshare_gives_every_use_its_own_copy_and_keeps_the_function():
    model = chain_net(shared_bias=True)
    copy = peer.unshare(model, peer.shared_initializers(model))
    assert peer.shared_initializers(model) == ["b"] and peer.shared_initializers(copy) == []
    before, after = (session(m).run(None, FEED)[0] for m in (model, copy))
    np.testing.assert_array_equal(before, after)


def test_ridge_refits_the_gemm_whose_inputs_were_cut(tmp_path, calib):
    path = _saved(tmp_path, chain_net())
    plain = peer.onnxsim_prune(path, 0.8, calib, "l2", workdir=tmp_path)[1]
    out, info = peer.onnxsim_prune(path, 0.8, calib, "l2", ridge=True, workdir=tmp_path)
    assert "wf" in info["ridge_changed"] and "wc" not in info["ridge_changed"]
    assert info["ratio"]["mem"] == plain["ratio"]["mem"]
    assert peer.ort_failure(onnx.load(out), FEED) is None


def test_captured_output_collects_native_and_python_prints_and_warnings():
    sink: list[str] = []
    with peer.captured_output(sink):
        os.write(1, b"from native code\n")
        print("from python")
        warnings.warn("careful", UserWarning, stacklevel=1)
    assert sink == ["from native code", "from python", "warning: UserWarning: careful"]


def test_rows_are_cached_so_a_rerun_resumes(tmp_path):
    calls = []

    def compute(value):
        calls.append(value)
        return {"value": value}

    assert peer._cached(tmp_path / "row.json", compute, 1) == {"value": 1}
    assert peer._cached(tmp_path / "row.json", compute, 2) == {"value": 1}
    assert calls == [1]
