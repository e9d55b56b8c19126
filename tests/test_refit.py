"""The least-squares refit (calibrate/refit.py, calibrate/lsq.py) and the held-out guard
(calibrate/guard.py): closed-form solutions on tiny graphs, per-group solves, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from calibrate.data import open_data
from calibrate.lsq import LAMBDAS, Normal, choose
from calibrate.refit import refit
from onnxprune.api import analyze
from onnxprune.config import CalibrationConfig
from onnxprune.model.graph import input_specs
from onnxprune.model.runtime import session
from onnxprune.rewrite.surgery import apply_plan
from tests.tiny import Units, conv, make, node, small_resnet

N = 60


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Closed-form ridge with an unpenalised bias column, λ relative to the mean diagonal."""
    x1 = np.concatenate([x, np.ones((len(x), 1))], 1)
    a = x1.T @ x1
    penalty = np.diag([lam * np.mean(np.diag(a)[:-1])] * x.shape[1] + [0.0])
    return np.linalg.solve(a + penalty, x1.T @ y)


def test_choose_matches_the_closed_form_and_beats_the_current_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = x @ rng.standard_normal((5, 3)) + 0.5 + 0.01 * rng.standard_normal((400, 3))
    train, held = Normal(1, 5, 3, True), Normal(1, 5, 3, True)
    train.add(torch.tensor(x[:300])[None], torch.tensor(y[:300])[None])
    held.add(torch.tensor(x[300:])[None], torch.tensor(y[300:])[None])
    fit = choose(train, held, torch.zeros(1, 6, 3, dtype=torch.float64))
    assert fit.lam in LAMBDAS and fit.error_after < 1e-3 < fit.error_before
    np.testing.assert_allclose(fit.theta[0].numpy(), _ridge(x, y, fit.lam), rtol=1e-8)


def test_choose_keeps_weights_that_no_refit_beats():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((200, 4)), rng.standard_normal((5, 2))
    y = np.concatenate([x, np.ones((200, 1))], 1) @ w
    train, held = Normal(1, 4, 2, True), Normal(1, 4, 2, True)
    train.add(torch.tensor(x[:100])[None], torch.tensor(y[:100])[None])
    held.add(torch.tensor(x[100:])[None], torch.tensor(y[100:])[None])
    fit = choose(train, held, torch.tensor(w)[None])  # the current weights are exact
    assert fit.theta is None and fit.error_after == fit.error_before < 1e-20


def _two_convs():
    a, sa = conv("x", "a", "wa", 4, 8, k=3, bias="ba")
    b, sb = conv("r", "y", "wb", 8, 6, k=3, bias="bb")
    return make([a, node("Relu", ["a"], ["r"]), b], {"x": [1, 4, 6, 6]}, ["y"],
                {**sa, **sb})


def _refit_without(model, channels: list[int], seed: int, batches: int | None = 32):
    """Remove `channels` of tensor "a", slice, and refit on N random inputs: (analysis,
    slice, refit model, refit record, inputs)."""
    units, analysis = Units(model), analyze(model)
    removed = np.zeros(units.channels.n_components, bool)
    removed[units.of("a")[channels]] = True
    pruned, slices = apply_plan(analysis.channels, removed)
    x = np.random.default_rng(seed).standard_normal((N, 4, 6, 6)).astype(np.float32)
    data = open_data([{"x": x}], input_specs(analysis.model), None)
    out, record = refit(analysis.model, pruned, slices, data,
                        CalibrationConfig(batch_size=16, max_batches=batches))
    return analysis, pruned, out, record, x


def _refit_two_convs(removed_channels: list[int]):
    analysis, pruned, out, record, x = _refit_without(_two_convs(), removed_channels, seed=2,
                                                      batches=None)
    return analysis.model, pruned, out, record, x


