"""Fashion-MNIST data, the two trained models' definitions, deterministic training, export with
BatchNormalization kept, and ONNX evaluation. Skipped without the dataset
(apt-get install dataset-fashion-mnist); the full training runs under `-m slow`."""
import collections
import gzip

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

import torch

from onnxprune.errors import UserError
from onnxprune.models import fashion, fashion_data
from onnxprune.models.zoo import Exporter, randomize_norm_layers

needs_data = pytest.mark.skipif(not fashion_data.available(),
                                reason="Fashion-MNIST not installed (dataset-fashion-mnist)")


@needs_data
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_idx_parsing(split, n):
    images, labels = fashion_data.load_fashion(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert (np.bincount(labels) == n // 10).all()  # Fashion-MNIST is balanced
    assert images.max() == 255 and images.min() == 0


def test_read_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # says 5 items, holds 3
    with pytest.raises(UserError, match="truncated"):
        fashion_data.read_idx(path)


def test_missing_dataset_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_data.load_fashion("test")
    with pytest.raises(ValueError):
        fashion_data.load_fashion("valid")


@needs_data
def test_to_input_statistics():
    images, _ = fashion_data.load_fashion("train")
    x = fashion_data.to_input(images)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    assert np.isclose(x.min(), -fashion_data.MEAN / fashion_data.STD)


@needs_data
def test_write_npz(tmp_path):
    path = fashion_data.write_npz(tmp_path / "calib.npz", "test", 100, seed=3)
    assert path == tmp_path / "calib.npz"
    with np.load(path) as data:
        assert sorted(data.files) == ["input", "labels"]
        x, y = data["input"], data["labels"]
    assert x.shape == (100, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (100,) and y.dtype == np.int64
    images, labels = fashion_data.load_fashion("test")
    index = np.sort(np.random.default_rng(3).choice(10000, 100, replace=False))
    np.testing.assert_array_equal(y, labels[index])
    np.testing.assert_array_equal(x, fashion_data.to_input(images[index]))


@pytest.mark.parametrize("name", fashion.MODELS)
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = fashion.build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == {"resnet20": 21, "resnet56": 57, "mobilenetv2_small": 28, "vit_p4": 0}[name]


def test_resnet20_structure():
    model = fashion.build_model("resnet20")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # + fc = 20 weight layers
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]  # option B
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


def test_augment_is_a_padded_crop_or_its_mirror():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 28, 28), generator=gen, dtype=torch.uint8)
    padded = torch.nn.functional.pad(images, (fashion.PAD,) * 4)
    crops = fashion._augment(padded, gen)
    assert crops.shape == images.shape
    for crop, pad in zip(crops, padded):
        windows = [pad[y:y + 28, x:x + 28] for y in range(5) for x in range(5)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)


@needs_data
@pytest.mark.parametrize("name", fashion.MODELS)
def test_training_step_is_deterministic(name):
    runs = [fashion.train(name, epochs=1, seed=0, max_steps=1, evaluate=False)
            for _ in range(2)]
    a, b = (r.model.state_dict() for r in runs)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    initial = fashion.build_model(name).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a if k.endswith("weight"))
    other = fashion.train(name, epochs=1, seed=1, max_steps=1, evaluate=False).model.state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a)


def _random_model(name):
    torch.manual_seed(0)
    model = fashion.build_model(name)
    randomize_norm_layers(model, torch.Generator().manual_seed(1))  # non-trivial BN
    return model.eval()


CNNS = [m for m in fashion.MODELS if not m.startswith("vit")]


def _assert_matches_torch(model, path) -> None:
    """onnxruntime on the exported file gives torch's logits on one seeded image, within the
    oracle's tolerance (ResNet-56's 27 blocks with random BN grow the logits large)."""
    import onnxruntime as ort

    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1, np.abs(expected).max()), rtol=0)


