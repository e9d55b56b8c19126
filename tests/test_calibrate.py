"""Data criteria against brute force in plain torch, on a tiny net with every coupling kind.

The net: a residual pair (conv_a + conv_b, coupled by Add), two convs reading the sum and
concatenated, a depthwise conv over the concat, then GAP → Flatten → Gemm. Brute force puts
one scalar mask per (sample, unit) at every place a unit's channels enter a sink layer, in the
torch module itself, and differentiates the per-sample loss with autograd.
"""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from calibrate.data import open_data
from calibrate.scoring import data_scores
from onnxprune.analysis.flow import param_key
from onnxprune.api import analyze, prune
from onnxprune.config import (
    CalibrationConfig,
    Criterion,
    PruneConfig,
    Target,
    TargetKind,
)
from onnxprune.model.graph import input_specs

N_SAMPLES, BATCH = 12, 4


class Coupled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv_a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv_c = torch.nn.Conv2d(8, 6, 1)
        self.conv_d = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.dw = torch.nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.fc = torch.nn.Linear(10, 5)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5

    def forward(self, x, masks=None):
        """`masks[site]`: a [N, C] factor on the channels entering that sink."""
        def m(site, t):
            if masks is None or site not in masks:
                return t
            return t * masks[site].reshape(t.shape[0], -1, *([1] * (t.ndim - 2)))
        a = F.relu(self.conv_a(x))
        r = F.relu(a + self.conv_b(m("b", a)))
        cat = torch.cat([self.conv_c(m("c", r)), self.conv_d(m("d", r))], 1)
        pooled = F.relu(self.dw(cat)).mean((2, 3))
        return self.fc(m("fc", pooled))


def _onnx(net) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), buf, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def setup():
    net = Coupled().eval()
    model = _onnx(net)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((N_SAMPLES, 3, 8, 8)).astype(np.float32)
    y = gen.integers(0, 5, N_SAMPLES)
    return net, model, analyze(model), x, y


def _units(analysis) -> dict[str, np.ndarray]:
    """Component id of each channel: residual (conv_a out), and the 10 concat channels."""
    ch = analysis.channels
    res = ch.labels[ch.nodes(param_key("conv_a.weight", 0))]
    cat = np.concatenate([ch.labels[ch.nodes(param_key(w, 0))]
                          for w in ("conv_c.weight", "conv_d.weight")])
    return {"res": res, "cat": cat}


def _brute_gradients(net, x, y) -> dict[str, np.ndarray]:
    """g[n, c] per unit family, by autograd of one scalar mask per sample and unit."""
    out = {"res": np.zeros((len(x), 8)), "cat": np.zeros((len(x), 10))}
    for n in range(len(x)):
        res = torch.ones(1, 8, requires_grad=True)
        cat = torch.ones(1, 10, requires_grad=True)
        logits = net(torch.from_numpy(x[n:n + 1]),
                     {"b": res, "c": res, "d": res, "fc": cat})
        loss = F.cross_entropy(logits, torch.tensor([int(y[n])]), reduction="sum")
        g_res, g_cat = torch.autograd.grad(loss, (res, cat))
        out["res"][n], out["cat"][n] = g_res[0].numpy(), g_cat[0].numpy()
    return out


def _scores(analysis, x, y, criterion, no_labels=False, seed=0):
    chunks = [{"x": x[i:i + BATCH]} for i in range(0, len(x), BATCH)]
    if y is not None:
        chunks = [(c, y[i * BATCH:(i + 1) * BATCH]) for i, c in enumerate(chunks)]
    data = open_data(chunks, input_specs(analysis.model), no_labels=no_labels)
    config = CalibrationConfig(batch_size=BATCH, max_batches=None)
    return data_scores(analysis.channels, criterion, data, config, seed)


def test_units_are_the_expected_couplings(setup):
    _, _, analysis, _, _ = setup
    units = _units(analysis)
    assert len(set(units["res"].tolist())) == 8 and len(set(units["cat"].tolist())) == 10
    assert not analysis.channels.blocked[units["res"]].any()


