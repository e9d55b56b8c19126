"""BN re-parametrisation for fine-tuning BN-folded models (calibrate/reparam.py) and the
fine-tuning loop around it (warm-up, clipping, the checkpoint hook): the inserted BatchNorms are
the identity in eval mode, fold back exactly into the written convs, and let a BN-folded CNN
fine-tune at default settings."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from calibrate.data import open_data
from calibrate.distributed import world
from calibrate.executor import OnnxModule
from calibrate.finetune import finetune, lr_factor, warmup_steps
from calibrate.recover import prune_gfp
from calibrate.reparam import SUBMODULE, eligible_convs, insert_bn, slice_targets
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
from onnxprune.model.outputs import output_kinds
from onnxprune.model.runtime import session
from tiny import conv, make, node

N = 192


class Net(torch.nn.Module):
    """Conv-BN-ReLU stem, a residual block, a squeeze-excitation gate (1×1 convs on a 1×1
    map), global pool, linear head. Random BN statistics: folded, the convs' scales differ
    by orders of magnitude, as in trained networks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16),
                                   nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                   nn.BatchNorm2d(16))
        self.squeeze = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                     nn.Sigmoid())
        self.head = nn.Linear(16, 4)
        gen = torch.Generator().manual_seed(1)
        for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_var.copy_(10 ** (4 * torch.rand(16, generator=gen) - 2))
            bn.running_mean.copy_(torch.randn(16, generator=gen))
            bn.weight.data.copy_(0.5 + torch.rand(16, generator=gen))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = x * self.squeeze(x.mean((2, 3), keepdim=True))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def task():
    """(BN-folded ONNX model, inputs, labels)."""
    buf = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), buf, dynamo=False,
                      training=torch.onnx.TrainingMode.EVAL, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0).astype(np.int64) + 2 * (x[:, 1].mean((1, 2)) > 0)
    return model, x, y


def _data(model, x, y=None):
    return open_data({"x": x} if y is None else [({"x": x}, y)], input_specs(model))


def _op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _train_steps(module, x, y, steps=5, lr=0.05):
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    for i in range(steps):
        batch = slice(32 * i, 32 * (i + 1))
        loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x[batch]))[0],
                                                 torch.from_numpy(y[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()


def test_the_export_folds_batchnorm(task):
    ops = set(_op_types(task[0]))
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_bn_insertion_is_the_identity_in_eval_mode(task):
    model, x, y = task
    module = OnnxModule(model)
    with torch.no_grad():
        before = module(torch.from_numpy(x))[0]
    reparam = insert_bn(module, _data(model, x, y), 32, world("cpu"))
    assert len(reparam.convs) == _op_types(model).count("Conv") == 5 and not reparam.skipped
    assert any(k.startswith(f"{SUBMODULE}.") for k in module.state_dict())
    with torch.no_grad():
        after = module(torch.from_numpy(x))[0]
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-5, atol=1e-5)
    norm = reparam.norm(reparam.convs[0])
    assert not module.training and not norm.training
    np.testing.assert_allclose(norm.weight.detach() ** 2, norm.running_var + norm.eps,
                               rtol=1e-5)


def test_folding_after_training_writes_the_trained_function(task):
    """A few train-mode steps move the BNs and convs; the eval-mode student equals the written
    model in onnxruntime, which has the input's op types and initializer shapes."""
    model, x, y = task
    module = OnnxModule(model)
    reparam = insert_bn(module, _data(model, x, y), 32, world("cpu"))
    _train_steps(module, x, y)
    norm = reparam.norm(reparam.convs[0])
    assert int(norm.num_batches_tracked) == 5
    with torch.no_grad():
        want = module(torch.from_numpy(x))[0].numpy()
    reparam.fold()
    assert not hasattr(module, SUBMODULE) and not module.output_transforms
    written = module.write_back(model)
    got = session(written).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert _op_types(written) == _op_types(model)
    assert [tuple(i.dims) for i in written.graph.initializer] == \
        [tuple(i.dims) for i in model.graph.initializer]
    original = session(model).run(None, {"x": x})[0]
    assert np.abs(got - original).max() > 1e-3  # training did change the function


def test_state_dict_covers_the_inserted_bn(task):
    model, x, y = task
    module = OnnxModule(model)
    insert_bn(module, _data(model, x, y), 32, world("cpu"))
    _train_steps(module, x, y, steps=2)
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        want = module(torch.from_numpy(x))[0]
    _train_steps(module, x, y, steps=3)
    module.load_state_dict(saved)
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.from_numpy(x))[0].numpy(), want.numpy())


