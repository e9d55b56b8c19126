"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, read with numpy only.

The four IDX gzip files live in /usr/share/datasets/fashion-mnist (override with
``FASHION_MNIST_DIR``); nothing is downloaded. Preprocessing, used for training, for the ONNX
models' input and for the calibration files (``--data calib.npz``):

    x = (pixel / 255 - MEAN) / STD,  MEAN = 0.2860, STD = 0.3530

(MEAN and STD are the per-pixel mean and standard deviation of the 60k training images.)
"""
from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from onnxprune.errors import UserError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
MEAN = 0.2860
STD = 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def dataset_dir() -> pathlib.Path:
    """``$FASHION_MNIST_DIR``, else /usr/share/datasets/fashion-mnist (not checked)."""
    return pathlib.Path(os.environ.get("FASHION_MNIST_DIR") or DEFAULT_DIR)


def available() -> bool:
    """True when all four IDX files are present."""
    directory = dataset_dir()
    return all((directory / f"{stem}-{kind}-idx{dim}-ubyte.gz").is_file()
               for stem in _FILES.values() for kind, dim in (("images", 3), ("labels", 1)))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (gzip or plain): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape, dtype=np.int64))
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise UserError(f"{path}: truncated IDX file (shape {shape})")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape).astype(
        dtype.newbyteorder("="))


def load_fashion(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of split "train" (60k) or "test" (10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    directory = dataset_dir()
    if not directory.is_dir():
        raise UserError(f"Fashion-MNIST not found at {directory}: "
                        "apt-get install dataset-fashion-mnist")
    stem = _FILES[split]
    paths = [directory / f"{stem}-images-idx3-ubyte.gz", directory / f"{stem}-labels-idx1-ubyte.gz"]
    for path in paths:
        if not path.is_file():
            raise UserError(f"Fashion-MNIST file missing: {path}: "
                            "apt-get install dataset-fashion-mnist")
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UserError(f"{directory}: images {images.shape} and labels {labels.shape} disagree")
    return images, labels


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], (images / 255 - MEAN) / STD."""
    x = np.asarray(images, dtype=np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(MEAN)) / np.float32(STD)


def write_npz(path: str | os.PathLike[str], split: str = "test", n: int | None = 1000,
              seed: int = 0) -> pathlib.Path:
    """Write ``input`` (float32 [n, 1, 28, 28], preprocessed) and ``labels`` (int64 [n]) of `n`
    images drawn without replacement (seeded) from `split`; n=None or n >= N takes them all, in
    order. This is the ``--data calib.npz`` file of ``onnxprune``."""
    images, labels = load_fashion(split)
    if n is not None and n < len(labels):
        if n <= 0:
            raise ValueError(f"n must be positive, not {n}")
        index = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
        images, labels = images[index], labels[index]
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
        np.savez(f, input=to_input(images), labels=labels)
    return path