def test_fisher_equals_brute_force(setup):
    net, _, analysis, x, y = setup
    brute = _brute_gradients(net, x, y)
    result = _scores(analysis, x, y, Criterion.FISHER)
    for family, ids in _units(analysis).items():
        expected = (brute[family] ** 2).sum(0)
        np.testing.assert_allclose(result.scores[ids], expected, rtol=2e-4, atol=1e-9)
    assert result.samples == N_SAMPLES and result.batches == N_SAMPLES // BATCH
    assert result.labels == "data labels"


def test_coupled_copies_add_before_squaring(setup):
    """Squaring each site's gradient separately gives another (wrong) number."""
    net, _, analysis, x, y = setup
    per_site = np.zeros(8)
    for site in ("b", "c", "d"):
        for n in range(len(x)):
            s = torch.ones(1, 8, requires_grad=True)
            logits = net(torch.from_numpy(x[n:n + 1]), {site: s})
            loss = F.cross_entropy(logits, torch.tensor([int(y[n])]), reduction="sum")
            per_site += torch.autograd.grad(loss, s)[0][0].numpy() ** 2
    fisher = _scores(analysis, x, y, Criterion.FISHER).scores[_units(analysis)["res"]]
    assert not np.allclose(fisher, per_site, rtol=1e-2)


def test_taylor_equals_brute_force(setup):
    net, _, analysis, x, y = setup
    brute = _brute_gradients(net, x, y)
    result = _scores(analysis, x, y, Criterion.TAYLOR)
    for family, ids in _units(analysis).items():
        g = brute[family].reshape(-1, BATCH, brute[family].shape[1])
        expected = (g.mean(1) ** 2).mean(0)
        np.testing.assert_allclose(result.scores[ids], expected, rtol=2e-4, atol=1e-12)


def test_hrank_equals_numpy_matrix_rank(setup):
    net, _, analysis, x, _ = setup
    with torch.no_grad():
        t = torch.from_numpy(x)
        a = F.relu(net.conv_a(t))
        r = F.relu(a + net.conv_b(a))
        cat = torch.cat([net.conv_c(r), net.conv_d(r)], 1)
        pooled = F.relu(net.dw(cat)).mean((2, 3)).numpy()
    a, r = a.numpy(), r.numpy()
    res = np.array([[np.linalg.matrix_rank(m[n, c]) for c in range(8)]
                    for m in (a, r, r) for n in range(len(x))]).mean(0)
    cat_rank = (np.abs(pooled) > 0).mean(0)
    result = _scores(analysis, x, None, Criterion.HRANK)
    units = _units(analysis)
    np.testing.assert_allclose(result.scores[units["res"]], res)
    np.testing.assert_allclose(result.scores[units["cat"]], cat_rank)


def test_true_fisher_without_labels_is_seeded(setup):
    _, _, analysis, x, y = setup
    first = _scores(analysis, x, y, Criterion.FISHER, no_labels=True, seed=3)
    again = _scores(analysis, x, y, Criterion.FISHER, no_labels=True, seed=3)
    other = _scores(analysis, x, y, Criterion.FISHER, no_labels=True, seed=4)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.array_equal(first.scores, other.scores)
    assert first.labels.startswith("sampled")
    assert (first.scores[_units(analysis)["res"]] > 0).all()


@pytest.mark.parametrize("criterion", [Criterion.FISHER, Criterion.HRANK, Criterion.TAYLOR])
def test_prune_with_data_passes_the_oracle(setup, criterion):
    _, model, _, x, y = setup
    config = PruneConfig(Target(TargetKind.MEM, 0.7), criterion=criterion, round_to=1,
                         calibration=CalibrationConfig(batch_size=BATCH))
    result = prune(model, config, data=[({"x": x}, y)])
    assert result.plan.after.mem <= 0.7 * result.plan.before.mem
    assert result.calibration.criterion is criterion
    assert result.verdict.error <= 1e-4


@pytest.mark.parametrize("criterion", [Criterion.FISHER, Criterion.HRANK, Criterion.TAYLOR])
def test_one_sample_at_a_time_gives_the_batched_scores(setup, monkeypatch, criterion):
    """Models tied to batch 1 are calibrated sample by sample, with the same numbers."""
    import calibrate.scoring

    _, _, analysis, x, y = setup
    batched = _scores(analysis, x, y, criterion)
    monkeypatch.setattr(calibrate.scoring, "make_batch_free", lambda m: (m, "forced"))
    single = _scores(analysis, x, y, criterion)
    assert batched.mode == "batched" and single.mode == "one sample at a time: forced"
    np.testing.assert_allclose(single.scores, batched.scores, rtol=1e-4, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0",
                                  "squeezenet1_0", "convnext_tiny"])