def _patches(r: np.ndarray) -> np.ndarray:
    """[N, C, 6, 6] -> [N·36, C·9], channel-major (3x3, pads 1), rows sample-major."""
    t = torch.nn.functional.unfold(torch.tensor(r, dtype=torch.float64), 3, padding=1)
    return t.permute(0, 2, 1).reshape(-1, r.shape[1] * 9).numpy()


def _inner(model, x):
    """The original's Relu output and the sink's output, in onnxruntime."""
    return _inner_named(model, x, "r"), _inner_named(model, x, "y")


def test_a_sink_conv_is_refit_to_the_closed_form_ridge_solution():
    original, pruned, out, record, x = _refit_two_convs([1, 5])
    (layer,) = record["layers"]
    assert layer["refit"] and layer["held_error_after"] < layer["held_error_before"]
    r, y = _inner(original, x)
    kept = [c for c in range(8) if c not in (1, 5)]
    theta = _ridge(_patches(r[:, kept]), y.transpose(0, 2, 3, 1).reshape(-1, 6), layer["lambda"])
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    np.testing.assert_allclose(inits["wb"].reshape(6, -1), theta[:-1].T, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(inits["bb"], theta[-1], rtol=1e-3, atol=1e-5)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in pruned.graph.node]


def test_a_grouped_conv_after_a_refit_layer_is_refit_per_group():
    """x -> A -> Relu -> B (1x1, the sink) -> Relu -> C (group 2): A loses channels, B is refit
    at level 0, and C, whose input changed, at level 1, each group on its own rows."""
    a, sa = conv("x", "a", "wa", 4, 8, k=3, bias="ba")
    b, sb = conv("r", "b", "wb", 8, 8, bias="bb")
    c, sc = conv("s", "y", "wc", 8, 4, k=3, group=2, bias="bc")
    model = make([a, node("Relu", ["a"], ["r"]), b, node("Relu", ["b"], ["s"]), c],
                 {"x": [1, 4, 6, 6]}, ["y"], {**sa, **sb, **sc})
    analysis, pruned, out, record, x = _refit_without(model, [2, 7], seed=4)
    layers = {la["node"]: la for la in record["layers"]}
    assert [la["sink"] for la in record["layers"]] == [True, False]
    grouped = layers[pruned.graph.node[-1].name]
    assert grouped["groups"] == 2 and grouped["refit"]
    assert record["passes"] == 2
    s_refit = _inner_named(out, x, "s")        # C's input in the refit model
    y = _inner_named(analysis.model, x, "y")   # the original's output of C
    w = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}["wc"]
    for g in range(2):
        target = y[:, 2 * g:2 * g + 2].transpose(0, 2, 3, 1).reshape(-1, 2)
        theta = _ridge(_patches(s_refit[:, 4 * g:4 * g + 4]), target, grouped["lambda"])
        np.testing.assert_allclose(w[2 * g:2 * g + 2].reshape(2, -1), theta[:-1].T,
                                   rtol=1e-3, atol=1e-4)


def _inner_named(model, x, name):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    from onnxprune.model.batch import make_batch_free
    return session(make_batch_free(copy)[0]).run(None, {"x": x})[0].astype(np.float64)


