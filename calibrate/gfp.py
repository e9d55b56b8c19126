"""The Group Fisher Pruning schedule (Liu et al., ICML 2021, Algorithm 2): prune while training.

The unpruned model trains with a mask of ones at every site (`sites.py`); the masks' gradients
give each step's per-sample g_{n,u} (for the batch-mean loss, g = N · ∂L/∂m), and
F_u += Σ_n g_{n,u}². Every `prune_every` steps (paper: 25 for classification) the
`prune_count` chunks of alive units with the lowest ΣF_u / ΣΔM_u (or ΔMACs, per `--normalize`)
get mask 0 for good, and the accumulators are reset. Units go in `--round-to` chunks and a layer
group never drops below one rounding unit, as in the one-shot planner (`--round-to 1`: the
paper's single channels). The schedule stops when the target is met. Under torchrun the
accumulators are all-reduced before each decision, so every rank removes the same units.

Pruning may use at most half of the step budget, so that the sliced network always gets the
other half to recover; if the target is not met by then, the rest is removed at once by the
Fisher accumulated over the whole pruning phase (reported as `removed_without_training`).
Then the network, whose masked channels are exactly the removed ones, is sliced and checked by
the exactness oracle with its trained weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from calibrate.distributed import World, all_reduce_sum
from calibrate.sites import mask_sites, scored_units
from calibrate.statistics import SiteMasks
from onnxprune.plan.planner import (
    Removal,
    chunk_shape,
    cost_value,
    fewest_reaching,
    unit_normaliser,
)


@dataclass
class GfpState:
    """Which units are gone, the running Fisher sums, and the cost bookkeeping.

    Units go in rounding chunks, as in the one-shot planner: a layer group whose width is a
    multiple of `--round-to` loses `chunk` units at a time (the alive ones with the lowest
    F / ΔM), so its width stays a multiple of it; `--round-to 1` is the paper's one at a time.
    """
    units: np.ndarray            # scored unit ids (mask columns)
    norm: np.ndarray             # ΔM (or ΔMACs) per column
    members: list[np.ndarray]    # per layer group: its columns
    chunk: np.ndarray            # per layer group: units per removal
    chunks_left: np.ndarray      # per layer group: removals it may still take
    removal: Removal
    goal: float
    cost: Callable[[np.ndarray], float]  # the target's cost of the kept channel counts
    fisher: np.ndarray = field(init=False)   # since the last removal (reset at each one)
    total: np.ndarray = field(init=False)    # since the start (never reset): for finish()
    alive: np.ndarray = field(init=False)
    log: list = field(default_factory=list)

    def __post_init__(self):
        self.fisher = np.zeros(len(self.units))
        self.total = np.zeros(len(self.units))
        self.alive = np.ones(len(self.units), dtype=bool)

    def candidates(self) -> np.ndarray:
        """Alive columns of the layer groups that may still lose a chunk."""
        cols = [m[self.alive[m]] for g, m in enumerate(self.members) if self.chunks_left[g] > 0]
        return np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)

    def next_chunk(self, group: int) -> np.ndarray:
        cols = self.members[group][self.alive[self.members[group]]]
        order = np.argsort(self.fisher[cols] / self.norm[cols], kind="stable")
        return cols[order[:self.chunk[group]]]

    def reached(self) -> bool:
        return self.cost(self.removal.kept) <= self.goal

    def remove_lowest(self, count: int, step: int | None) -> int:
        """Remove up to `count` chunks, each the one with the lowest ΣF / ΣΔM, stopping once the
        target is met (so `--prune-count` never overshoots it); returns units removed."""
        removed = 0
        for _ in range(count):
            if self.reached():
                break
            open_groups = np.flatnonzero(self.chunks_left > 0)
            if len(open_groups) == 0:
                break
            chunks = [self.next_chunk(int(g)) for g in open_groups]
            scores = [self.fisher[c].sum() / self.norm[c].sum() for c in chunks]
            best = int(np.argmin(scores))
            cols = chunks[best]  # the chunk that crosses the target goes only as far as needed
            cols = cols[:len(fewest_reaching(self.units[cols], self.removal, self.cost, self.goal))]
            self.alive[cols] = False
            self.chunks_left[open_groups[best]] -= 1
            self.removal.remove(self.units[cols])
            removed += len(cols)
        if removed:
            self.log.append(step)
        return removed


def _state(analysis, config, units: np.ndarray) -> GfpState:
    channels, costs = analysis.channels, analysis.costs
    norm = np.maximum(unit_normaliser(channels, costs, config.normalize)[units], 1e-12)
    column = {int(u): i for i, u in enumerate(units.tolist())}
    members, chunk, chunks_left = [], [], []
    for g in analysis.groups:
        cols = np.array([column[int(u)] for u in g.units if int(u) in column], dtype=np.int64)
        size, keep = chunk_shape(g, config.round_to, config.max_prune_share)
        members.append(cols)
        chunk.append(size)
        chunks_left.append(max(0, min(len(cols), len(g.units) - keep)) // size)
    kind = config.target.kind
    goal = config.target.fraction * cost_value(costs.costs(), kind)
    return GfpState(units, norm, members, np.array(chunk), np.array(chunks_left),
                    Removal(channels, costs), goal,
                    lambda kept: cost_value(costs.costs(kept), kind))


class GfpSchedule:
    """Hooks for `finetune.finetune`: attach masks before a step, decide after it."""

    def __init__(self, analysis, config, module, world: World, prune_steps: int | None = None):
        sites = mask_sites(analysis.channels)
        self.state = _state(analysis, config, scored_units(sites, analysis.channels.blocked))
        self.masks = SiteMasks(sites, self.state.units, world.device)
        self.module, self.world, self.config = module, world, config
        self.prune_steps = prune_steps  # pruning stops here at the latest (finish() completes)
        self.n = 0

    def reached(self) -> bool:
        return self.state.reached()

    def before_step(self, n: int) -> torch.Tensor:
        self.n = n
        keep = torch.from_numpy(self.state.alive.astype(np.float32))
        return self.masks.attach_masks(self.module, n, keep)

    def after_step(self, step: int, grad: torch.Tensor | None) -> bool:
        """Accumulate F; every `prune_every` steps remove units. True: the target is met."""
        if grad is not None:
            step_fisher = ((grad.detach().double().cpu() * self.n) ** 2).sum(0).numpy()
            self.state.fisher += step_fisher
            self.state.total += step_fisher
        out_of_budget = self.prune_steps is not None and step + 1 >= self.prune_steps
        if (step + 1) % self.config.finetune.prune_every and not out_of_budget:
            return False
        summed = all_reduce_sum(torch.from_numpy(self.state.fisher), self.world)
        self.state.fisher = summed.numpy().copy()
        self.state.remove_lowest(self.config.finetune.prune_count, step + 1)
        self.state.fisher[:] = 0
        return self.reached() or out_of_budget

    def finish(self) -> int:
        """Remove what is still needed without training, by the Fisher accumulated over the
        whole pruning phase (the per-removal sums were just reset: ranking by them would take
        the first open group); returns how many units that was."""
        self.masks.detach(self.module)
        self.state.fisher = all_reduce_sum(torch.from_numpy(self.state.total),
                                           self.world).numpy().copy()
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
