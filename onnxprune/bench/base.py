"""The types every bench backend shares: which backends exist, their options, the protocol.

`onnxprune.config` (LatencyConfig) imports this module, so it stays light: no onnxruntime,
onnx or numpy at import time (numpy and onnx appear in annotations only, and the engine cache
folder is looked up when an options object is made). The factory is `backends.get_backend`;
backends.py and tensorrt.py import this module, never the other way round.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from onnxprune.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from onnxprune.bench.profile import Profile

Feeds = dict[str, "np.ndarray"]


class BackendUnavailable(UserError):
    """The requested backend cannot run on this machine (missing package, provider or GPU)."""


class BackendKind(enum.Enum):
    ORT_CPU = "ort-cpu"
    ORT_CUDA = "ort-cuda"
    ORT_TRT = "ort-trt"
    TENSORRT = "tensorrt"


def engine_cache_dir() -> Path:
    """Where TensorRT engines are cached: `onnxprune.model.io.cache_dir("engines")`."""
    from onnxprune.model.io import cache_dir  # onnx: imported only when options are made

    return cache_dir("engines")


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None = None                      # onnxruntime intra-op threads
    spinning: bool = True                           # onnxruntime workers spin while idle
    cache_dir: Path = field(default_factory=engine_cache_dir)
    profile: Profile | None = None                  # TensorRT: ranges of dynamic inputs


class Backend(Protocol):
    name: str
    supports_fp16: bool

    def check(self) -> None:
        """Raise BackendUnavailable with one clear line if this backend cannot run here."""

    def prepare(self, model: onnx.ModelProto, batch: int, fp16: bool) -> Any:
        """A runner for `model` (already re-batched) at `batch`."""

    def run(self, runner: Any, feeds: Feeds) -> list[np.ndarray]:
        """Outputs on the host, in graph output order."""

    def timer(self, runner: Any, feeds: Feeds) -> Callable[[], float]:
        """A closure that runs once on `feeds` and returns the elapsed milliseconds."""
