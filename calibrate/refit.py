"""Least-squares refit of a pruned model's sink layers: recovery without training.

For every sink layer whose input lost channels (a Conv, Gemm or MatMul holding a `sink` slice),
and every such layer downstream of one (its input changed with the refits upstream: depthwise
and grouped Convs, layers after a residual Add), from the inputs to the outputs: run the
*pruned* model, with the refits so far applied, to get the layer's input x' (kept channels),
run the *original* model to get the layer's output y (its kept output channels), and solve the
ridge problem of calibrate/lsq.py for the layer's weight and bias (DESIGN.md §4: He et al.
ICCV 2017, ThiNet). Conv is a Gemm over im2col patches, grouped / depthwise Conv is solved per
group. A Conv or Gemm without a bias gets one (an optional input of the same op) when the
refit is taken. Layers are taken in levels: a layer waits for every refit layer upstream of
it, and one data pass serves a whole level, running each model only as far as that level's
inputs.

Rows: each calibration sample gives at most `ROWS_PER_SAMPLE` output positions (drawn with the
seed; He et al. sample 10 per image), so the cost per pass is the two forward passes; every
fifth sample's rows are held out to choose λ and to refuse a refit that does not help. Every
process of a torchrun job refits on all the data alike (no sharding), so all ranks agree.

What is written is not the slice any more: the exactness oracle proves the slice, and the refit
is reported as a fidelity change on held-out data (calibrate/recover.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from calibrate.data import calibration_batches
from calibrate.datatypes import CalibrationData
from calibrate.distributed import to_device, world
from calibrate.executor import OnnxModule
from calibrate.layers import Layer, layer_of
from calibrate.lsq import Fit, Normal, choose
from onnxprune.analysis.flow import Role
from onnxprune.config import CalibrationConfig
from onnxprune.model.batch import make_batch_free
from onnxprune.verify.partial import restrict

ROWS_PER_SAMPLE = 64
HELD_EVERY = 5                   # every fifth sample chooses λ
MAX_NORMAL_BYTES = 512 * 2 ** 20  # a wider layer is not refit


@dataclass
class Target:
    layer: Layer          # in the pruned model
    source: Layer         # the same node in the original
    kept_out: np.ndarray  # original output channels the pruned layer keeps
    sink: bool            # it lost input channels (else only its input changed)
    level: int = 0


def _uses(model: onnx.ModelProto) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            uses[name] = uses.get(name, 0) + 1
    return uses


def _out_axis(layer: Layer) -> int:
    return 0 if layer.op == "Conv" or (layer.op == "Gemm" and layer.attrs.get("transB", 0)) else 1


def _affected(model: onnx.ModelProto, sinks: set[str]) -> set[str]:
    """Names of the nodes whose input differs from the original's once the sinks lose
    channels and are refit: the sink layers and every node downstream of one."""
    producer = {o: n.name for n in model.graph.node for o in n.output}
    affected: set[str] = set()
    for node in model.graph.node:  # topological order
        if (len(node.input) > 1 and node.input[1] in sinks) or any(
                producer.get(name) in affected for name in node.input):
            affected.add(node.name)
    return affected


def find_targets(original: onnx.ModelProto, pruned: onnx.ModelProto, slices
                 ) -> tuple[list[Target], list[tuple[str, str]]]:
    """(layers to refit, (node, reason) of affected layers that cannot be). A layer is refit
    when it lost input channels (a sink) or when its input changed because one upstream did:
    a depthwise or grouped Conv after a refit layer is solved per group."""
    sinks = {s.initializer for s in slices if s.role is Role.SINK}
    removed = {(s.initializer, s.axis): s.removed for s in slices}
    p_inits = {i.name: i for i in pruned.graph.initializer}
    o_inits = {i.name: i for i in original.graph.initializer}
    o_nodes = {n.input[1]: n for n in original.graph.node if len(n.input) > 1}
    p_uses, o_uses = _uses(pruned), _uses(original)
    affected = _affected(pruned, sinks)
    targets, skipped = [], []
    for node in pruned.graph.node:
        if node.name not in affected or len(node.input) < 2:
            continue
        layer = layer_of(node, p_inits, p_uses)
        if isinstance(layer, str) and node.input[1] not in sinks:
            continue  # an activation op downstream of a sink: nothing to refit
        source = layer_of(o_nodes[node.input[1]], o_inits, o_uses) \
            if node.input[1] in o_nodes else "not found in the original"
        reason = layer if isinstance(layer, str) else source if isinstance(source, str) else None
        if reason is not None:
            skipped.append((node.name, reason))
            continue
        axis = _out_axis(source)
        n_out = source.weight_array.shape[axis]
        kept = np.setdiff1d(np.arange(n_out), removed.get((layer.weight, axis), []))
        targets.append(Target(layer, source, kept, sink=node.input[1] in sinks))
    return targets, skipped


def _levels(model: onnx.ModelProto, targets: list[Target]) -> None:
    """target.level = 1 + the highest level of the targets upstream of it (0 if none)."""
    by_node = {t.layer.node: t for t in targets}
    producer = {o: n for n in model.graph.node for o in n.output}
    reach: dict[str, set[str]] = {}  # node -> target nodes upstream of it
    for node in model.graph.node:
        up: set[str] = set()
        for name in node.input:
            p = producer.get(name)
            if p is not None:
                up |= reach[p.name] | ({p.name} if p.name in by_node else set())
        reach[node.name] = up
        if node.name in by_node:
            by_node[node.name].level = 1 + max((by_node[u].level for u in up), default=-1)


def _staged(pruned: onnx.ModelProto, targets: list[Target]) -> tuple[onnx.ModelProto, set]:
    """A copy where every Conv / Gemm target has a bias input (zeros where it had none)."""
    staged = onnx.ModelProto()
    staged.CopyFrom(pruned)
    names = {i.name for i in staged.graph.initializer}
    nodes = {n.name: n for n in staged.graph.node}
    added = set()
    for t in targets:
        layer = t.layer
        if not layer.fits_bias or layer.bias is not None:
            continue
        m = layer.weight_array.shape[_out_axis(layer)]
        name, k = f"{layer.weight}_refit_bias", 0
        while name in names:
            k += 1
            name = f"{layer.weight}_refit_bias{k}"
        names.add(name)
        staged.graph.initializer.append(numpy_helper.from_array(
            np.zeros(m, layer.weight_array.dtype), name))
        node = nodes[layer.node]
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        layer.bias, layer.bias_array = name, np.zeros(m, layer.weight_array.dtype)
        added.add(name)
    return staged, added


def _input_of(model: onnx.ModelProto, weight: str) -> str:
    return next(n.input[0] for n in model.graph.node if len(n.input) > 1 and n.input[1] == weight)


class _Pass:
    """One data pass: the inputs of a level's layers in both models, as rows of their
    problems (the two models are cut to compute just those inputs)."""

    def __init__(self, level: list[Target], free_o: onnx.ModelProto, free_p: onnx.ModelProto,
                 device, seed: int):
        self.level = level
        self.orig, self.index_o = _cut(free_o, [t.source.weight for t in level], device)
        self.pruned, self.index_p = _cut(free_p, [t.layer.weight for t in level], device)
        self.gen = torch.Generator().manual_seed(seed)
        self.normals: dict[str, tuple[Normal, Normal]] = {}
        self.source_w = {t.layer.node: _weights(t.source, device) for t in level}

    def add(self, inputs: dict, first: int) -> None:
        """Rows of one batch whose first sample has global index `first`."""
        seen_o, seen_p = self.orig(**inputs), self.pruned(**inputs)
        n = len(next(iter(inputs.values())))
        held = torch.from_numpy((np.arange(first, first + n) % HELD_EVERY) == HELD_EVERY - 1)
        for t, i_o, i_p in zip(self.level, self.index_o, self.index_p):
            x_o, x_p = seen_o[i_o], seen_p[i_p]
            name = t.layer.node
            y = t.source.output(x_o, *self.source_w[name])
            y = y[:, t.kept_out] if t.layer.op == "Conv" else y[..., t.kept_out]
            pos, _ = t.layer.positions(x_p, ROWS_PER_SAMPLE, self.gen)
            x, y = t.layer.rows(x_p, pos), t.layer.targets(y, pos)
            mask = held.repeat_interleave(x.shape[1] // n)
            pair = self.normals.setdefault(name, (_normal(t, x), _normal(t, x)))
            pair[0].add(x[:, ~mask], y[:, ~mask])
            pair[1].add(x[:, mask], y[:, mask])


def _cut(model: onnx.ModelProto, weights: list[str], device) -> tuple[OnnxModule, list[int]]:
    """The part of `model` that computes the inputs of the layers holding `weights` (a pass for
    shallow layers does not run the whole network), and each layer's output index."""
    names = [_input_of(model, w) for w in weights]
    unique = list(dict.fromkeys(names))  # layers reading the same tensor share one output
    module = OnnxModule(restrict(model, unique)).to(device)
    return module, [unique.index(name) for name in names]


