"""Calibration / fine-tuning data for an ONNX model: image folders, .npz / .npy files, iterables.

`open_data(source, input_specs(model))` gives a re-iterable `CalibrationData` whose `batches()`
yield `Batch(inputs={name: array}, labels=int64 array or None)` in the model's dtypes.
(`input_specs` is `onnxprune.model.graph`'s; the data types live in `calibrate.datatypes`, the
image reader in `calibrate.images`; this module re-exports the public names of both.)

Sources:

- a folder of images (.jpg .jpeg .png .bmp, any case, searched recursively; names starting with
  "." are skipped). Images all in sub-folders -> labeled: the label is the index of the
  top-level sub-folder in the sorted list of sub-folders holding images (torchvision
  ImageFolder). Images all directly in the folder -> unlabeled. A mix is an error unless
  `no_labels`. Images are decoded lazily, one batch at a time.
- a .npz with one array per model input, named after it (a single-input model may instead use
  any one array not called "labels"), plus an optional int "labels" array, one per sample.
- a .npy with the inputs of a single-input model (memory-mapped, read a batch at a time).
- in Python: an array (single input), a dict name -> array, or an iterable of dicts,
  (dict, labels) pairs or `Batch`es. An array of one sample's shape (the model's shape without the
  batch dim) is one sample. The iterable is read once, into memory.

Arrays need the model's shape except for the batch (first) dim; they are cast to its dtype.

Image preprocessing, for one 4-D float input with 1 (gray, Pillow "L") or 3 (RGB) channels:

1. layout: NHWC when the input shape's last dim is 1 or 3 and dim 1 is not; else NCHW.
2. resize: with `resize` = (h, w) (default: the model's H, W), the image is scaled, keeping its
   aspect ratio, to just cover h x w: if h / height >= w / width the new size is
   (h, max(w, int(width * h / height))), else (max(h, int(height * w / width)), w); Pillow
   bilinear. A square `resize` N thus sets the shorter side to N exactly as torchvision's
   Resize(N). `resize` must be at least the model's H x W.
3. center-crop to the model's H x W: top = round((new height - H) / 2), left likewise.
4. pixels / 255 -> [0, 1]; BGR order reverses the channels; then (x - mean) / std per channel.
   mean / std are listed in the model's channel order, on the [0, 1] scale. Defaults: 3 channels
   -> ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (reversed for BGR);
   1 channel -> mean 0, std 1. (For a 0-255 model use mean 0, std 1/255 = 0.00392156862745098.)
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.datatypes import Batch, CalibrationData, ChannelOrder, ImageOptions
from onnxprune.config import CalibrationConfig
from onnxprune.errors import UserError, first_line
from onnxprune.model.graph import InputSpec, input_specs

# the public names of the data types (calibrate.datatypes) and of the model's inputs
# (onnxprune.model.graph) are re-exported: `from calibrate.data import ...` is the entry point
__all__ = ["LABELS", "Batch", "CalibrationData", "ChannelOrder", "ImageOptions", "InputSpec",
           "calibration_batches", "input_specs", "open_data", "parse_floats", "parse_hw"]

LABELS = "labels"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # what np.load raises


def open_data(source: Any, specs: list[InputSpec], options: ImageOptions | None = None,
              no_labels: bool = False) -> CalibrationData:
    """A folder / .npz / .npy path, an array, a dict or an iterable -> CalibrationData.
    `options` (image folders only): None means `ImageOptions()`, the defaults."""
    if not specs:
        raise UserError("the model has no inputs to feed data to")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        if path.is_dir():
            from calibrate.images import open_folder  # Pillow, only for image folders

            return open_folder(path, specs, options or ImageOptions(), no_labels)
        if path.suffix.lower() == ".npz":
            return _open_npz(path, specs, no_labels)
        if path.suffix.lower() == ".npy":
            return _open_npy(path, specs)
        raise UserError(f"{path}: unsupported data file; expected a folder of images, "
                        f"a .npz or a .npy")
    if isinstance(source, (np.ndarray, Mapping, Batch)):
        source = [source]
    if not isinstance(source, Iterable):
        raise UserError(f"cannot read data from a {type(source).__name__}")
    return _open_iterable(source, specs, no_labels)


def calibration_batches(data: CalibrationData, config: CalibrationConfig, seed: int,
                        rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """The batches a calibration step reads (scoring, the refit, BN statistics): with
    `max_batches`, that many drawn from the whole data set by `seed` (each seed its own
    subset, the same one for every step of a run); without, all of it, in order."""
    subset = config.max_batches is not None
    return data.batches(config.batch_size, config.max_batches, shuffle=subset, seed=seed,
                        rank=rank, world_size=world_size)


def parse_floats(text: str, n: int | None = None) -> tuple[float, ...]:
    """'0.485,0.456,0.406' -> (0.485, 0.456, 0.406); `n` values if given."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{text!r}: expected comma-separated numbers like 0.485,0.456,0.406") \
            from None
    if not all(np.isfinite(values)):
        raise UserError(f"{text!r}: numbers must be finite")
    if n is not None and len(values) != n:
        raise UserError(f"{text!r}: expected {n} numbers, got {len(values)}")
    return values


