"""Recovery: fine-tuning lowers the loss, distillation runs without labels, GFP removes units in
Fisher order and stops at the target, and the written model is a valid, consistent ONNX."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from calibrate.data import open_data
from calibrate.distributed import world
from calibrate.executor import OnnxModule
from calibrate.gfp import GfpSchedule
from onnxprune.api import analyze, prune
from onnxprune.config import (
    CalibrationConfig,
    Criterion,
    FinetuneConfig,
    PruneConfig,
    Schedule,
    Target,
    TargetKind,
)
from onnxprune.model.batch import make_batch_free
from onnxprune.model.graph import input_specs
from onnxprune.model.runtime import session

N = 256


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def task():
    buf = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), buf, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"],
                      output_names=["y"])
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0).astype(np.int64) + 2 * (x[:, 1].mean((1, 2)) > 0)
    return model, x, y


def _config(schedule=Schedule.ONESHOT, steps=60, criterion=Criterion.FISHER, no_labels=False):
    return PruneConfig(Target(TargetKind.MEM, 0.6), criterion=criterion, round_to=1,
                       calibration=CalibrationConfig(batch_size=32, no_labels=no_labels),
                       finetune=FinetuneConfig(steps=steps, batch_size=32, lr=0.05,
                                               schedule=schedule, prune_every=3), holdout=64)


def test_model_keeps_batchnorm(task):
    assert "BatchNormalization" in {n.op_type for n in task[0].graph.node}


@pytest.mark.parametrize("schedule", [Schedule.ONESHOT, Schedule.GFP])
def test_finetuning_lowers_the_loss_and_writes_a_valid_model(task, schedule):
    model, x, y = task
    result = prune(model, _config(schedule), data=[({"x": x}, y)])
    log = result.recovery.finetune
    assert log.last_loss < log.first_loss
    onnx.checker.check_model(result.model, full_check=True)
    free, why = make_batch_free(result.model)
    assert why is None
    out = session(free).run(None, {"x": x[:8]})[0]
    assert out.shape == (8, 4) and np.isfinite(out).all()
    fid = result.recovery.fidelity
    assert fid["samples"] == 64 and "accuracy_pruned" in fid and 0 <= fid["top1_agreement"] <= 1
    assert result.plan.after.mem <= 0.6 * result.plan.before.mem
    if schedule is Schedule.GFP:  # pruning gets at most half the budget, fine-tuning the rest
        assert result.recovery.gfp["steps"] <= 30 and log.steps >= 30


@pytest.mark.parametrize("schedule, phases", [
    (Schedule.ONESHOT, ["analyze", "calibrate", "plan", "surgery", "verify"]),
    (Schedule.GFP, ["analyze", "gfp"])])
def test_prune_analyses_once_and_recalibrates_bn_before_tuning(task, monkeypatch, schedule,
                                                                phases):
    """api.prune is the one orchestrator: one analysis whatever the schedule; BN statistics
    are re-estimated on the training share, then the slice is fine-tuned."""
    from dataclasses import replace

    from onnxprune import api

    calls = []
    real = api.analyze
    monkeypatch.setattr(api, "analyze", lambda *a, **k: calls.append(a) or real(*a, **k))
    model, x, y = task
    config = _config(schedule, steps=4)
    config = replace(config, calibration=replace(config.calibration, recalibrate_bn=True))
    result = prune(model, config, data=[({"x": x}, y)])
    assert len(calls) == 1
    recovery = ["refit", "judge", "finetune"] if schedule is Schedule.ONESHOT else \
        ["judge", "finetune"]  # one-shot refits the slice before fine-tuning; GFP does not
    assert list(result.timings) == [*phases, "recalibrate_bn", *recovery]
    assert result.bn_samples == N - 64 and result.recovery.fidelity["samples"] == 64
    assert result.plan.after.mem <= 0.6 * result.plan.before.mem


def test_distillation_without_labels(task):
    model, x, y = task
    result = prune(model, _config(no_labels=True), data=[({"x": x}, y)])
    assert "accuracy_pruned" not in result.recovery.fidelity
    assert result.recovery.finetune.last_loss < result.recovery.finetune.first_loss


def test_written_weights_are_the_module_weights(task):
    """Write-back then reload gives the module's own outputs (eval mode)."""
    model, x, _ = task
    model = analyze(model).model
    free = make_batch_free(model)[0]
    module = OnnxModule(free)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.1)
    written = module.write_back(model)
    want = module(torch.from_numpy(x[:1]))[0].detach().numpy()
    got = session(written).run(None, {"x": x[:1]})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gfp_removes_the_lowest_normalised_fisher_first_and_stops_at_target(task):
    model, x, y = task
    analysis = analyze(model)
    config = _config(Schedule.GFP)
    w = world("cpu")
    module = OnnxModule(make_batch_free(analysis.model)[0])
    schedule = GfpSchedule(analysis, config, module, w)
    state = schedule.state
    fisher = np.linspace(1.0, 2.0, len(state.units))[::-1].copy()
    order = []
    while not schedule.reached():
        state.fisher[:] = fisher
        pool = state.candidates()
        expected = pool[np.argmin(fisher[pool] / state.norm[pool])]
        state.remove_lowest(1, None)
        order.append(int(expected))
        assert not state.alive[expected]
    kept = analysis.costs.costs(state.removal.kept)
    assert kept.mem <= 0.6 * analysis.costs.costs().mem
    assert len(order) == int((~state.alive).sum())


