"""Image folders for `--data`: decoding, resize / centre-crop / normalise, class sub-folders
as labels (the exact rules are in calibrate/data.py's module docstring).

Reached only through `calibrate.data.open_data` (a lazy import, so Pillow loads only for image
folders); this module imports the shared types from `calibrate.datatypes`, never `data`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from calibrate.datatypes import CalibrationData, ChannelOrder, ImageOptions
from onnxprune.errors import UserError, first_line
from onnxprune.model.graph import InputSpec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _ImagePrep:
    """Everything needed to turn one image file into one sample."""
    name: str
    height: int
    width: int
    gray: bool
    nhwc: bool
    bgr: bool
    resize: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    dtype: np.dtype


class _ImageSource:
    def __init__(self, paths: list[Path], prep: _ImagePrep):
        self._paths = paths
        self._prep = prep

    def load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {self._prep.name: np.stack([_read_image(self._paths[i], self._prep) for i in idx])}


def _image_prep(specs: list[InputSpec], options: ImageOptions) -> _ImagePrep:
    if len(specs) != 1:
        raise UserError(f"an image folder feeds one input, the model has {len(specs)} "
                        f"({', '.join(s.name for s in specs)}); use a .npz")
    spec = specs[0]
    shape = spec.shape
    if len(shape) != 4:
        raise UserError(f"input {spec.name!r} has shape {shape}: images need a 4-D input "
                        f"(N, C, H, W) or (N, H, W, C)")
    nhwc = shape[3] in (1, 3) and shape[1] not in (1, 3)
    c, h, w = (shape[3], shape[1], shape[2]) if nhwc else shape[1:]
    if c not in (1, 3):
        raise UserError(f"input {spec.name!r} has shape {shape}, {c} channels: images give "
                        f"1 (gray) or 3 (color)")
    if not np.issubdtype(spec.dtype, np.floating):
        raise UserError(f"input {spec.name!r} has dtype {spec.dtype}: images feed float "
                        f"inputs; pass a .npy / .npz instead")
    bgr = options.channel_order is ChannelOrder.BGR
    mean = options.mean or ((IMAGENET_MEAN[::-1] if bgr else IMAGENET_MEAN) if c == 3 else (0.0,))
    std = options.std or ((IMAGENET_STD[::-1] if bgr else IMAGENET_STD) if c == 3 else (1.0,))
    for what, values in (("mean", mean), ("std", std)):
        if len(values) != c:
            raise UserError(f"--{what} has {len(values)} values, the model's images have "
                            f"{c} channel(s)")
    if min(std) <= 0:
        raise UserError(f"--std values must be positive, got {std}")
    resize = options.resize or (h, w)
    if resize[0] < h or resize[1] < w:
        raise UserError(f"--resize {resize[0]}x{resize[1]} is smaller than the model's input "
                        f"{h}x{w}")
    return _ImagePrep(spec.name, h, w, c == 1, nhwc, bgr, tuple(resize),
                      np.asarray(mean, np.float32), np.asarray(std, np.float32), spec.dtype)


def _read_image(path: Path, prep: _ImagePrep) -> np.ndarray:
    """Decode, resize to cover `prep.resize`, center-crop, normalise, lay out (module doc)."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if prep.gray else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read image ({first_line(exc)})") from None
    (rh, rw), (w0, h0) = prep.resize, im.size
    if rh / h0 >= rw / w0:  # the height binds (int() truncates as torchvision's Resize)
        nh, nw = rh, max(rw, int(w0 * rh / h0))
    else:
        nh, nw = max(rh, int(h0 * rw / w0)), rw
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = round((nh - prep.height) / 2), round((nw - prep.width) / 2)
    im = im.crop((left, top, left + prep.width, top + prep.height))
    x = np.asarray(im, dtype=np.float32).reshape(prep.height, prep.width, -1) / 255.0
    if prep.bgr:
        x = x[:, :, ::-1]
    x = (x - prep.mean) / prep.std
    return np.ascontiguousarray(x if prep.nhwc else x.transpose(2, 0, 1), dtype=prep.dtype)


def _find_images(root: Path) -> list[Path]:
    """Image files under `root`, sorted, recursively; hidden names skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def open_folder(root: Path, specs: list[InputSpec], options: ImageOptions,
                 no_labels: bool) -> CalibrationData:
    prep = _image_prep(specs, options)
    paths = _find_images(root)
    if not paths:
        raise UserError(f"{root}: no images (.jpg .jpeg .png .bmp) in this folder")
    tops = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None
            for p in paths]
    in_root = tops.count(None)
    labels = None
    if no_labels or in_root == len(paths):
        tail = "labels ignored" if in_root < len(paths) else "unlabeled"
    elif in_root:
        raise UserError(f"{root}: {in_root} images sit in the folder itself and "
                        f"{len(paths) - in_root} in sub-folders: put all in class sub-folders, "
                        f"or ignore labels (--no-labels)")
    else:
        classes = sorted(set(tops))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[t] for t in tops], dtype=np.int64)
        tail = f"{len(classes)} classes"
    desc = f"folder {root}/ ({len(paths)} images, {tail})"
    return CalibrationData(_ImageSource(paths, prep), len(paths), labels, desc)
