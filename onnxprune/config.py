"""Options of a prune run, as one frozen dataclass and a few Enums (no magic strings)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TargetKind(enum.Enum):
    MEM = "mem"        # feature-map memory M (Group Fisher's definition)
    FLOPS = "flops"    # multiply-accumulates
    PARAMS = "params"  # parameter count


class Normalize(enum.Enum):
    MEM = "mem"        # importance / ΔM, as in the Group Fisher paper
    FLOPS = "flops"    # importance / ΔMACs
    NONE = "none"      # raw importance


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
class PruneConfig:
    target: Target
    criterion: Criterion = Criterion.L1
    normalize: Normalize = Normalize.MEM
    round_to: int = 8
    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verify_runs: int = 2
