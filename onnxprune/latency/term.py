"""Predicted latency as a function of the kept channels of every channel space.

    latency(kept) = overhead + rest + Σ_layers L_i(f_in_i, f_out_i)

L_i is layer i's table interpolated bilinearly over GRID (held at the narrowest width below it:
conservative, narrow layers are overhead-bound); f_in / f_out are the kept fractions of the
weight axes that carry the layer's input and output channels. `rest` is what the whole model
takes beyond its tabled layers (element-wise ops, pools, layout reorders, per-op dispatch,
untabled nodes; 0 if the layers alone already add up to more). It is held fixed, which is
conservative and what was measured: on ORT CPU, ResNet-18's end-to-end time minus its layers
timed alone was 5.8 ms both before and after pruning to 0.45 of its activations (per-op
overhead, not bandwidth, dominates).

The latency a channel removes (the HALP normaliser) is the secant of each table it touches
between the full and the half width, per channel; a unit sums it over its channel nodes, i.e.
over every layer it narrows.
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.cost import CostModel
from onnxprune.analysis.flow import param_key
from onnxprune.latency.layers import GRID, LayerTable


def _segment(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid segment index and position in it."""
    grid = np.asarray(GRID)
    f = np.clip(f, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, f, side="right") - 1, 0, len(grid) - 2)
    return i, (f - grid[i]) / (grid[i + 1] - grid[i])


class LatencyTerm:
    """Plugs into CostModel.latency: CostModel.costs() and the planner read it from there."""

    def __init__(self, table: LayerTable, costs: CostModel):
        self.table = table
        index = {k: i for i, k in enumerate(costs.keys)}

        def space(layer, axis) -> int:
            return -1 if axis is None else index.get(param_key(layer.weight, axis), -1)

        self.in_space = np.array([space(ly, ly.in_axis) for ly in table.layers], dtype=np.int64)
        self.out_space = np.array([space(ly, ly.out_axis) for ly in table.layers], dtype=np.int64)
        self.sizes = costs.sizes
        self.rest = max(0.0, table.model_ms - float(self.layer_ms(costs.sizes).sum()))

    def _fractions(self, kept: np.ndarray, spaces: np.ndarray) -> np.ndarray:
        safe = np.maximum(spaces, 0)
        return np.where(spaces >= 0, kept[safe] / self.sizes[safe], 1.0)

    def interpolate(self, f_in: np.ndarray, f_out: np.ndarray) -> np.ndarray:
        """Every layer's ms at its own kept fractions (bilinear over GRID)."""
        (i, s), (o, t) = _segment(f_in), _segment(f_out)
        v, rows = self.table.values, np.arange(len(self.table.layers))
        ms = ((1 - s) * (1 - t) * v[rows, i, o] + s * (1 - t) * v[rows, i + 1, o]
              + (1 - s) * t * v[rows, i, o + 1] + s * t * v[rows, i + 1, o + 1])
        return ms

    def layer_ms(self, kept: np.ndarray) -> np.ndarray:
        return self.interpolate(self._fractions(kept, self.in_space),
                                self._fractions(kept, self.out_space))

    def total(self, kept: np.ndarray) -> float:
        """Predicted end-to-end ms with `kept[i]` channels in space i."""
        return self.table.overhead_ms + self.rest + float(self.layer_ms(kept).sum())

    def per_space(self) -> np.ndarray:
        """ms one channel of each space removes (module docstring)."""
        ones, half = np.ones(len(self.in_space)), np.full(len(self.in_space), 0.5)
        full = self.interpolate(ones, ones)
        per_space = np.zeros(len(self.sizes))
        for spaces, drop in ((self.in_space, full - self.interpolate(half, ones)),
                             (self.out_space, full - self.interpolate(ones, half))):
            valid = spaces >= 0
            np.add.at(per_space, spaces[valid],
                      drop[valid] / (0.5 * self.sizes[spaces[valid]]))
        return per_space