def test_bns_of_a_slice_restore_the_original_channel_statistics(task):
    """slice_targets: each conv of the one-shot slice gets, through its BN (eval mode), the mean
    and variance its kept channels had in the original model."""
    model, x, y = task
    config = PruneConfig(Target(TargetKind.MEM, 0.6), round_to=1)
    result = prune(model, config)
    original = make_batch_free(result.analysis.model)[0]
    sliced = make_batch_free(result.model)[0]
    data = _data(sliced, x, y)
    targets = slice_targets(OnnxModule(original), result.slices, data, 32, world("cpu"))
    module = OnnxModule(sliced)
    reparam = insert_bn(module, data, 32, world("cpu"), targets=targets)
    assert {c.weight for c in reparam.convs} == set(targets)
    outputs = {}
    for c in reparam.convs:
        norm = module.output_transforms[(c.node, 0)]
        module.output_transforms[(c.node, 0)] = \
            lambda v, norm=norm, name=c.weight: outputs.setdefault(name, norm(v))
    with torch.no_grad():
        module(torch.from_numpy(x))
    narrowed = 0
    for name, (mean, var) in targets.items():
        got = outputs[name].double()
        assert len(mean) == got.shape[1]
        narrowed += len(mean) < next(i.dims[0] for i in original.graph.initializer
                                     if i.name == name)
        np.testing.assert_allclose(got.mean((0, 2, 3)), mean, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got.var((0, 2, 3), unbiased=False), var, rtol=1e-3,
                                   atol=1e-3)
    assert narrowed >= 2


def test_convs_left_without_bn_and_why():
    """Already normalised, no bias, a weight shared by two convs: no BN, with the reason."""
    nodes = [conv("x", "a", "wa", 4, 4, bias="ba")[0],
             node("BatchNormalization", ["a", "g", "b", "m", "v"], ["an"]),
             conv("an", "c", "wc", 4, 4)[0],
             conv("c", "d", "ws", 4, 4, bias="bd")[0],
             conv("d", "e", "ws", 4, 4, bias="be")[0],
             conv("e", "f", "wf", 4, 4, bias="bf")[0]]
    inits = {"wa": (4, 4, 1, 1), "ba": (4,), "wc": (4, 4, 1, 1), "ws": (4, 4, 1, 1),
             "bd": (4,), "be": (4,), "wf": (4, 4, 1, 1), "bf": (4,), "g": np.ones(4, np.float32),
             "b": np.zeros(4, np.float32), "m": np.zeros(4, np.float32),
             "v": np.ones(4, np.float32)}
    module = OnnxModule(make(nodes, {"x": [2, 4, 3, 3]}, ["f"], inits))
    convs, skipped = eligible_convs(module)
    assert [c.weight for c in convs] == ["wf"]
    assert set(skipped) == {"c", "d", "e"}
    assert "no bias" in skipped["c"] and "2 readers" in skipped["d"]


def test_the_learning_rate_warms_up_then_decays():
    steps = 100
    warm = warmup_steps(steps)
    factors = [lr_factor(s, steps, warm) for s in range(steps)]
    assert warm == 5 and factors[0] < 0.2
    assert factors[:warm + 1] == sorted(factors[:warm + 1]) and factors[warm] == 1.0
    assert factors[warm:] == sorted(factors[warm:], reverse=True) and factors[-1] < 1e-3


