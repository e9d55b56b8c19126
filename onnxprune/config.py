"""Options of a prune run, as one frozen dataclass and a few Enums (no magic strings).

This module stays light (no onnx, onnxruntime or numpy at import time): it imports only
`onnxprune.bench.base`, itself light, for BackendKind. What runs a LatencyConfig (its backend,
its checks) is in `onnxprune.latency.options`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxprune.bench.base import BackendKind

if TYPE_CHECKING:  # calibrate.datatypes imports only onnxprune.errors: no cycle, no torch
    from calibrate.datatypes import ImageOptions


class TargetKind(enum.Enum):
    MEM = "mem"        # feature-map memory M (Group Fisher's definition)
    FLOPS = "flops"    # multiply-accumulates
    PARAMS = "params"  # parameter count
    LATENCY = "latency"  # predicted by per-layer tables timed on a backend (onnxprune.latency)


class Normalize(enum.Enum):
    MEM = "mem"        # importance / ΔM, as in the Group Fisher paper
    FLOPS = "flops"    # importance / ΔMACs
    NONE = "none"      # raw importance
    LATENCY = "latency"  # importance / Δlatency, HALP-style (onnxprune.latency)


class AttentionUnits(enum.Enum):
    """What a unit of an attention block is (rules/reshape.py, rules/linear.py)."""
    HEADS = "heads"    # a whole head: q, k, v columns, attention map, output-projection rows
    DIMS = "dims"      # channel j of every head; q @ kT's j is masked at q's and k's producers


class Quantize(enum.Enum):
    INT8 = "int8"      # onnxruntime's static quantizer, QDQ (onnxprune.rewrite.quantize)


class Criterion(enum.Enum):
    L1 = "l1"
    L2 = "l2"
    LAMP = "lamp"
    RANDOM = "random"
    FISHER = "fisher"
    HRANK = "hrank"
    TAYLOR = "taylor"

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.FISHER, Criterion.HRANK, Criterion.TAYLOR)


DEFAULT_ROUNDS = 4          # iterative scoring with the refit: chosen in docs/choosing.md
DEFAULT_MAX_PRUNE_SHARE = 0.9  # a layer group keeps >= 10 % of its channels (ibid.)


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    fraction: float  # keep cost <= fraction * original cost


@dataclass(frozen=True)
class CalibrationConfig:
    """How a data criterion reads its data (the `calibrate` package runs it in torch)."""
    batch_size: int = 32
    max_batches: int | None = 32     # global batches; None: the whole data set
    no_labels: bool = False          # ignore labels even where the data has them
    progress: bool = False           # a progress line on stderr
    device: str | None = None        # "cpu" / "cuda"; default: cuda when available
    image: ImageOptions | None = None  # image folders: resize, crop, normalise
    recalibrate_bn: bool = False     # re-estimate BN statistics of the slice (calibrate/bn.py)
    rounds: int | None = None        # fisher / taylor: remove in this many rounds, re-scoring
                                     # before each (plan/rounds.py); None: DEFAULT_ROUNDS with
                                     # the refit, 1 without (api._plan_on_data)


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: backend, runs, cache."""
    backend: BackendKind = BackendKind.ORT_CPU
    runs: int = 20                  # end-to-end: interleaved rounds of original and pruned
    warmup: int = 3
    table_runs: int = 10            # per-layer table: interleaved rounds of a layer's widths
    threads: int | None = None      # onnxruntime intra-op threads (None: its default)
    cache_dir: Path | None = None   # None: onnxprune.model.io.cache_dir("latency")
    retries: int = 2                # --target-latency: re-plans when the measured ratio misses
    spinning: bool = False          # onnxruntime idle-worker spinning (model.runtime.session:
                                    # off, so interleaved sessions do not steal each other's
                                    # cores)

    @property
    def cache(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        from onnxprune.model.io import cache_dir  # imports onnx: only when a table is cached

        return cache_dir("latency")


@dataclass(frozen=True)
class PruneConfig:
    target: Target
    criterion: Criterion = Criterion.L1
    normalize: Normalize = Normalize.MEM
    round_to: int = 8
    max_prune_share: float = DEFAULT_MAX_PRUNE_SHARE  # a layer group loses at most this share
    attention: AttentionUnits = AttentionUnits.HEADS  # whole heads or head dims as units
    seed: int = 0                # random scores, the calibration subset, the held-out share
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verify_runs: int = 2
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    finetune: FinetuneConfig | None = None   # recovery (calibrate.recover); None: no training
    latency: LatencyConfig | None = None  # backend, runs, cache; None: the defaults (ort-cpu)
    keep: tuple[str, ...] = ()   # tensors / nodes whose channels stay (onnxprune.analysis.keep)
    static_shape: bool = False   # the output keeps the analysis shape instead of the original's
                                 # dynamic dims (onnxprune.rewrite.signature)
    quantize: Quantize | None = None  # also write an INT8 copy; run by the CLI after prune
    reconstruct: bool | None = None  # least-squares refit of the sinks (calibrate/refit.py);
                                     # None: with data, under the one-shot schedule
    holdout: int = 500           # samples (at most half the data) kept out of the refit and of
                                 # fine-tuning, to judge them (calibrate/guard.py)
    min_agreement: float | None = None  # held-out top-1 agreement below this: nothing written

    def reconstructs(self, has_data: bool) -> bool:
        """Whether the sinks are refit: as asked, else with data under the one-shot schedule
        (GFP's trained weights are not the original's, so its layers are not refit to them)."""
        if self.reconstruct is not None:
            return self.reconstruct
        return has_data and (self.finetune is None or self.finetune.schedule is Schedule.ONESHOT)

    @property
    def uses_latency(self) -> bool:
        """A latency target or normaliser needs the per-layer latency table."""
        return self.target.kind is TargetKind.LATENCY or self.normalize is Normalize.LATENCY



class Optimizer(enum.Enum):
    SGD = "sgd"        # Nesterov momentum 0.9
    ADAMW = "adamw"


class Schedule(enum.Enum):
    ONESHOT = "oneshot"  # score, prune to the target at once, fine-tune
    GFP = "gfp"          # Group Fisher Pruning, Algorithm 2: prune while fine-tuning


@dataclass(frozen=True)
class FinetuneConfig:
    """Recovery after (or, with GFP, while) pruning; run by the `calibrate` package."""
    epochs: float | None = None      # exactly one of epochs / steps
    steps: int | None = None
    lr: float = 0.01
    optimizer: Optimizer = Optimizer.SGD
    weight_decay: float = 5e-4
    batch_size: int = 64
    temperature: float = 4.0         # of the distillation term (with or without labels)
    schedule: Schedule = Schedule.ONESHOT
    prune_every: int = 25            # GFP: steps between removals (paper: 25 classification)
    prune_count: int = 1             # GFP: units removed each time