def test_a_conv_without_bias_gets_one_only_when_refit():
    model = _two_convs()
    model.graph.node[2].input.pop()  # the sink conv has no bias
    model.graph.initializer.pop()    # bb
    _, _, out, record, _ = _refit_without(model, [0, 3], seed=3)
    sink = out.graph.node[-1]
    assert record["layers"][0]["refit"] and len(sink.input) == 3
    assert sink.input[2] in {i.name for i in out.graph.initializer}
    onnx.checker.check_model(out, full_check=True)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refit")
    model = small_resnet(width=16, size=16, batch=1)
    onnx.save(model, folder / "m.onnx")
    x = np.random.default_rng(0).standard_normal((96, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "calib.npz", **{model.graph.input[0].name: x})
    return folder


def test_cli_refits_by_default_and_writes_the_better_on_held_out(resnet):
    run = _cli("m.onnx", "--target-mem", "0.5", "--data", "calib.npz", "--holdout", "32",
               "--criterion", "l1", "-o", "p.onnx", "--report", "p.json", cwd=resnet)
    assert run.returncode == 0, run.stderr
    rec = json.loads((resnet / "p.json").read_text())["recovery"]
    assert rec["refit"]["refit_layers"] >= 1 and rec["schedule"] is None
    scores = {k: v["top1_agreement"] for k, v in rec["candidates"].items()}
    assert set(scores) == {"slice", "refit"}
    assert scores[rec["chosen"]] == max(scores.values())
    assert rec["fidelity"] == rec["candidates"][rec["chosen"]]
    assert "refit:" in run.stdout and "held-out score" in run.stdout


def test_cli_no_reconstruct_and_min_agreement(resnet):
    run = _cli("m.onnx", "--target-mem", "0.5", "--data", "calib.npz", "--criterion", "l1",
               "--no-reconstruct", "-o", "n.onnx", "--report", "n.json", cwd=resnet)
    assert run.returncode == 0, run.stderr
    assert json.loads((resnet / "n.json").read_text())["recovery"] is None
    run = _cli("m.onnx", "--target-mem", "0.5", "--data", "calib.npz", "--holdout", "32",
               "--criterion", "l1", "--min-agreement", "1", "-o", "q.onnx", cwd=resnet)
    agreement = json.loads((resnet / "p.json").read_text())["recovery"]["fidelity"]
    if agreement["top1_agreement"] < 1:
        assert run.returncode == 2 and "below --min-agreement" in run.stderr
        assert not (resnet / "q.onnx").exists()
    run = _cli("m.onnx", "--target-mem", "0.5", "--min-agreement", "0.5", "-o", "r.onnx",
               cwd=resnet)
    assert run.returncode == 2 and "--data" in run.stderr


def test_unslice_puts_a_refit_slice_back_in_the_original_graph():
    """Iterative scoring scores the refit slice on the original's channel analysis: the
    original graph holding the refit weights (zeros at removed channels, and the bias a refit
    added, expanded along the outputs its conv lost) computes what the refit slice computes."""
    from onnxprune.rewrite.unslice import unslice

    a, sa = conv("x", "a", "wa", 4, 8, k=3)
    b, sb = conv("ra", "b", "wb", 8, 8, k=3)   # no bias: the refit adds one
    c, sc = conv("rb", "y", "wc", 8, 6, k=3, bias="bc")
    model = make([a, node("Relu", ["a"], ["ra"]), b, node("Relu", ["b"], ["rb"]), c],
                 {"x": [1, 4, 6, 6]}, ["y"], {**sa, **sb, **sc})
    units, analysis = Units(model), analyze(model)
    removed = np.zeros(units.channels.n_components, bool)
    removed[units.of("a")[[0, 5]]] = True
    removed[units.of("b")[[1, 2, 7]]] = True
    pruned, slices = apply_plan(analysis.channels, removed)
    x = np.random.default_rng(4).standard_normal((N, 4, 6, 6)).astype(np.float32)
    data = open_data([{"x": x}], input_specs(analysis.model), None)
    fitted, record = refit(analysis.model, pruned, slices, data,
                           CalibrationConfig(batch_size=16, max_batches=None))
    assert len(fitted.graph.node[2].input) == 3 and record["refit_layers"] >= 2
    back = unslice(analysis.model, fitted, slices)
    onnx.checker.check_model(back, full_check=True)
    feed = {"x": x[:1]}
    want = session(fitted).run(None, feed)[0]
    got = session(back).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    shapes = {i.name: tuple(i.dims) for i in back.graph.initializer}
    assert shapes["wb"] == (8, 8, 3, 3) and shapes[fitted.graph.node[2].input[2]] == (8,)