@pytest.mark.parametrize("exporter", list(Exporter))
@pytest.mark.parametrize("name", CNNS)
def test_export_keeps_batchnorm_and_matches_torch(name, exporter, tmp_path):

    model = _random_model(name)
    path = fashion.export_onnx(model, tmp_path / "m.onnx", exporter)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert ops["BatchNormalization"] == n_bn and ops["Conv"] == n_bn
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1  # inference form
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("training_mode", 0) == 0
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 28, 28]
    _assert_matches_torch(model, path)


@pytest.mark.parametrize("exporter", list(Exporter))
def test_vit_exports_its_attention_and_matches_torch(exporter, tmp_path):
    """The ViT's attention is spelled out (MatMul, Softmax), so onnxprune reads its heads."""

    torch.manual_seed(0)
    model = fashion.build_model("vit_p4").eval()
    path = fashion.export_onnx(model, tmp_path / "v.onnx", exporter)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["Softmax"] == 4 and ops["MatMul"] >= 4 * 4
    _assert_matches_torch(model, path)


@needs_data
def test_evaluate_onnx_batched_equals_per_sample(tmp_path, monkeypatch):
    """Both exporters' graphs evaluate batched (the dynamo Reshape [1, 64] is made
    batch-free); forcing one sample at a time gives the same accuracy."""
    import onnxprune.model.batch

    model = _random_model("resnet20")
    path = fashion.export_onnx(model, tmp_path / "m.onnx")
    dynamo = fashion.export_onnx(model, tmp_path / "d.onnx", Exporter.DYNAMO)
    batched = fashion.evaluate_onnx(path, n=64, batch_size=16)
    assert onnxprune.model.batch.make_batch_free(onnx.load(dynamo))[1] is None
    assert fashion.evaluate_onnx(dynamo, n=64) == batched
    monkeypatch.setattr(onnxprune.model.batch, "make_batch_free", lambda m: (m, "forced"))
    assert fashion.evaluate_onnx(path, n=64) == batched


@needs_data
def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path))
    assert fashion.default_cache_dir() == tmp_path / "fashion"
    calls = []

    def fake_train(name, epochs, seed, threads=None, log=None, max_steps=None):
        calls.append((name, epochs, seed) + ((max_steps,) if max_steps else ()))
        return fashion.TrainResult(_random_model(name), 0.5, [1.0], [2.0])

    monkeypatch.setattr(fashion, "train", fake_train)
    path = fashion.cached_fashion_model("resnet20", epochs=2, seed=1)
    again = fashion.cached_fashion_model("resnet20", epochs=2, seed=1, exporter="dynamo")
    assert calls == [("resnet20", 2, 1)]  # trained once, exported twice
    assert path.parent == tmp_path / "fashion" and path.name.startswith("resnet20-e2-s1-w")
    assert path.name.endswith("-torchscript.onnx") and again.name.endswith("-dynamo.onnx")
    assert path.with_name(path.name.replace("-torchscript.onnx", ".pt")).exists()
    assert fashion.training_record("resnet20", 2, 1)["test_top1"] == 0.5
    quick = fashion.cached_fashion_model("resnet20", epochs=2, seed=1, max_steps=40)
    assert calls[-1] == ("resnet20", 2, 1, 40) and "-e2-m40-s1-" in quick.name  # cached apart
    model = fashion.load_torch_model("resnet20", epochs=2, seed=1)
    reference = _random_model("resnet20")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert not [p for p in (tmp_path / "fashion").iterdir() if p.suffix == ".tmp"]


@needs_data
def test_cli_npz(tmp_path, capsys):
    out = tmp_path / "calib.npz"
    assert fashion.main(["npz", str(out), "--split", "test", "--n", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with np.load(out) as data:
        assert data["input"].shape == (10, 1, 28, 28)


@needs_data
@pytest.mark.slow
def test_trained_resnet20_accuracy():
    path = fashion.cached_fashion_model("resnet20")
    assert fashion.evaluate_onnx(path) >= 0.88
