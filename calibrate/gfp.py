"""The Group Fisher Pruning schedule (Liu et al., ICML 2021, Algorithm 2): prune while training.

The unpruned model trains with a mask of ones at every site (`sites.py`); the masks' gradients
give each step's per-sample g_{n,u} (for the batch-mean loss, g = N · ∂L/∂m), and
F_u += Σ_n g_{n,u}². Every `prune_every` steps (paper: 25 for classification) the
`prune_count` alive units with the lowest F_u / ΔM_u (or / ΔMACs, per `--normalize`) get mask
0 for good, and the accumulators are reset. A layer group never drops below one rounding unit,
as in the one-shot planner. The schedule stops when the target is met. Under torchrun the
accumulators are all-reduced before each decision, so every rank removes the same units.

Pruning may use at most half of the step budget, so that the sliced network always gets the
other half to recover; if the target is not met by then, the rest is removed at once by the
last accumulated scores (reported as `removed_without_training`). Then the network, whose masked channels are exactly
the removed ones, is sliced and checked by the exactness oracle with its trained weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from onnxprune.planner import Removal, cost_value, unit_normaliser

from .distributed import World, all_reduce_sum
from .sites import mask_sites, scored_units
from .statistics import SiteMasks


@dataclass
class GfpState:
    """Which units are gone, the running Fisher sums, and the cost bookkeeping."""
    units: np.ndarray            # scored unit ids (mask columns)
    norm: np.ndarray             # ΔM (or ΔMACs) per column
    floor_left: np.ndarray       # per column: how many more units its layer group may lose
    group_of: np.ndarray         # per column: index into floor_left
    removal: Removal
    goal: float
    fisher: np.ndarray = field(init=False)
    alive: np.ndarray = field(init=False)
    log: list = field(default_factory=list)

    def __post_init__(self):
        self.fisher = np.zeros(len(self.units))
        self.alive = np.ones(len(self.units), dtype=bool)

    def candidates(self) -> np.ndarray:
        return np.flatnonzero(self.alive & (self.floor_left[self.group_of] > 0))

    def remove_lowest(self, count: int, step: int | None) -> int:
        removed = 0
        for _ in range(count):
            pool = self.candidates()
            if len(pool) == 0:
                break
            col = int(pool[np.argmin(self.fisher[pool] / self.norm[pool])])
            self.alive[col] = False
            self.floor_left[self.group_of[col]] -= 1
            self.removal.remove(self.units[[col]])
            removed += 1
        if removed:
            self.log.append(step)
        return removed


def _state(analysis, config, units: np.ndarray) -> GfpState:
    channels, costs = analysis.channels, analysis.costs
    norm = np.maximum(unit_normaliser(channels, costs, config.normalize)[units], 1e-12)
    column = {int(u): i for i, u in enumerate(units.tolist())}
    group_of = np.zeros(len(units), dtype=np.int64)
    floors = []
    for g in analysis.groups:
        members = [column[int(u)] for u in g.units if int(u) in column]
        group_of[members] = len(floors)
        keep = min(len(g.units), max(1, math.ceil(config.round_to / g.channels_per_unit)))
        floors.append(max(0, min(len(members), len(g.units) - keep)))
    before = costs.costs()
    goal = config.target.fraction * cost_value(before, config.target.kind)
    return GfpState(units, norm, np.array(floors, dtype=np.int64), group_of,
                    Removal(channels, costs), goal)


class GfpSchedule:
    """Hooks for `finetune.finetune`: attach masks before a step, decide after it."""

    def __init__(self, analysis, config, module, world: World, prune_steps: int | None = None):
        sites = mask_sites(analysis.channels)
        self.state = _state(analysis, config, scored_units(sites, analysis.channels.blocked))
        self.masks = SiteMasks(sites, self.state.units, world.device)
        self.module, self.world, self.config = module, world, config
        self.costs, self.kind = analysis.costs, config.target.kind
        self.prune_steps = prune_steps  # pruning stops here at the latest (finish() completes)
        self.n = 0

    def reached(self) -> bool:
        return cost_value(self.costs.costs(self.state.removal.kept), self.kind) <= self.state.goal

    def before_step(self, n: int) -> torch.Tensor:
        self.n = n
        keep = torch.from_numpy(self.state.alive.astype(np.float32))
        return self.masks.attach_masks(self.module, n, keep)

    def after_step(self, step: int, grad: torch.Tensor | None) -> bool:
        """Accumulate F; every `prune_every` steps remove units. True: the target is met."""
        if grad is not None:
            self.state.fisher += ((grad.detach().double().cpu() * self.n) ** 2).sum(0).numpy()
        out_of_budget = self.prune_steps is not None and step + 1 >= self.prune_steps
        if (step + 1) % self.config.finetune.prune_every and not out_of_budget:
            return False
        summed = all_reduce_sum(torch.from_numpy(self.state.fisher), self.world)
        self.state.fisher = summed.numpy().copy()
        self.state.remove_lowest(self.config.finetune.prune_count, step + 1)
        self.state.fisher[:] = 0
        return self.reached() or out_of_budget

    def finish(self) -> int:
        """Remove what is still needed without training; returns how many units that was."""
        self.masks.detach(self.module)
        extra = 0
        while not self.reached():
            got = self.state.remove_lowest(1, None)
            if not got:
                break
            extra += got
        return extra

    def removed_components(self, n_components: int) -> np.ndarray:
        removed = np.zeros(n_components, dtype=bool)
        removed[self.state.units[~self.state.alive]] = True
        return removed


def with_weights(channels, model):
    """The channel analysis of `model`'s structure, holding `model`'s (trained) weights."""
    return replace(channels, model=model)
