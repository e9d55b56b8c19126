"""The calibration pass: run the ONNX model in torch on the user's data and score every unit.

The normalised model (the one the channel analysis saw) is made batch-free (`onnxprune.model.batch`)
and executed as a torch module; masks or rank recorders sit at every site (`sites.py`), and
`statistics.py` holds the formulas. Models that only run at their static batch are
calibrated one sample at a time, with the same result. Under torchrun each process takes every
N-th batch and the sums are all-reduced, so N processes give the scores of one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from calibrate.data import Batch, CalibrationData, calibration_batches
from calibrate.distributed import World, all_reduce_sum, to_device, world
from calibrate.executor import OnnxModule
from calibrate.losses import per_sample_loss
from calibrate.progress import Progress
from calibrate.sites import mask_sites, scored_units
from calibrate.statistics import BatchAxisMismatch, SiteMasks, Totals
from onnxprune.analysis.units import Channels
from onnxprune.config import CalibrationConfig, Criterion
from onnxprune.model.batch import make_batch_free
from onnxprune.model.outputs import output_kinds


@dataclass
class CalibrationResult:
    scores: np.ndarray        # one per channel-analysis component (0 where unscored)
    criterion: Criterion
    samples: int
    batches: int
    seconds: float
    data: str
    labels: str               # "data labels", "sampled from the model (true Fisher)" or "none"
    mode: str                 # "batched" or "one sample at a time: <why>"
    world_size: int
    sites: int
    rounds: int = 1           # scoring passes (iterative scoring: api._plan_on_data)

    def as_dict(self) -> dict:
        return {"criterion": self.criterion.value, "data": self.data, "samples": self.samples,
                "batches": self.batches, "seconds": round(self.seconds, 3),
                "labels": self.labels, "mode": self.mode, "processes": self.world_size,
                "mask_sites": self.sites, "rounds": self.rounds}


class _Pass:
    """State of one calibration pass over the data."""

    def __init__(self, channels: Channels, criterion: Criterion, w: World, seed: int,
                 removed: np.ndarray | None):
        self.criterion, self.world, self.seed = criterion, w, seed
        sites = mask_sites(channels)
        self.units = scored_units(sites, channels.blocked)
        self.keep = None if removed is None else torch.from_numpy(
            (~removed[self.units]).astype(np.float32))
        model, self.why_single = make_batch_free(channels.model)
        self.module = OnnxModule(model).to(w.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.masks = SiteMasks(sites, self.units, w.device)
        self.kinds = output_kinds(channels.model)
        self.totals = Totals(len(self.units))
        self.n_sites = len(sites)

    def run(self, batch: Batch, index: int) -> None:
        inputs = to_device(batch.inputs, self.world.device)
        labels = None if batch.labels is None else torch.from_numpy(batch.labels).long()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if self.why_single is None:
            try:
                return self._step([inputs], [labels], generator)
            except BatchAxisMismatch as exc:
                self.why_single = str(exc)
        n = len(next(iter(inputs.values())))
        singles = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(n)]
        ys = [None if labels is None else labels[i:i + 1] for i in range(n)]
        self._step(singles, ys, generator)

    def _step(self, parts, labels, generator) -> None:
        """One batch, given as one or more parts (single samples when batching is not free)."""
        if self.criterion is Criterion.HRANK:
            sums, counts, n = 0, 0, 0
            for inputs, _ in zip(parts, labels):
                size = len(next(iter(inputs.values())))
                s, c = self.masks.attach_rank_recorders(self.module, size)
                with torch.no_grad():
                    self.module(**inputs)
                sums, counts, n = sums + s, counts + c, n + size
            self.totals.add_ranks(torch.as_tensor(sums), torch.as_tensor(counts), n)
            return
        grads = [self._gradients(inputs, y, generator) for inputs, y in zip(parts, labels)]
        self.totals.add_gradients(torch.cat(grads))

    def _gradients(self, inputs, labels, generator) -> torch.Tensor:
        n = len(next(iter(inputs.values())))
        mask = self.masks.attach_masks(self.module, n, self.keep)
        outputs = self.module(**inputs)
        loss = per_sample_loss(outputs, self.kinds, labels, generator).sum()
        (grad,) = torch.autograd.grad(loss, mask, allow_unused=True)
        return torch.zeros_like(mask) if grad is None else grad

    def finish(self) -> np.ndarray:
        self.masks.detach(self.module)
        self.totals.load_vector(all_reduce_sum(self.totals.as_vector(), self.world))
        return self.totals.scores(self.criterion)


def _labels_text(data: CalibrationData, criterion: Criterion) -> str:
    if criterion is Criterion.HRANK:
        return "not used"
    if data.has_labels:
        return "data labels"
    return "sampled from the model's predictions (true Fisher); Gaussian for other outputs"


def data_scores(channels: Channels, criterion: Criterion, data: CalibrationData,
                config: CalibrationConfig, seed: int = 0,
                removed: np.ndarray | None = None) -> CalibrationResult:
    """Score every unit of `channels` with fisher, hrank or taylor on `data`: `max_batches`
    batches drawn with `seed` (a seed's subset, not the first samples). `removed` units (fisher,
    taylor) are masked to zero while scoring, as if pruned (iterative scoring); HRank reads the
    maps of the unmasked model."""
    w = world(config.device)
    state = _Pass(channels, criterion, w, seed, removed)
    total = _batch_count(data, config)
    progress = Progress(f"calibrate ({criterion.value})", total, config.progress and w.is_main)
    for k, batch in enumerate(calibration_batches(data, config, seed, w.rank, w.size)):
        state.run(batch, w.rank + k * w.size)
        progress.update(len(next(iter(batch.inputs.values()))) * w.size)
    unit_scores = state.finish()
    seconds = progress.close()
    scores = np.zeros(channels.n_components)
    scores[state.units] = unit_scores
    mode = "batched" if state.why_single is None else f"one sample at a time: {state.why_single}"
    return CalibrationResult(scores, criterion, state.totals.samples, state.totals.batches,
                             seconds, data.description, _labels_text(data, criterion), mode,
                             w.size, state.n_sites)


def _batch_count(data: CalibrationData, config: CalibrationConfig) -> int:
    full = -(-data.num_samples // config.batch_size)
    return full if config.max_batches is None else min(full, config.max_batches)
