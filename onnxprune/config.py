"""Options of a prune run, as one frozen dataclass and a few Enums (no magic strings)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnxprune.latency imports onnxruntime; config stays light
    from onnxprune.latency import LatencyConfig


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


class Criterion(enum.Enum):
    L1 = "l1"
    L2 = "l2"
    RANDOM = "random"
    FISHER = "fisher"
    HRANK = "hrank"
    TAYLOR = "taylor"

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.FISHER, Criterion.HRANK, Criterion.TAYLOR)


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
    image: object | None = None      # calibrate.data.ImageOptions for image folders
    recalibrate_bn: bool = False     # re-estimate BN statistics of the slice (calibrate/bn.py)


@dataclass(frozen=True)
class PruneConfig:
    target: Target
    criterion: Criterion = Criterion.L1
    normalize: Normalize = Normalize.MEM
    round_to: int = 8
    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verify_runs: int = 2
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    finetune: FinetuneConfig | None = None   # recovery (calibrate.recover); None: no training
    latency: LatencyConfig | None = None  # backend, runs, cache; None: the defaults (ort-cpu)

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
    temperature: float = 4.0         # distillation temperature (no labels)
    schedule: Schedule = Schedule.ONESHOT
    prune_every: int = 25            # GFP: steps between removals (paper: 25 classification)
    prune_count: int = 1             # GFP: units removed each time
    holdout: int = 500               # samples kept out of training to measure fidelity