def _normal(t: Target, x: torch.Tensor) -> Normal:
    return Normal(x.shape[0], x.shape[2], len(t.kept_out) // t.layer.groups, t.layer.fits_bias)


def _weights(layer: Layer, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = None if layer.bias_array is None else torch.tensor(layer.bias_array, device=device)
    return torch.tensor(layer.weight_array, device=device), bias


def _too_wide(t: Target) -> bool:
    k = int(np.prod(t.layer.weight_array.shape[1:])) if t.layer.op == "Conv" \
        else t.layer.weight_array.shape[1 - _out_axis(t.layer)]
    return 2 * t.layer.groups * (k + 1) ** 2 * 8 > MAX_NORMAL_BYTES


def refit(original: onnx.ModelProto, pruned: onnx.ModelProto, slices, data: CalibrationData,
          config: CalibrationConfig, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """(the refit model, its record). `original` is the normalised model the slices were cut
    from, `pruned` the slice; both at the analysis shape. The model is `pruned` unchanged
    (and the record says why) when no layer can be refit."""
    start = time.perf_counter()
    targets, skipped = find_targets(original, pruned, slices)
    skipped += [(t.layer.node, "too wide to refit") for t in targets if _too_wide(t)]
    targets = [t for t in targets if not _too_wide(t)]
    record: dict = {"layers": [], "skipped": [{"node": n, "reason": r} for n, r in skipped]}
    if not targets:
        record.update(refit_layers=0, seconds=time.perf_counter() - start)
        return pruned, record
    staged, added = _staged(pruned, targets)
    free_o, why_o = make_batch_free(original)
    free_p, why_p = make_batch_free(staged)
    if why_o or why_p:
        record.update(refit_layers=0, reason=f"the refit runs batches, but {why_o or why_p}",
                      seconds=time.perf_counter() - start)
        return pruned, record
    _levels(staged, targets)
    device = world(config.device).device
    fits, samples, peak = {}, 0, 0
    with torch.no_grad():
        for level in sorted({t.level for t in targets}):
            group = [t for t in targets if t.level == level]
            run = _Pass(group, free_o, free_p, device, seed + level)
            samples = 0
            for batch in calibration_batches(data, config, seed):  # same subset each level
                run.add(to_device(batch.inputs, device), samples)
                samples += len(next(iter(batch.inputs.values())))
            peak = max(peak, sum(a.nbytes + b.nbytes for a, b in run.normals.values()))
            for t in group:
                fits[t.layer.node] = _solve(t, run.normals.get(t.layer.node))
            free_p = _written(free_p, group, fits, set())
    model = _written(staged, targets, fits, added)
    record["layers"] = [_layer_record(t, fits[t.layer.node]) for t in targets]
    record.update(refit_layers=sum(f.theta is not None for f in fits.values()),
                  samples=samples, passes=len({t.level for t in targets}),
                  rows_per_sample=ROWS_PER_SAMPLE, accumulator_bytes=peak,
                  seconds=time.perf_counter() - start)
    return model, record


def _solve(t: Target, pair) -> Fit:
    if pair is None or pair[1].rows == 0 or pair[0].rows == 0:
        return Fit(None, None, float("nan"), float("nan"))
    return choose(pair[0], pair[1], t.layer.theta())


def _written(staged: onnx.ModelProto, targets: list[Target], fits: dict, added: set
             ) -> onnx.ModelProto:
    """`staged` with the refit weights of `targets`, without the zero biases in `added` that
    no refit used."""
    out = onnx.ModelProto()
    out.CopyFrom(staged)
    values = {}
    unused = set(added)
    for t in targets:
        fit = fits.get(t.layer.node)
        if fit is None or fit.theta is None:
            continue
        weight, bias = t.layer.arrays(fit.theta)
        values[t.layer.weight] = weight
        if bias is not None:
            values[t.layer.bias] = bias
            unused.discard(t.layer.bias)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    for node in out.graph.node:
        if len(node.input) > 2 and node.input[2] in unused:
            del node.input[2]
    keep = [i for i in out.graph.initializer if i.name not in unused]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


def _layer_record(t: Target, fit) -> dict:
    return {"node": t.layer.node, "op": t.layer.op, "groups": t.layer.groups, "sink": t.sink,
            "refit": fit.theta is not None, "lambda": fit.lam,
            "held_error_before": _finite(fit.error_before),
            "held_error_after": _finite(fit.error_after)}


def _finite(value: float) -> float | None:
    """A relative error for the JSON report; None where there were no rows to measure it."""
    return round(value, 6) if np.isfinite(value) else None
