"""The types calibration data is made of: `CalibrationData`, `Batch`, `ImageOptions`.

They live apart from the readers so that imports point one way: `calibrate.data` (the entry
point: arrays, .npz / .npy, iterables) and `calibrate.images` (image folders, Pillow) both import
this module, and only `data` imports `images` (lazily, so Pillow loads only for a folder).
`calibrate.data` re-exports every name here; the preprocessing rules are in its docstring.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from onnxprune.errors import UserError


class ChannelOrder(enum.Enum):
    RGB = "rgb"
    BGR = "bgr"


@dataclass(frozen=True)
class ImageOptions:
    """How images become tensors (see calibrate.data's module docstring for the exact rule)."""
    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: ChannelOrder = ChannelOrder.RGB


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None


class Source(Protocol):
    """Where samples come from: the inputs of the samples at indices `idx`, batch first."""
    def load(self, idx: np.ndarray) -> dict[str, np.ndarray]: ...


class CalibrationData:
    """Samples of a source, re-iterable in batches; the order is fixed by `seed`."""

    def __init__(self, source: Source, num_samples: int, labels: np.ndarray | None,
                 description: str, indices: np.ndarray | None = None):
        self._source = source
        self._labels = labels
        self._indices = np.arange(num_samples) if indices is None else indices
        self.num_samples = len(self._indices)
        self.has_labels = labels is not None
        self.description = description

    def split(self, holdout: int, seed: int = 0) -> tuple[CalibrationData, CalibrationData]:
        """(the rest, `holdout` samples drawn with `seed`): disjoint views of the same source,
        so that fine-tuning never sees the samples its fidelity is measured on."""
        holdout = min(max(holdout, 0), self.num_samples)
        order = np.random.default_rng(seed).permutation(self.num_samples)
        held, rest = np.sort(order[:holdout]), np.sort(order[holdout:])
        def view(idx, what):
            return CalibrationData(self._source, self.num_samples, self._labels,
                                   f"{self.description}, {what}", self._indices[idx])
        return view(rest, f"{len(rest)} for training"), view(held, f"{holdout} held out")

    def __repr__(self) -> str:
        return f"CalibrationData({self.description})"

    def batches(self, batch_size: int, max_batches: int | None = None, shuffle: bool = False,
                seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Global batches 0, 1, ... of `batch_size` samples (the last may be partial), at most
        `max_batches` of them; rank r of `world_size` gets batches r, r + world_size, ..."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if max_batches is not None and max_batches < 0:
            raise UserError(f"max batches must be >= 0, got {max_batches}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad rank {rank} of world size {world_size}")
        n = self.num_samples
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        order = self._indices[order]
        starts = range(0, n, batch_size)[:max_batches][rank::world_size]
        return (self._batch(order[s:s + batch_size]) for s in starts)

    def _batch(self, idx: np.ndarray) -> Batch:
        labels = None if self._labels is None else self._labels[idx]
        return Batch(self._source.load(idx), labels)
