"""calibrate.data: image folders, .npz / .npy, iterables, batching and sharding, bad inputs."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from calibrate.data import (
    Batch,
    ChannelOrder,
    ImageOptions,
    open_data,
    parse_floats,
    parse_hw,
)
from onnxprune.errors import UserError
from onnxprune.model.graph import InputSpec, input_specs

RGB = [InputSpec("x", (1, 3, 4, 4), np.dtype(np.float32))]
GRAY = [InputSpec("x", (1, 1, 4, 4), np.dtype(np.float32))]
NHWC = [InputSpec("x", (1, 4, 4, 3), np.dtype(np.float32))]
TWO = [InputSpec("a", (1, 2), np.dtype(np.float32)),
       InputSpec("b", (1, 3, 2), np.dtype(np.float16))]
RAW = ImageOptions(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _img(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _pattern(h=4, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


def _all(data, **kw):
    return list(data.batches(kw.pop("batch_size", 100), **kw))


def _one(data, **kw):
    (batch,) = _all(data, **kw)
    return batch


def _raises(match, fn, *args, **kw):
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- image folders

def test_unlabeled_folder_png_bmp_jpg_any_case(tmp_path):
    for name in ["b.png", "a.BMP", "c.JPG", "d.jpeg"]:
        _img(tmp_path / name, _pattern())
    (tmp_path / "notes.txt").write_text("not an image")
    _img(tmp_path / ".hidden.png", _pattern())
    data = open_data(tmp_path, RGB)
    assert (data.num_samples, data.has_labels) == (4, False)
    assert "4 images" in data.description and "unlabeled" in data.description
    batch = _one(data)
    assert batch.labels is None
    assert batch.inputs["x"].shape == (4, 3, 4, 4) and batch.inputs["x"].dtype == np.float32


def test_class_subfolders_give_sorted_index_labels(tmp_path):
    _img(tmp_path / "dog" / "1.png", _pattern())
    _img(tmp_path / "cat" / "2.png", _pattern())
    _img(tmp_path / "cat" / "deep" / "3.png", _pattern())
    _img(tmp_path / "emu" / "4.bmp", _pattern())
    (tmp_path / "empty").mkdir()
    data = open_data(str(tmp_path), RGB)
    assert data.has_labels and "3 classes" in data.description
    assert _one(data).labels.tolist() == [0, 0, 1, 2]  # cat/2, cat/deep/3, dog/1, emu/4
    assert _one(data).labels.dtype == np.int64
    unlabeled = open_data(tmp_path, RGB, no_labels=True)
    assert not unlabeled.has_labels and _one(unlabeled).labels is None


def test_images_both_in_root_and_subfolders(tmp_path):
    _img(tmp_path / "root.png", _pattern())
    _img(tmp_path / "cls" / "a.png", _pattern())
    _raises("sub-folders.*--no-labels", open_data, tmp_path, RGB)
    assert open_data(tmp_path, RGB, no_labels=True).num_samples == 2


def test_crop_and_normalise_exact(tmp_path):
    pixels = _pattern(4, 6)
    _img(tmp_path / "a.png", pixels)
    # 4x6 covers 4x4 at scale 1: no resize; center crop keeps columns 1..4
    x = _one(open_data(tmp_path, RGB, RAW)).inputs["x"][0]
    np.testing.assert_allclose(x, pixels[:, 1:5].transpose(2, 0, 1) / 255, atol=1e-6)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x = _one(open_data(tmp_path, RGB, ImageOptions(mean=mean, std=std))).inputs["x"][0]
    expected = (pixels[:, 1:5] / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-5)


def test_default_imagenet_normalisation(tmp_path):
    _img(tmp_path / "a.png", np.full((4, 4, 3), 255))
    x = _one(open_data(tmp_path, RGB)).inputs["x"][0]
    expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-6)


def test_resize_covers_then_center_crops(tmp_path):
    pixels = _pattern(10, 20)
    _img(tmp_path / "a.png", pixels)
    # resize 8: s = max(8/10, 8/20) = 0.8 -> 8x16, then crop 4x4 at top 2, left 6
    x = _one(open_data(tmp_path, RGB, ImageOptions(resize=(8, 8), mean=RAW.mean, std=RAW.std)))
    ref = Image.fromarray(pixels.astype(np.uint8)).resize((16, 8), Image.Resampling.BILINEAR)
    ref = np.asarray(ref.crop((6, 2, 10, 6)), dtype=np.float32) / 255
    np.testing.assert_allclose(x.inputs["x"][0], ref.transpose(2, 0, 1), atol=1e-6)
    # default resize = model size: a half-black, half-white 8x16 image -> 4x8 -> middle 4 columns
    half = np.zeros((8, 16, 3))
    half[:, 8:] = 255
    _img(tmp_path / "half" / "h.png", half)
    x = _one(open_data(tmp_path / "half", GRAY)).inputs["x"][0, 0]
    assert np.all(x[:, :1] < 0.05) and np.all(x[:, 3:] > 0.95)


def test_grayscale_model(tmp_path):
    _img(tmp_path / "a.png", np.full((4, 4, 3), 100))
    x = _one(open_data(tmp_path, GRAY)).inputs["x"]
    assert x.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(x, 100 / 255, atol=1e-6)  # default mean 0, std 1


def test_nhwc_layout(tmp_path):
    _img(tmp_path / "a.png", _pattern(4, 4))
    nchw = _one(open_data(tmp_path, RGB)).inputs["x"]
    nhwc = _one(open_data(tmp_path, NHWC)).inputs["x"]
    assert nhwc.shape == (1, 4, 4, 3)
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_bgr_reverses_channels_and_default_mean(tmp_path):
    _img(tmp_path / "a.png", _pattern(4, 4))
    rgb = _one(open_data(tmp_path, RGB)).inputs["x"]
    bgr = _one(open_data(tmp_path, RGB, ImageOptions(channel_order=ChannelOrder.BGR))).inputs["x"]
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])


def test_float16_model(tmp_path):
    _img(tmp_path / "a.png", _pattern(4, 4))
    spec = [InputSpec("x", (1, 3, 4, 4), np.dtype(np.float16))]
    assert _one(open_data(tmp_path, spec)).inputs["x"].dtype == np.float16


def test_folder_errors(tmp_path):
    _raises("no such file", open_data, tmp_path / "missing", RGB)
    (tmp_path / "empty").mkdir()
    _raises("no images", open_data, tmp_path / "empty", RGB)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    data = open_data(tmp_path / "bad", RGB)  # decoded lazily
    _raises("broken.png: cannot read image", _all, data)
    _img(tmp_path / "ok" / "a.png", _pattern())
    ok = tmp_path / "ok"
    _raises("4 channels", open_data, ok, [InputSpec("x", (1, 4, 8, 8), np.dtype(np.float32))])
    _raises("4-D", open_data, ok, [InputSpec("x", (1, 3, 8), np.dtype(np.float32))])
    _raises("one input", open_data, ok, TWO)
    _raises("float", open_data, ok, [InputSpec("x", (1, 3, 4, 4), np.dtype(np.uint8))])
    _raises("--mean has 2 values.*3 channel", open_data, ok, RGB, ImageOptions(mean=(0.5, 0.5)))
    _raises("--std values must be positive", open_data, ok, RGB, ImageOptions(std=(1, 0, 1)))
    _raises("--resize 2x8 is smaller", open_data, ok, RGB, ImageOptions(resize=(2, 8)))


# ---------------------------------------------------------------- npz / npy

def test_npz_single_input_any_name_with_labels(tmp_path):
    x = np.arange(5 * 3 * 4 * 4, dtype=np.float64).reshape(5, 3, 4, 4)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([4, 3, 2, 1, 0]))
    data = open_data(tmp_path / "d.npz", RGB)
    assert data.has_labels and data.num_samples == 5 and "5 samples" in data.description
    batch = _one(data)
    assert batch.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(batch.inputs["x"], x)
    assert batch.labels.tolist() == [4, 3, 2, 1, 0] and batch.labels.dtype == np.int64
    assert _one(open_data(tmp_path / "d.npz", RGB, no_labels=True)).labels is None
    np.savez(tmp_path / "pos.npz", x)  # stored as arr_0
    assert open_data(tmp_path / "pos.npz", RGB).num_samples == 5


def test_npz_multi_input_by_name(tmp_path):
    a, b = np.ones((3, 2)), np.zeros((3, 3, 2))
    np.savez(tmp_path / "d.npz", b=b, a=a, extra=np.zeros(7))
    batch = _one(open_data(tmp_path / "d.npz", TWO))
    assert batch.inputs["a"].shape == (3, 2) and batch.inputs["b"].dtype == np.float16
    assert batch.labels is None


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "m.npz", a=np.ones((3, 2)), c=np.ones((3, 3, 2)))
    msg = _raises("no array named 'b'", open_data, tmp_path / "m.npz", TWO)
    assert "'a'" in msg and "'c'" in msg
    np.savez(tmp_path / "two.npz", p=np.ones((2, 3, 4, 4)), q=np.ones((2, 3, 4, 4)))
    _raises("no array named 'x'", open_data, tmp_path / "two.npz", RGB)
    np.savez(tmp_path / "s.npz", x=np.ones((2, 3, 5, 4)))
    _raises(r"'x' has shape \(2, 3, 5, 4\), expected \(N, 3, 4, 4\)",
            open_data, tmp_path / "s.npz", RGB)
    np.savez(tmp_path / "nd.npz", x=np.ones((3, 4, 4)))
    _raises(r"shape \(3, 4, 4\)", open_data, tmp_path / "nd.npz", RGB)
    np.savez(tmp_path / "n.npz", a=np.ones((3, 2)), b=np.ones((4, 3, 2)))
    _raises("different sample counts", open_data, tmp_path / "n.npz", TWO)
    np.savez(tmp_path / "l.npz", x=np.ones((2, 3, 4, 4)), labels=np.array([0, 1, 2]))
    _raises("3 labels for 2 samples", open_data, tmp_path / "l.npz", RGB)
    np.savez(tmp_path / "f.npz", x=np.ones((2, 3, 4, 4)), labels=np.array([0.5, 1]))
    _raises("integer", open_data, tmp_path / "f.npz", RGB)
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    _raises("o.npz: not a readable .npz.*allow_pickle", open_data, tmp_path / "o.npz", RGB)
    (tmp_path / "g.npz").write_bytes(b"garbage")
    _raises("g.npz: not a readable .npz", open_data, tmp_path / "g.npz", RGB)
    np.savez(tmp_path / "e.npz", x=np.ones((0, 3, 4, 4)))
    _raises("no samples", open_data, tmp_path / "e.npz", RGB)


def test_npy_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 3, 4, 4))
    np.save(tmp_path / "x.npy", x)
    data = open_data(tmp_path / "x.npy", RGB)
    assert data.num_samples == 7 and not data.has_labels
    assert isinstance(data._source._arrays["x"], np.memmap)
    got = np.concatenate([b.inputs["x"] for b in data.batches(3)])
    np.testing.assert_allclose(got, x.astype(np.float32))


def test_npy_errors(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises("o.npy: holds pickled Python objects", open_data, tmp_path / "o.npy", RGB)
    np.save(tmp_path / "x.npy", np.ones((2, 3, 4, 4)))
    _raises("one input.*use a .npz", open_data, tmp_path / "x.npy", TWO)
    np.save(tmp_path / "w.npy", np.ones((2, 4, 4)))
    _raises(r"'x' has shape \(2, 4, 4\)", open_data, tmp_path / "w.npy", RGB)
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    _raises("non-numeric", open_data, tmp_path / "s.npy", [InputSpec("x", (1,), np.float32)])
    (tmp_path / "d.csv").write_text("1,2")
    _raises("unsupported data file", open_data, tmp_path / "d.csv", RGB)


# ---------------------------------------------------------------- iterables

def test_iterable_of_dicts_pairs_and_samples():
    dicts = [{"a": np.ones((2, 2)), "b": np.ones((2, 3, 2))},
             {"a": np.zeros((1, 2)), "b": np.zeros((1, 3, 2))}]
    data = open_data(iter(dicts), TWO)  # a generator is read once, then re-iterable
    assert data.num_samples == 3 and not data.has_labels
    assert [b.inputs["a"].shape[0] for b in data.batches(2)] == [2, 1]
    assert [b.inputs["a"].shape[0] for b in data.batches(2)] == [2, 1]
    pairs = [(d, np.arange(len(d["a"]))) for d in dicts]
    assert _one(open_data(pairs, TWO)).labels.tolist() == [0, 1, 0]
    assert _one(open_data(pairs, TWO, no_labels=True)).labels is None
    samples = [({"anything": np.full((3, 4, 4), i)}, i) for i in range(3)]  # no batch dim
    batch = _one(open_data(samples, RGB))
    assert batch.inputs["x"].shape == (3, 3, 4, 4) and batch.labels.tolist() == [0, 1, 2]
    assert open_data(np.ones((5, 3, 4, 4)), RGB).num_samples == 5
    assert open_data([Batch({"x": np.ones((2, 3, 4, 4))}, None)], RGB).num_samples == 2


def test_iterable_errors():
    _raises("empty", open_data, [], RGB)
    _raises("item 0: expected a dict", open_data, ["text"], RGB)
    _raises(r"item 0: no array for input\(s\) \['b'\]", open_data, [{"a": np.ones((1, 2))}], TWO)
    _raises("item 1: some items have labels",
            open_data, [(np.ones((1, 3, 4, 4)), 0), np.ones((1, 3, 4, 4))], RGB)
    _raises("item 0: 2 labels for 1 samples", open_data, [(np.ones((1, 3, 4, 4)), [0, 1])], RGB)
    _raises(r"item 0: array 'x' has shape \(1, 3, 4\)", open_data, [np.ones((1, 3, 4))], RGB)


# ---------------------------------------------------------------- batching

def _indexed(n=10):
    return open_data([(np.arange(n, dtype=np.float32)[:, None], np.arange(n))],
                     [InputSpec("v", (1, 1), np.dtype(np.float32))])


def _ids(batches):
    return [b.labels.tolist() for b in batches]


def test_partial_last_batch_and_max_batches():
    data = _indexed(10)
    assert _ids(data.batches(4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _ids(data.batches(4, max_batches=2)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _ids(data.batches(4, max_batches=0)) == []
    for b in data.batches(4):
        np.testing.assert_array_equal(b.inputs["v"][:, 0], b.labels)


def test_shuffle_is_seeded():
    data = _indexed(10)
    a, b = _ids(data.batches(3, shuffle=True, seed=1)), _ids(data.batches(3, shuffle=True, seed=1))
    assert a == b and sorted(i for ids in a for i in ids) == list(range(10))
    assert a != _ids(data.batches(3, shuffle=True, seed=2))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("max_batches", [None, 3])
def test_rank_sharding_unions_to_one_process(world, max_batches):
    data = _indexed(10)
    kw = {"batch_size": 3, "max_batches": max_batches, "shuffle": True, "seed": 7}
    full = _ids(data.batches(**kw))
    shards = [_ids(data.batches(rank=r, world_size=world, **kw)) for r in range(world)]
    assert [shards[i % world][i // world] for i in range(len(full))] == full
    assert sum(map(len, shards)) == len(full) == (max_batches or 4)


def test_batching_errors():
    data = _indexed(4)
    _raises("batch size", data.batches, 0)
    _raises("rank 2 of world size 2", data.batches, 2, rank=2, world_size=2)
    _raises("max batches", data.batches, 2, max_batches=-1)


# ---------------------------------------------------------------- specs and parsing

def _model(*inputs):
    graph = helper.make_graph([], "g", list(inputs), [], [helper.make_tensor("w", TensorProto.FLOAT,
                                                                              [1], [1.0])])
    return helper.make_model(graph)


def test_input_specs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, 8, 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])  # an initializer: skipped
    assert input_specs(_model(x, w)) == [InputSpec("x", (1, 3, 8, 8), np.dtype(np.float16))]
    dyn = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"])
    _raises("'img'.*'h' at axis 2: pass --input-shape", input_specs, _model(dyn))
    assert isinstance(_model(x), onnx.ModelProto)


def test_parse_floats_and_hw():
    assert parse_floats("0.485,0.456, 0.406") == (0.485, 0.456, 0.406)
    assert parse_floats("2", 1) == (2.0,)
    _raises("comma-separated", parse_floats, "0.4;0.5")
    _raises("expected 3 numbers, got 2", parse_floats, "1,2", 3)
    _raises("finite", parse_floats, "nan,1")
    assert parse_hw("256") == (256, 256) and parse_hw("256x224") == (256, 224)
    assert parse_hw("32X16") == (32, 16)
    for bad in ["", "0", "12x", "axb", "1x2x3", "-4"]:
        _raises("256x224", parse_hw, bad)


@pytest.mark.parametrize("hw", [(37, 53), (53, 37), (30, 30)])
def test_matches_torchvision_resize_center_crop(tmp_path, hw):
    T = pytest.importorskip("torchvision.transforms")
    pixels = _pattern(*hw, seed=3)
    path = _img(tmp_path / "a.png", pixels)
    spec = [InputSpec("x", (1, 3, 24, 24), np.dtype(np.float32))]
    x = _one(open_data(tmp_path, spec, ImageOptions(resize=parse_hw("28")))).inputs["x"][0]
    ref = T.Compose([T.Resize(28), T.CenterCrop(24), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    np.testing.assert_allclose(x, ref(Image.open(path)).numpy(), atol=1e-5)
