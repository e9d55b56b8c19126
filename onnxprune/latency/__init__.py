"""Latency as a pruning cost, measured on the backend the model will run on.

FLOPs and memory are proxies; what a user wants is latency, and it is not linear in channels
(kernels are tiled, small layers are overhead-bound). HALP (Shen et al., NeurIPS 2022) prunes
against a latency lookup table: the latency of each layer is measured at candidate widths, the
latency a channel group removes is the sum over the layers it touches of the drop of each
layer's latency per channel, and the importance of a group is normalised by that latency
(importance / latency saved), so the planner removes the least important milliseconds first.

Here (one mechanism for every cost):

- options.py: the backend a LatencyConfig (onnxprune.config) measures on, and its checks;
- layers.py / table.py: each Conv / ConvTranspose / Gemm / MatMul is timed alone at 5 x 5
  widths on the chosen backend (onnxprune.bench), cached per model hash and backend in
  `onnxprune.model.io.cache_dir("latency")`;
- term.py: `LatencyTerm` turns the table into latency(kept channels) and the per-channel drop;
  attached as `CostModel.latency` it makes `Costs.latency` and `CostModel.per_node_latency`
  exist, so `TargetKind.LATENCY` and `Normalize.LATENCY` go through the planner exactly like
  memory and MACs;
- measure.py: end-to-end latency of the original and the pruned model, interleaved, and the
  `--target-latency` loop that re-plans when the measured ratio misses the target.
"""
from __future__ import annotations

from onnxprune.analysis.flow import ParamKey
from onnxprune.config import LatencyConfig
from onnxprune.latency.table import latency_table
from onnxprune.latency.term import LatencyTerm


def prunable_axes(channels) -> set[tuple[str, int]]:
    """(initializer, axis) pairs holding a channel of an unblocked unit."""
    axes = set()
    for key, info in channels.spaces.items():
        labels = channels.labels[info.offset:info.offset + info.size]
        if isinstance(key, ParamKey) and not channels.blocked[labels].all():
            axes.add((key.initializer, key.axis))
    return axes


def attach(analysis, config: LatencyConfig | None = None, seed: int = 0) -> LatencyTerm:
    """Build (or load) the latency table of `analysis.model` and attach it to its CostModel."""
    axes = prunable_axes(analysis.channels)
    table = latency_table(analysis.model, config or LatencyConfig(), seed,
                          lambda weight, axis: (weight, axis) in axes)
    analysis.costs.latency = LatencyTerm(table, analysis.costs)
    return analysis.costs.latency


__all__ = ["LatencyConfig", "LatencyTerm", "attach", "latency_table"]