def test_zoo_prunes_with_fisher(name, exporter):
    from onnxprune.models.zoo import Exporter, cached_model, quiet

    with quiet():
        path = cached_model(name, Exporter(exporter), image_size=64)
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    config = PruneConfig(Target(TargetKind.MEM, 0.6), criterion=Criterion.FISHER,
                         calibration=CalibrationConfig(batch_size=2))
    result = prune(str(path), config, data=[{"input": x}])
    assert result.plan.after.mem <= 0.6 * result.plan.before.mem
    assert result.calibration.samples == 4 and result.verdict.error <= 1e-4


def test_the_calibration_subset_is_drawn_by_the_seed(setup):
    """Each seed scores on its own `max_batches` subset; the whole data set ignores the seed."""
    _, _, analysis, x, y = setup
    data = open_data([({"x": x}, y)], input_specs(analysis.model))
    one_batch = CalibrationConfig(batch_size=BATCH, max_batches=1)
    runs = [data_scores(analysis.channels, Criterion.FISHER, data, one_batch, seed).scores
            for seed in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    whole = CalibrationConfig(batch_size=BATCH, max_batches=None)
    np.testing.assert_allclose(
        data_scores(analysis.channels, Criterion.FISHER, data, whole, 0).scores,
        data_scores(analysis.channels, Criterion.FISHER, data, whole, 5).scores, rtol=1e-6)


def test_removed_units_are_masked_while_scoring(setup):
    """Iterative scoring: a removed unit scores 0 and its neighbours see the masked network,
    which is the original with the unit's sink weights zeroed (the oracle's definition)."""
    net, _, analysis, x, y = setup
    units = _units(analysis)
    removed = np.zeros(analysis.channels.n_components, dtype=bool)
    removed[units["cat"][:3]] = True
    data = open_data([({"x": x}, y)], input_specs(analysis.model))
    config = CalibrationConfig(batch_size=BATCH, max_batches=None)
    masked = data_scores(analysis.channels, Criterion.FISHER, data, config, 0, removed).scores
    full = data_scores(analysis.channels, Criterion.FISHER, data, config, 0).scores
    assert (masked[units["cat"][:3]] == 0).all() and (full[units["cat"][:3]] > 0).all()
    zeroed = Coupled().eval()
    zeroed.load_state_dict(net.state_dict())
    with torch.no_grad():
        zeroed.fc.weight[:, :3] = 0
    ref = _scores(analyze(_onnx(zeroed)), x, y, Criterion.FISHER).scores
    rest = units["res"]
    np.testing.assert_allclose(masked[rest], ref[rest], rtol=1e-4)


def test_prune_in_rounds_records_each_round(setup):
    _, model, _, x, y = setup
    config = PruneConfig(Target(TargetKind.MEM, 0.6), criterion=Criterion.FISHER, round_to=1,
                         calibration=CalibrationConfig(batch_size=BATCH, rounds=3))
    result = prune(model, config, data=[({"x": x}, y)])
    assert result.calibration.rounds == 3 and len(result.plan.rounds) == 3
    assert [r["target"] for r in result.plan.rounds] == pytest.approx([13 / 15, 11 / 15, 0.6])
    assert result.plan.after.mem <= 0.6 * result.plan.before.mem
    assert result.verdict.error <= 1e-4


@pytest.mark.parametrize("reconstruct, rounds", [(None, 4), (False, 1)])
def test_default_rounds_are_four_with_the_refit_and_one_without(setup, reconstruct, rounds):
    _, model, _, x, y = setup
    config = PruneConfig(Target(TargetKind.MEM, 0.7), criterion=Criterion.FISHER, round_to=1,
                         calibration=CalibrationConfig(batch_size=BATCH),
                         reconstruct=reconstruct)
    result = prune(model, config, data=[({"x": x}, y)])
    assert result.calibration.rounds == rounds == len(result.plan.rounds)
