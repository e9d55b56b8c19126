"""Layers the user protects from pruning (`--keep NAME`, `PruneConfig(keep=...)`).

A name is a tensor or a node of the model. A tensor keeps all its channels; a node keeps the
channels of every tensor it writes (its output channels, as Torch-Pruning's `ignored_layers`
keeps a layer's output channels; its input channels may still shrink with the layer before).
Every unit with a kept channel is blocked with the reason "kept by request (NAME)", so
`analyze` shows it among the blocked groups and the planner never touches it. Coupling is
respected: keeping one branch of a residual Add keeps the whole residual group.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxprune.analysis.flow import tensor_key
from onnxprune.analysis.units import Channels
from onnxprune.errors import UserError

KEPT = "kept by request"


def _tensors_named(channels: Channels, name: str) -> list[str]:
    graph = channels.model.graph
    nodes = [n for n in graph.node if n.name == name]
    if nodes:
        return [out for n in nodes for out in n.output if out]
    produced = {out for n in graph.node for out in n.output}
    known = produced | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    if name in known:
        return [name]
    raise UserError(f"--keep {name!r}: the model has no tensor or node of that name")


def keep_requested(channels: Channels, names: Sequence[str]) -> np.ndarray:
    """Block every unit holding a channel of a named tensor or node output, in place;
    returns the ids of the units blocked by this request."""
    kept: set[int] = set()
    for name in names:
        for tensor in _tensors_named(channels, name):
            key = tensor_key(tensor)
            if key not in channels.spaces:  # a scalar or a tensor with no channel axis
                continue
            for comp in np.unique(channels.labels[channels.nodes(key)]).tolist():
                reason = f"{KEPT} ({name})"
                if reason not in channels.reasons.setdefault(comp, []):
                    channels.reasons[comp].append(reason)
                channels.blocked[comp] = True
                kept.add(comp)
    return np.array(sorted(kept), dtype=np.int64)