class Recorder:
    """A checkpoint hook that keeps every judged state and restores the one of `keep`."""

    def __init__(self, every: int, x: np.ndarray, keep: int):
        self.every, self.x, self.keep = every, torch.from_numpy(x[:16]), keep
        self.steps, self.states, self.outputs, self.modes = [], {}, {}, []

    def judge(self, step, module):
        self.steps.append(step)
        self.modes.append((module.training, torch.is_grad_enabled()))
        self.states[step] = {k: v.clone() for k, v in module.state_dict().items()}
        self.outputs[step] = module(self.x)[0].numpy()

    def restore(self, module):
        module.load_state_dict(self.states[self.keep])


def _finetune(model, x, y, steps, checkpoints=None, **config):
    module = OnnxModule(make_batch_free(model)[0])
    cfg = FinetuneConfig(steps=steps, batch_size=32, **config)
    log = finetune(module, None, _data(model, x, y), cfg, output_kinds(model), world("cpu"),
                   steps, checkpoints=checkpoints)
    return module, log


def test_bn_folded_cnn_finetunes_at_default_settings(task):
    model, x, y = task
    module, log = _finetune(model, x, y, steps=60)
    assert log.last_loss < 0.8 * log.first_loss
    written = module.write_back(model)
    assert _op_types(written) == _op_types(model) and not module.training
    before = session(model).run(None, {"x": x})[0]
    after = session(written).run(None, {"x": x})[0]
    assert (after.argmax(1) == y).mean() > (before.argmax(1) == y).mean() + 0.15


def test_checkpoints_judge_the_written_function_and_restore(task):
    """judge() sees the eval-mode student, BNs included, without grad at steps 4, 8, 10 (the
    last); after restore(step 8) the written model is the function judged at step 8."""
    model, x, y = task
    hook = Recorder(every=4, x=x, keep=8)
    module, _ = _finetune(model, x, y, steps=10, checkpoints=hook)
    assert hook.steps == [4, 8, 10]
    assert hook.modes == [(False, False)] * 3
    tracked = [k for k in hook.states[4] if k.endswith("num_batches_tracked")]
    assert len(tracked) == 5  # the BNs are there, and trained on batch statistics every step
    assert all(int(hook.states[s][k]) == s for s in hook.steps for k in tracked)
    assert not np.allclose(hook.outputs[8], hook.outputs[10])
    got = session(module.write_back(model)).run(None, {"x": x[:16]})[0]
    np.testing.assert_allclose(got, hook.outputs[8], rtol=1e-4,
                               atol=1e-4 * np.abs(hook.outputs[8]).max())


def test_a_huge_learning_rate_stays_finite(task):
    """--lr 10: the clipped, BN-normalised steps keep every weight finite (it used to be NaN
    within 3 steps on a BN-folded ResNet-20)."""
    model, x, y = task
    module, log = _finetune(model, x, y, steps=30, lr=10.0)
    assert np.isfinite(log.last_loss)
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    out = session(module.write_back(model)).run(None, {"x": x})[0]
    assert np.isfinite(out).all()


def test_gfp_prunes_a_bn_folded_model_and_the_slice_is_exact(task):
    """GFP trains the full model with its masks and the inserted BNs; the folded weights are
    sliced and pass the oracle (prune_gfp verifies), with the input's op types."""
    model, x, y = task
    analysis = analyze(model)
    config = PruneConfig(Target(TargetKind.MEM, 0.7), Criterion.FISHER, round_to=1,
                         calibration=CalibrationConfig(batch_size=32),
                         finetune=FinetuneConfig(steps=12, batch_size=32,
                                                 schedule=Schedule.GFP, prune_every=2,
                                                 prune_count=4))
    result = prune_gfp(analysis, config, _data(analysis.model, x, y), {})
    assert result.verdict.error < 1e-4 and result.record["units_removed"] > 0
    assert result.plan.after.mem <= 0.7 * result.plan.before.mem
    assert _op_types(result.model) == _op_types(analysis.model)