def parse_hw(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256x224' -> (256, 224) (height x width)."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) <= 0:
        raise UserError(f"{text!r}: expected a size like 256 or 256x224 (height x width)")
    return hw


# ---------------------------------------------------------------- arrays (npz, npy, iterable)

class _ArraySource:
    def __init__(self, arrays: dict[str, np.ndarray], specs: list[InputSpec]):
        self._arrays = arrays
        self._dtypes = {s.name: s.dtype for s in specs}

    def load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(a[idx]).astype(self._dtypes[name], copy=False)
                for name, a in self._arrays.items()}


def _check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], origin: str) -> int:
    """Shapes (batch dim free) and numeric dtypes; returns the common sample count."""
    counts = set()
    for spec in specs:
        a = arrays[spec.name]
        expected = "(N, " + ", ".join(map(str, spec.shape[1:])) + ")"
        if a.ndim != len(spec.shape) or a.shape[1:] != spec.shape[1:]:
            raise UserError(f"{origin}: array {spec.name!r} has shape {tuple(a.shape)}, "
                            f"expected {expected}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise UserError(f"{origin}: array {spec.name!r} has non-numeric dtype {a.dtype}")
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise UserError(f"{origin}: the input arrays have different sample counts {sorted(counts)}")
    return counts.pop()


def _check_labels(labels: Any, n: int, origin: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{origin}: labels must be a 1-D integer array, got shape "
                        f"{labels.shape} dtype {labels.dtype}")
    if len(labels) != n:
        raise UserError(f"{origin}: {len(labels)} labels for {n} samples")
    return labels.astype(np.int64)


def _arrays_data(arrays: dict[str, np.ndarray], labels: Any, specs: list[InputSpec],
                 origin: str, what: str) -> CalibrationData:
    n = _check_arrays(arrays, specs, origin)
    if n == 0:
        raise UserError(f"{origin}: no samples")
    if labels is not None:
        labels = _check_labels(labels, n, origin)
    tail = ", labeled" if labels is not None else ""
    return CalibrationData(_ArraySource(arrays, specs), n, labels, f"{what} ({n} samples{tail})")


def _npz_keys(keys: list[str], specs: list[InputSpec], path: Path) -> dict[str, str]:
    """Model input name -> array name in the file."""
    if all(s.name in keys for s in specs):
        return {s.name: s.name for s in specs}
    data = [k for k in keys if k != LABELS]
    if len(specs) == 1 and len(data) == 1:
        return {specs[0].name: data[0]}
    missing = [s.name for s in specs if s.name not in keys]
    raise UserError(f"{path}: no array named {', '.join(map(repr, missing))} (model inputs); "
                    f"the file has {keys}")


def _open_npz(path: Path, specs: list[InputSpec], no_labels: bool) -> CalibrationData:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            names = _npz_keys(keys, specs, path)
            arrays = {name: z[key] for name, key in names.items()}
            labels = z[LABELS] if LABELS in keys and not no_labels else None
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: not a readable .npz of numeric arrays ({first_line(exc)})") \
            from None
    return _arrays_data(arrays, labels, specs, str(path), path.name)


def _open_npy(path: Path, specs: list[InputSpec]) -> CalibrationData:
    if len(specs) != 1:
        raise UserError(f"{path}: a .npy feeds one input, the model has {len(specs)} "
                        f"({', '.join(s.name for s in specs)}); use a .npz")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "Python objects" in str(exc):
            raise UserError(f"{path}: holds pickled Python objects, not a numeric array "
                            f"(pickle loading is disabled)") from None
        raise UserError(f"{path}: not a readable .npy ({first_line(exc)})") from None
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: not a readable .npy ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path}: is a .npz archive, not a .npy array")
    return _arrays_data({specs[0].name: array}, None, specs, str(path), path.name)


def _open_iterable(source: Iterable, specs: list[InputSpec], no_labels: bool) -> CalibrationData:
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    for i, item in enumerate(source):
        inputs, item_labels = _split_item(item, specs, f"data item {i}")
        n = _check_arrays(inputs, specs, f"data item {i}")
        if item_labels is not None and not no_labels:
            labels.append(_check_labels(np.atleast_1d(item_labels), n, f"data item {i}"))
        for name, a in inputs.items():
            parts[name].append(a)
        if labels and len(labels) != i + 1:
            raise UserError(f"data item {i}: some items have labels and some do not")
    if not parts[specs[0].name]:
        raise UserError("the data iterable is empty")
    arrays = {name: np.concatenate(p) for name, p in parts.items()}
    return _arrays_data(arrays, np.concatenate(labels) if labels else None, specs,
                        "data", "iterable")


def _split_item(item: Any, specs: list[InputSpec], origin: str) -> tuple[dict, Any]:
    """One iterable item -> ({input name: array with a batch dim}, labels or None)."""
    labels = None
    if isinstance(item, Batch):
        item, labels = item.inputs, item.labels
    elif isinstance(item, tuple | list) and len(item) == 2:
        item, labels = item
    if isinstance(item, np.ndarray) and len(specs) == 1:
        item = {specs[0].name: item}
    if not isinstance(item, Mapping):
        raise UserError(f"{origin}: expected a dict of input arrays or a (dict, labels) pair, "
                        f"got {type(item).__name__}")
    if len(specs) == 1 and len(item) == 1:
        item = {specs[0].name: next(iter(item.values()))}
    missing = [s.name for s in specs if s.name not in item]
    if missing:
        raise UserError(f"{origin}: no array for input(s) {missing}; it has {list(item)}")
    inputs = {}
    for s in specs:
        a = np.asarray(item[s.name])
        inputs[s.name] = a[None] if a.shape == s.shape[1:] else a  # one sample
    return inputs, labels