def test_gfp_finish_ranks_by_the_fisher_of_the_whole_phase(task):
    """When the pruning half of the budget runs out, after_step has just reset the per-removal
    sums: finish() must rank by the whole phase's Fisher, not by those zeros (which removed the
    first open group whatever its importance)."""
    model, _, _ = task
    analysis = analyze(model)
    config = _config(Schedule.GFP)
    module = OnnxModule(make_batch_free(analysis.model)[0])
    schedule = GfpSchedule(analysis, config, module, world("cpu"))
    state = schedule.state
    state.total[:] = np.linspace(1.0, 2.0, len(state.units))[::-1]  # the last units: least
    state.fisher[:] = 0                                               # just reset
    schedule.masks.attach_masks(module, 1, torch.ones(len(state.units)))
    pool = state.candidates()
    first = pool[np.argmin(state.total[pool] / state.norm[pool])]
    assert schedule.finish() > 0 and schedule.reached()
    assert not state.alive[first]
    gone = np.flatnonzero(~state.alive)
    assert state.total[gone].mean() < state.total[state.alive].mean()


def test_gfp_removes_round_to_chunks_and_keeps_one(task):
    """--round-to 4 on the 16-channel residual group: each removal takes the 4 alive units with
    the lowest F / ΔM together; the group keeps 4 channels at least (3 removals, then none)."""
    model, _, _ = task
    analysis = analyze(model)
    config = PruneConfig(Target(TargetKind.MEM, 0.1), round_to=4,
                         finetune=FinetuneConfig(steps=10, schedule=Schedule.GFP))
    module = OnnxModule(make_batch_free(analysis.model)[0])
    state = GfpSchedule(analysis, config, module, world("cpu")).state
    rng = np.random.default_rng(0)
    for _ in range(3):
        state.fisher[:] = rng.random(len(state.units))
        pool = state.candidates()
        lowest = pool[np.argsort(state.fisher[pool] / state.norm[pool])[:4]]
        assert state.remove_lowest(1, None) == 4
        assert not state.alive[lowest].any()
        assert (~state.alive).sum() % 4 == 0
    assert state.remove_lowest(1, None) == 0 and state.alive.sum() == 4


def test_gfp_prune_count_stops_at_the_target(task):
    """A removal of many chunks at once stops as soon as the target is met (no overshoot)."""
    model, _, _ = task
    analysis = analyze(model)
    module = OnnxModule(make_batch_free(analysis.model)[0])

    def state():
        st = GfpSchedule(analysis, _config(Schedule.GFP), module, world("cpu")).state
        st.fisher[:] = np.linspace(1.0, 2.0, len(st.units))
        return st

    at_once = state()
    n = at_once.remove_lowest(1000, None)
    assert at_once.reached() and n > 1
    one_by_one = state()
    for _ in range(n - 1):
        one_by_one.remove_lowest(1, None)
    assert not one_by_one.reached()
    assert one_by_one.remove_lowest(1, None) == 1
    np.testing.assert_array_equal(one_by_one.alive, at_once.alive)


