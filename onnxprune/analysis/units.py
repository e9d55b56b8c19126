"""Channel units: per-channel union-find over every tensor's and initializer axis's channels.

Every channel space (a tensor's channel axis, or an initializer axis a rule declared) gets a
range of node ids; the rules' links become edges; a connected component is a unit, the
smallest set of channels that must go together. A component that touches a graph input or
output, an op without a rule, or a channel layout a rule could not describe is blocked, and
keeps every reason so that `onnxprune analyze` can show it.

A rule that raises is a bug in onnxprune, not a property of the model. With ONNXPRUNE_DEBUG=1
(tests set it) the exception propagates; otherwise the node's channels are blocked with a
*rule error*, which Channels keeps apart from the structural reasons (`rule_errors`,
`rule_error_reasons`) so that reports can say which blocks are bugs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx

from onnxprune.analysis.context import Ctx, Space, static_shapes
from onnxprune.analysis.flow import Block, Fixup, Flow, Key, ParamKey, Role, param_key, tensor_key
from onnxprune.analysis.masking import keeps_zero
from onnxprune.analysis.rules import find_rule, op_name
from onnxprune.analysis.rules.contrib import standard_op_type
from onnxprune.analysis.rules.linear import ACTIVATION_PRODUCT
from onnxprune.analysis.rules.quant import through_dequantize
from onnxprune.analysis.unionfind import components
from onnxprune.errors import first_line
from onnxprune.model.graph import graph_inputs, opset, outer_reads

_LOG = logging.getLogger(__name__)


@dataclass
class SpaceInfo:
    key: Key
    offset: int
    size: int
    axis: int
    role: Role | None = None  # for initializer axes: how surgery reports the slice


@dataclass(frozen=True)
class RuleError:
    """A rule raised on a node: a bug in onnxprune, not a property of the model."""
    node: str
    op_type: str
    message: str  # "ExcType: first line of the message"

    @property
    def reason(self) -> str:
        return f"rule error in {self.op_type} node {self.node}: {self.message}"

    def as_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "message": self.message}


@dataclass
class Channels:
    """Result of the channel analysis of one normalised model."""
    model: onnx.ModelProto
    spaces: dict[Key, SpaceInfo]
    labels: np.ndarray                 # component id (0..K-1) of every channel node
    blocked: np.ndarray                # bool per component
    reasons: dict[int, list[str]]      # component -> distinct structural blocking reasons
    fixups: list[tuple[int, Fixup]] = field(default_factory=list)  # (node index, fixup)
    rule_errors: list[RuleError] = field(default_factory=list)
    # component -> the rule errors (and their consequences) that blocked it
    rule_error_reasons: dict[int, list[str]] = field(default_factory=dict)
    # reshape -> which other axis it maps (rules/reshape.best_axis): attention heads
    coarse_reshapes: Mapping[str, int] = field(default_factory=dict)
    # per component: summed by a product of two activations (head dims), so its producer
    # and per-channel slices are role `mask` (Flow.mask); and the (node, input slot) of
    # each such product, where calibration puts their Fisher masks
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    mask_sites: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_components(self) -> int:
        return len(self.blocked)

    def nodes(self, key: Key) -> np.ndarray:
        info = self.spaces[key]
        return np.arange(info.offset, info.offset + info.size)


class _Mark(NamedTuple):
    """Channels `idx` of space `key` (None: all of them) are blocked for `reason`."""
    key: Key
    reason: str
    idx: np.ndarray | None = None
    rule_error: bool = False  # the reason is a rule error or a consequence of one


class _Builder:
    def __init__(self, model: onnx.ModelProto, per_index_groups: frozenset[str],
                 coarse_reshapes: Mapping[str, int], head_dims: bool = False):
        self.model = model
        self.spaces: dict[Key, SpaceInfo] = {}
        self.size = 0
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.blocks: list[_Mark] = []
        self.opaque: dict[str, str] = {i.name: "graph input" for i in graph_inputs(model)}
        self.opaque_errors: set[str] = set()  # opaque tensors whose reason is a rule error
        self.opaque_axis: dict[str, int] = {}
        self.foreign_reads: list[tuple[str, str, bool]] = []  # (initializer, where, rule error)
        self.fixups: list[tuple[int, Fixup]] = []
        self.rule_errors: list[RuleError] = []
        self.masked: list[str] = []  # tensors a product of two activations sums (Flow.mask)
        self.mask_sites: list[tuple[int, int]] = []
        self.zero_breakers: dict[str, str] = {}  # tensor -> the node that makes it from zeros
        self.ctx = Ctx(model, opset(model), self.space_of, per_index_groups, coarse_reshapes,
                       head_dims)

    def new_space(self, key: Key, axis: int, size: int, role: Role | None = None) -> SpaceInfo:
        if key not in self.spaces:
            self.spaces[key] = SpaceInfo(key, self.size, int(size), axis, role)
            self.size += int(size)
        return self.spaces[key]

    def space_of(self, name: str) -> Space | None:
        """None for a scalar, and for a tensor of unknown shape (only after a node onnxruntime
        cannot run, whose readers are blocked: see `_analyse`)."""
        key = tensor_key(name)
        if key not in self.spaces:
            rank = len(self.ctx.shapes.get(name, ()))
            if rank == 0:
                return None
            axis = self.opaque_axis.get(name, 1 if rank >= 2 else 0)
            self.new_space(key, axis, self.ctx.shape(name)[axis])
            reason = self.opaque.get(name, "no rule declared its channels")
            self.blocks.append(_Mark(key, reason, rule_error=name in self.opaque_errors))
        info = self.spaces[key]
        return Space(info.axis, info.size)

    def apply(self, index: int, node: onnx.NodeProto, result: Flow | Block | RuleError) -> None:
        where = f"{op_name(node)} {node.name}"
        if isinstance(result, RuleError):
            self.rule_errors.append(result)
            self._block_node(node, result.reason, rule_error=True)
            return
        if isinstance(result, Flow):  # declarations on a weight stored quantized: its data
            result = through_dequantize(result, self.ctx)
        if isinstance(result, Flow) and not self._fits(result):
            result = Block("its channel map does not fit the tensor shapes")
        if isinstance(result, Block):
            self._block_node(node, f"{where}: {result.reason}")
            return
        for name, (axis, size) in result.outputs.items():
            self.new_space(tensor_key(name), axis, size)
        for decl in result.params:
            dim = self.ctx.shape(decl.initializer)[decl.axis]
            self.new_space(param_key(decl.initializer, decl.axis), decl.axis, dim, decl.role)
        for a, a_idx, b, b_idx in result.links:
            self.edges.append((self.spaces[a].offset + a_idx, self.spaces[b].offset + b_idx))
        self.blocks.extend(_Mark(key, f"{where}: {reason}", idx)
                           for key, reason, idx in result.blocks)
        for name in node.input:
            if self.ctx.is_const(name) and name not in result.consts:
                self.foreign_reads.append((name, where, False))
        if result.fixup is not None:
            self.fixups.append((index, result.fixup))
        for name in result.masks:
            self.masked.append(name)
            self.mask_sites.append((index, list(node.input).index(name)))
        if self.ctx.head_dims and not keeps_zero(node, result, self.ctx):  # only masks need it
            self.zero_breakers.update((name, where) for name in result.outputs)

    def _fits(self, flow: Flow) -> bool:
        """Every linked index lies inside its space (a malformed graph must not slip by)."""
        sizes: dict[Key, int] = {tensor_key(n): size for n, (_, size) in flow.outputs.items()}
        for name, (axis, size) in flow.outputs.items():
            shape = self.ctx.shapes.get(name)
            if shape is None or not 0 <= axis < len(shape) or shape[axis] != size:
                return False
        for decl in flow.params:
            size = self.ctx.shape(decl.initializer)[decl.axis]
            sizes[param_key(decl.initializer, decl.axis)] = size
        for a, a_idx, b, b_idx in flow.links:
            for key, idx in ((a, a_idx), (b, b_idx)):
                known = self.spaces.get(key)
                size = known.size if known else sizes.get(key)
                if size is None or (len(idx) and (idx.min() < 0 or idx.max() >= size)):
                    return False
        return True

    def _block_node(self, node: onnx.NodeProto, reason: str, rule_error: bool = False) -> None:
        for name in list(node.input) + sorted(outer_reads(node)):
            if not name:
                continue
            if self.ctx.is_const(name):
                self.foreign_reads.append((name, reason, rule_error))
            elif self.ctx.space(name) is not None:
                self.blocks.append(_Mark(tensor_key(name), reason, rule_error=rule_error))
        axis = self._input_axis(node)
        for name in node.output:
            if name:
                self.opaque[name] = f"output of {reason}"
                if rule_error:
                    self.opaque_errors.add(name)
                if axis is not None and len(self.ctx.shapes.get(name, ())) == axis[1]:
                    self.opaque_axis[name] = axis[0]

    def _input_axis(self, node: onnx.NodeProto) -> tuple[int, int] | None:
        """(channel axis, rank) of the first activation input: a blocked node's outputs of the
        same rank are assumed to keep that layout, so later rules do not misread NLC tensors."""
        for name in node.input:
            key = tensor_key(name)
            if key in self.spaces:
                return self.spaces[key].axis, len(self.ctx.shape(name))
        return None

    def finish(self) -> Channels:
        for out in self.model.graph.output:
            if self.ctx.space(out.name) is not None:
                self.blocks.append(_Mark(tensor_key(out.name), "graph output"))
        params_by_init: dict[str, list[ParamKey]] = {}
        for key in self.spaces:
            if isinstance(key, ParamKey):
                params_by_init.setdefault(key.initializer, []).append(key)
        for read, where, rule_error in self.foreign_reads:
            dq = self.ctx.dequantized.get(read)  # a weight stored quantized: its initializers
            names = [read] if dq is None else [dq.data, dq.scale, dq.zero_point]
            for name, key in ((n, k) for n in names for k in params_by_init.get(n, [])):
                reason = f"initializer {name} is also read by {where}"
                self.blocks.append(_Mark(key, reason, rule_error=rule_error))
        return self._components()

    def _masked(self, labels: np.ndarray) -> np.ndarray:
        """Components summed with no weight; those that also pass a node that does not map
        zero to zero are blocked: zeroing their producers would not be a masking."""
        masked = np.zeros(labels.max() + 1 if self.size else 0, dtype=bool)
        for name in self.masked:
            info = self.spaces[tensor_key(name)]
            masked[labels[info.offset:info.offset + info.size]] = True
        for name, where in self.zero_breakers.items():
            info = self.spaces[tensor_key(name)]
            if masked[labels[info.offset:info.offset + info.size]].any():
                self.blocks.append(_Mark(tensor_key(name), f"{where} does not map zero to zero, "
                                         "so zeroing the producers of channels that a product "
                                         "of two activations sums is not a masking"))
        return masked

    def _components(self) -> Channels:
        a = np.concatenate([e[0] for e in self.edges]) if self.edges else np.zeros(0, np.int64)
        b = np.concatenate([e[1] for e in self.edges]) if self.edges else np.zeros(0, np.int64)
        _, labels = np.unique(components(self.size, a, b), return_inverse=True)
        masked = self._masked(labels)
        blocked = np.zeros(labels.max() + 1 if self.size else 0, dtype=bool)
        reasons: dict[int, list[str]] = {}
        errors: dict[int, list[str]] = {}
        for mark in self.blocks:
            info = self.spaces[mark.key]
            nodes = labels[info.offset:info.offset + info.size]
            comps = np.unique(nodes if mark.idx is None else nodes[mark.idx])
            blocked[comps] = True
            found = errors if mark.rule_error else reasons
            for comp in comps.tolist():
                if mark.reason not in found.setdefault(comp, []):
                    found[comp].append(mark.reason)
        return Channels(self.model, self.spaces, labels, blocked, reasons, self.fixups,
                        self.rule_errors, errors, self.ctx.coarse_reshapes, masked,
                        self.mask_sites)


def find_channels(model: onnx.ModelProto, head_dims: bool = False) -> Channels:
    """Run every node's rule over a normalised model (topologically sorted, static shapes).

    Two choices are revisited, and the analysis is run again until neither changes:
    - grouped convs first lose whole groups; where that merges all of a conv's groups into one
      unit (e.g. ResNeSt's radix sum ties group 0's channel j to group 1's), channel j of every
      group becomes the unit for those convs;
    - a reshape maps channels on its finest axis; where a product of two activations then
      blocks them (attention: q @ kT sums over the head dim), it maps them on its next axis
      (the heads) instead. Each pass only adds names or raises a reshape's `skip`, which
      stops at its rank, so this ends (timm's DeiT and Swin take two passes, separate q / k /
      v projections three).
    With `head_dims`, reshapes keep their finest axis and q @ kT's summed head dims are
    masked units instead (rules/linear.py, `Flow.mask`).
    """
    per_index: frozenset[str] = frozenset()
    coarse: dict[str, int] = {}
    while True:
        channels = _analyse(model, per_index, coarse, head_dims)
        more_index = per_index | frozenset(_collapsed_group_convs(channels))
        more_coarse = coarse if head_dims else {**coarse, **_reshapes_to_remap(channels)}
        if (more_index, more_coarse) == (per_index, coarse):
            return channels
        per_index, coarse = more_index, more_coarse


def _analyse(model: onnx.ModelProto, per_index_groups: frozenset[str],
             coarse_reshapes: Mapping[str, int] | None = None,
             head_dims: bool = False) -> Channels:
    from onnxprune.verify.partial import dropped_nodes

    builder = _Builder(model, per_index_groups, coarse_reshapes or {}, head_dims)
    nodes = model.graph.node
    unverifiable = dropped_nodes(model)  # node -> the node the oracle cannot run before it
    for index, node in enumerate(nodes):
        cause = unverifiable.get(index)
        result = (_run_rule(node, builder.ctx) if cause is None
                  else _unverifiable(node, None if cause == index else nodes[cause]))
        builder.apply(index, node, result)
    return builder.finish()


def _unverifiable(node: onnx.NodeProto, cause: onnx.NodeProto | None) -> Block:
    """The oracle cannot run this node (verify/partial.py), so no slice may touch it; `cause`
    is the node it runs after that onnxruntime cannot run (None: this one)."""
    if cause is not None:
        return Block(f"runs after {op_name(cause)} (node {cause.name}), which onnxruntime "
                     "cannot run, so the oracle cannot check it")
    if find_rule(node) is None:
        return Block(f"no channel rule for {op_name(node)}, and onnxruntime cannot run it")
    return Block(f"onnxruntime cannot run {op_name(node)}, so the oracle cannot check it")


def _collapsed_group_convs(channels: Channels) -> Iterator[str]:
    ctx = Ctx(channels.model, opset(channels.model), lambda name: None)
    for node in channels.model.graph.node:
        if (standard_op_type(node) != "Conv"  # FusedConv too; a plugin named Conv is not
                or tensor_key(node.output[0]) not in channels.spaces):
            continue
        group, weight_shape = ctx.attrs(node).get("group", 1), ctx.shape(node.input[1])
        if group > 1 and weight_shape[1] > 1:
            labels = channels.labels[channels.nodes(tensor_key(node.output[0]))]
            if len(np.unique(labels)) == 1 and not channels.blocked[labels[0]]:
                yield node.name


def _reshapes_to_remap(channels: Channels) -> dict[str, int]:
    """Reshape -> next `skip`, for the Reshapes whose output channels a product of two
    activations blocks, or that were remapped and left all their channels in one unit (the q /
    k / v axis of a fused projection, which q @ kT and attn @ v tie together).

    Reshapes not remapped yet go first: a block can come from another operand's reshape (the
    heads of q and k meet the head dims of v in attn @ v), and only when every blocked one was
    remapped are they tried further. `skip` stops at the output's rank."""
    shapes = static_shapes(channels.model)
    found: dict[str, int] = {}
    for node in channels.model.graph.node:
        key = tensor_key(node.output[0]) if node.output else None
        if standard_op_type(node) != "Reshape" or key not in channels.spaces:
            continue
        skip = channels.coarse_reshapes.get(node.name, 0)
        comps = np.unique(channels.labels[channels.nodes(key)]).tolist()
        summed = any(r.endswith(ACTIVATION_PRODUCT) for c in comps
                     for r in channels.reasons.get(c, ()))
        collapsed = skip > 0 and len(comps) == 1 and channels.spaces[key].size > 1
        if (summed or collapsed) and skip < len(shapes.get(node.output[0], ())):
            found[node.name] = skip + 1
    fresh = {name: skip for name, skip in found.items() if skip == 1}
    return fresh or found


def _strict() -> bool:
    """Let a rule's exception propagate (tests, debugging): ONNXPRUNE_DEBUG=1, as in the CLI."""
    return os.environ.get("ONNXPRUNE_DEBUG", "") not in ("", "0")


def _run_rule(node: onnx.NodeProto, ctx: Ctx) -> Flow | Block | RuleError:
    rule = find_rule(node)
    if rule is None:  # keyed by (domain, op type): a custom op named "Conv" has no rule
        return Block(f"no channel rule for {op_name(node)}")
    unknown = [n for n in list(node.input) + list(node.output)
               if n and not ctx.is_const(n) and n not in ctx.shapes]
    if unknown:
        return Block(f"the shape of {unknown[0]} is unknown")
    try:
        return rule(node, ctx)
    except Exception as exc:  # a bug in the rule: its node blocks, marked as a rule error
        if _strict():
            raise
        _LOG.debug("rule %s failed on %s", node.op_type, node.name, exc_info=True)
        return RuleError(node.name, node.op_type, f"{type(exc).__name__}: {first_line(exc)}")