def test_gfp_needs_fisher(task):
    model, x, y = task
    from onnxprune.errors import UserError

    with pytest.raises(UserError, match="gfp"):
        prune(model, _config(Schedule.GFP, criterion=Criterion.L1), data=[({"x": x}, y)])


def test_data_split_is_disjoint(task):
    model, x, y = task
    data = open_data([({"x": x}, y)], input_specs(analyze(model).model))
    train, held = data.split(64, seed=0)
    seen = [b.inputs["x"] for b in train.batches(50)] + [b.inputs["x"] for b in held.batches(50)]
    rows = np.concatenate(seen).reshape(N, -1)
    assert train.num_samples + held.num_samples == N
    assert len(np.unique(rows, axis=0)) == N


def test_bn_recalibration_gives_population_statistics(task):
    """The first BN's new running mean / variance are those of its input over the data."""
    from onnx import numpy_helper

    from calibrate.bn import recalibrate_bn

    model, x, _ = task
    normalised = analyze(model).model
    data = open_data([{"x": x}], input_specs(normalised))
    tuned, seen = recalibrate_bn(normalised, data, CalibrationConfig(batch_size=50))
    assert seen == N
    bn = next(n for n in tuned.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in tuned.graph.node if n.output[0] == bn.input[0])
    inits = {i.name: numpy_helper.to_array(i) for i in tuned.graph.initializer}
    w, b = torch.from_numpy(inits[conv.input[1]]), torch.from_numpy(inits[conv.input[2]])
    y = torch.nn.functional.conv2d(torch.from_numpy(x), w, b, padding=1).double()
    np.testing.assert_allclose(inits[bn.input[3]], y.mean((0, 2, 3)).numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(inits[bn.input[4]], y.var((0, 2, 3), unbiased=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(tuned, full_check=True)


def test_recalibrate_bn_from_the_cli(task, tmp_path, capsys):
    from onnxprune.cli.main import main

    model, x, y = task
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.6", "--data",
                 str(tmp_path / "d.npz"), "--recalibrate-bn", "-o", str(tmp_path / "o.onnx"),
                 "--round-to", "1", "--no-reconstruct"]) == 0
    assert f"re-estimated on {N} samples" in capsys.readouterr().out
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.6", "--data",  # with the refit:
                 str(tmp_path / "d.npz"), "--recalibrate-bn", "-o", str(tmp_path / "r.onnx"),
                 "--round-to", "1"]) == 0  # the held-out half judges it
    assert f"re-estimated on {N - N // 2} samples" in capsys.readouterr().out
    assert main([str(tmp_path / "m.onnx"), "--target-mem", "0.6", "--recalibrate-bn"]) == 2


@pytest.mark.parametrize("harm", ["noise", "diverge"])
def test_a_fine_tuning_made_to_hurt_leaves_the_slice_written(task, monkeypatch, harm):
    """Fine-tuning that wrecks the weights (noise on every parameter) or diverges: the slice,
    better on the held-out samples, is what comes back, and the report says why."""
    from dataclasses import replace

    from calibrate import recover
    from calibrate.finetune import Diverged
    from calibrate.guard import score

    def hurt(student, *args, checkpoints=None, **kwargs):
        if harm == "diverge":
            raise Diverged("fine-tuning diverged: the loss is nan at step 3 (lr 0.05)")
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
        checkpoints.judge(1, student)
        return recover.FinetuneLog(1, 32, 1.0, 9.0, 0.1)

    monkeypatch.setattr(recover, "finetune", hurt)
    model, x, y = task
    config = replace(_config(steps=12), reconstruct=False)
    rec = prune(model, config, data=[({"x": x}, y)]).recovery
    assert rec.chosen == "slice" and rec.fidelity == rec.candidates["slice"]
    if harm == "diverge":
        assert "fine-tuned" not in rec.candidates and rec.diverged
        assert rec.warnings[0].endswith("the slice was written")
    else:
        assert score(rec.candidates["fine-tuned"]) < score(rec.candidates["slice"])
