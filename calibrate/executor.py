"""An ONNX graph executed as a torch.nn.Module (our own, not onnx2torch).

Construction compiles the graph once into a list of steps — (torch function, input slots,
output slots, slots to free, node index) — built by the op table in `calibrate.ops` with
every attribute decoded and its schema default filled in, so `forward` only moves tensors.
Floating-point initializers become registered Parameters (BatchNormalization running
statistics and Resize scales / roi become buffers), integer ones non-persistent buffers, all
under sanitised names (ONNX names contain '.', ':' and '/'); `params` / `buffers_by_name` map
the ONNX names to them. Intermediate values are dropped after their last consumer. The
module starts in eval mode; train() switches BatchNormalization to batch statistics (updating
the running buffers) and enables Dropout.

Shape values are int64 tensors on the module's device; ops that need python ints call
`.tolist()` (constant inputs are read once, at construction). Nodes whose inputs are all
constant shape values (integer initializers, `Constant` nodes) are evaluated at construction.

Hooks: `input_transforms[(node, slot)]` rewrites an input of a top-graph node before it runs
(the Fisher / GFP masks, BN recorders), `output_transforms[(node, slot)]` an output after it
ran (the BatchNorm re-parametrisation of `calibrate.reparam`); `node_io` lists what every
top-graph node reads (inputs, plus the outer names its subgraphs read) and writes.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from calibrate.onnxread import (
    UnsupportedModel,
    attributes,
    consumed,
    default_opset,
    initializer_roles,
    to_array,
)
from calibrate.ops import OPS, Spec, Unsupported

__all__ = ["NodeIO", "OnnxModule", "UnsupportedModel"]

_NONE = 0  # slot 0 always holds None: absent inputs and unused outputs point there
_NO_IMPL = {"Loop": "Loop is control flow with a data-dependent trip count",
            "Scan": "Scan is control flow over a sequence"}


class NodeIO(NamedTuple):
    """A top-graph node's op and value names; `reads` includes what its subgraphs read."""
    op_type: str
    domain: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]


class _Run:
    """Per-forward context handed to the steps that ask for it (BN, Dropout, If)."""

    __slots__ = ("module", "training", "transforms")

    def __init__(self, module: OnnxModule, transforms):
        self.module = module
        self.training = module.training
        self.transforms = transforms


class _Program:
    """One graph (the model's, or an If branch) compiled into steps over value slots."""

    def __init__(self):
        self.slots: dict[str, int] = {"": _NONE}
        self.sources: list[tuple[int, str, bool]] = []  # (slot, registered name, is_param)
        self.keys: dict[str, tuple[str, bool]] = {}  # ONNX name -> (registered name, param)
        self.input_names: list[str] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.steps: list[tuple] = []  # (fn, wants_run, in_slots, out_slots, free, index)

    def slot(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = len(self.slots)
        return self.slots[name]

    def run(self, run: _Run, initial) -> tuple:
        vals: list = [None] * len(self.slots)
        params, buffers = run.module._parameters, run.module._buffers
        for slot, key, is_param in self.sources:
            vals[slot] = params[key] if is_param else buffers[key]
        for slot, value in zip(self.inputs, initial):
            vals[slot] = value
        transforms = run.transforms
        for fn, wants_run, ins, outs, free, index in self.steps:
            args = [vals[i] for i in ins]
            hooks = transforms.get(index) if transforms else None
            if hooks:
                for slot, transform in hooks[0]:
                    args[slot] = transform(args[slot])
            result = fn(run, *args) if wants_run else fn(*args)
            if hooks and hooks[1]:
                result = _transform_outputs(result, hooks[1])
            if isinstance(result, torch.Tensor):
                vals[outs[0]] = result
            else:
                for o, value in zip(outs, result):
                    vals[o] = value
            for i in free:
                vals[i] = None
        return tuple(vals[i] for i in self.outputs)


class OnnxModule(torch.nn.Module):
    """Runs an ONNX model in torch: differentiable, trainable, device-movable."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        self.opset = default_opset(model)
        self._names: dict[str, tuple[str, bool]] = {}  # ONNX name -> (registered name, param)
        self._taken: set[str] = set()
        self._folded: set[int] = set()  # node indices evaluated at construction
        self.input_transforms: dict[tuple[int, int], Callable] = {}
        self.output_transforms: dict[tuple[int, int], Callable] = {}
        self.node_io: list[NodeIO] = []
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        self._program = self._compile(graph, outer=None, top=True)
        self.eval()  # an ONNX graph is an inference graph: train() opts in to batch statistics

    # ------------------------------------------------------------------ public interface

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        return {name: self._parameters[key] for name, (key, is_param) in self._names.items()
                if is_param}

    @property
    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, (key, is_param) in self._names.items():
            value = None if is_param else self._buffers.get(key)
            if value is not None and value.is_floating_point():
                out[name] = value
        return out

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        values = list(args)
        if len(values) > len(self.input_names):
            raise TypeError(f"{len(values)} inputs given, the model has {len(self.input_names)}")
        for name in self.input_names[len(values):]:
            if name not in kwargs:
                raise TypeError(f"missing model input {name!r}")
            values.append(kwargs.pop(name))
        if kwargs:
            raise TypeError(f"unknown model inputs {sorted(kwargs)}")
        values = [v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in values]
        return self._program.run(_Run(self, self._transforms_by_node()), values)

    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` whose initializers hold this module's current values."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        current = {**self.buffers_by_name, **self.params}
        for init in out.graph.initializer:
            if init.name not in current:
                continue
            value = current[init.name].detach().cpu()
            if tuple(value.shape) != tuple(init.dims):
                raise ValueError(f"initializer {init.name!r}: the module holds shape "
                                 f"{tuple(value.shape)}, the model {tuple(init.dims)}")
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(numpy_helper.from_array(value.numpy().astype(dtype, copy=False),
                                                  init.name))
        return out

    # ------------------------------------------------------------------ construction

    def _transforms_by_node(self) -> dict[int, tuple[list, list]]:
        """node index -> ([(input slot, transform)], [(output slot, transform)])."""
        if not self.input_transforms and not self.output_transforms:
            return {}
        by_node: dict[int, tuple[list, list]] = {}
        for side, transforms in enumerate((self.input_transforms, self.output_transforms)):
            for (index, slot), transform in transforms.items():
                if index in self._folded:
                    raise ValueError(f"transform on node {index}, which only reads constants "
                                     f"and was evaluated at construction")
                by_node.setdefault(index, ([], []))[side].append((slot, transform))
        return by_node

    def _compile(self, graph: onnx.GraphProto, outer: set[str] | None, top: bool) -> _Program:
        if graph.sparse_initializer:
            raise UnsupportedModel(f"sparse initializer {graph.sparse_initializer[0].values.name!r}"
                                   f" is not supported")
        prog = _Program()
        consts: dict[str, np.ndarray] = {}  # build-time values (initializers, Constants)
        foldable: set[str] = set()  # constant shape values: nodes reading only these fold
        roles = initializer_roles(graph) if top else {}
        read = consumed(graph)
        for init in graph.initializer:
            value = to_array(init)
            consts[init.name] = value
            kind = roles.get(init.name, "param") if top else "buffer"
            self._add_const(prog, init.name, value, kind, top)
            if not np.issubdtype(value.dtype, np.floating):
                foldable.add(init.name)
        if top:
            for inp in graph.input:
                if inp.name not in consts:
                    prog.input_names.append(inp.name)
                    prog.inputs.append(prog.slot(inp.name))
        local = set(prog.slots) | {i.name for i in graph.input}
        outer_refs: list[str] = []
        for index, node in enumerate(graph.node):
            for name in node.input:
                if name and name not in local:
                    if outer is None or name not in outer:
                        raise UnsupportedModel(f"{node.op_type} node {node.name!r} reads "
                                               f"{name!r}, which nothing before it defines")
                    if name not in outer_refs:
                        outer_refs.append(name)
                        prog.input_names.append(name)
                        prog.inputs.append(prog.slot(name))
            used = [bool(o) and o in read for o in node.output]
            spec = self._spec(node, consts, used, prog.keys, local | (outer or set()))
            fn = _build(spec)
            if top:
                self.node_io.append(NodeIO(node.op_type, node.domain, tuple(node.input) + tuple(
                    spec.extra.get("outer", [])), tuple(node.output)))
            if _can_fold(node, fn, foldable):
                self._fold(prog, node, index if top else -1, fn, consts, foldable, top)
            else:
                ins = [prog.slot(n) if n else _NONE for n in node.input]
                ins += [prog.slot(n) for n in spec.extra.get("outer", [])]
                outs = [prog.slot(o) if o and u else _NONE for o, u in zip(node.output, used)]
                prog.steps.append((fn, getattr(fn, "wants_run", False), tuple(ins), tuple(outs),
                                   (), index if top else -1))
            local.update(o for o in node.output if o)
        for out in graph.output:
            if out.name not in local and outer is not None and out.name in outer:
                prog.input_names.append(out.name)  # a branch returning an outer value
                prog.inputs.append(prog.slot(out.name))
                local.add(out.name)
            if out.name not in local:
                raise UnsupportedModel(f"graph output {out.name!r} is not produced by any node")
            prog.outputs.append(prog.slot(out.name))
        _plan_frees(prog)
        return prog

    def _spec(self, node, consts, used, keys, visible) -> Spec:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModel(f"{node.op_type} node {node.name!r}: custom domain "
                                   f"{node.domain!r} has no torch implementation")
        since, attrs = attributes(node, self.opset)
        spec = Spec(node=node, attrs=attrs, since=since,
                    consts=[consts.get(n) if n else None for n in node.input],
                    outputs_used=used,
                    buffer_slots=frozenset(i for i, n in enumerate(node.input)
                                           if n in keys and not keys[n][1]))

        def compile_branch(graph: onnx.GraphProto) -> _Program:
            sub = self._compile(graph, outer=visible, top=False)
            outer = spec.extra.setdefault("outer", [])
            outer.extend(n for n in sub.input_names if n not in outer)
            return sub

        spec.compile = compile_branch
        return spec

    def _fold(self, prog, node, index, fn, consts, foldable, top) -> None:
        args = [self._const_tensor(prog, n) if n else None for n in node.input]
        with torch.no_grad():
            result = fn(*args)
        results = [result] if isinstance(result, torch.Tensor) else list(result)
        for name, value in zip(node.output, results):
            if name and value is not None:
                array = value.numpy()
                consts[name] = array
                foldable.add(name)
                self._add_const(prog, name, array, "buffer", top)
        self._folded.add(index)

    def _const_tensor(self, prog, name):
        key, is_param = prog.keys[name]
        return self._parameters[key] if is_param else self._buffers[key]

    def _add_const(self, prog: _Program, name: str, value: np.ndarray, kind: str,
                   top: bool) -> None:
        """Register an initializer / constant value ("param" or "buffer"); only the top
        graph's names are public (an If branch may reuse a name)."""
        tensor = torch.from_numpy(np.array(value, copy=True))
        floating = tensor.is_floating_point()
        key = self._register_name(name)
        is_param = kind == "param" and floating and tensor.numel() > 1
        if is_param:
            self.register_parameter(key, torch.nn.Parameter(tensor))
        else:
            self.register_buffer(key, tensor, persistent=floating)
        prog.keys[name] = (key, is_param)
        if top:
            self._names[name] = (key, is_param)
        prog.sources.append((prog.slot(name), key, is_param))

    def _register_name(self, name: str) -> str:
        base = "v_" + re.sub(r"[^0-9A-Za-z_]", "_", name)
        key, n = base, 1
        while key in self._taken:
            key, n = f"{base}_{n}", n + 1
        self._taken.add(key)
        return key


# ---------------------------------------------------------------------- helpers

def _build(spec: Spec) -> Callable:
    node = spec.node
    where = f"{node.op_type} node {node.name!r}"
    if node.op_type in _NO_IMPL:
        raise UnsupportedModel(f"{where}: {_NO_IMPL[node.op_type]}, not supported")
    builder = OPS.get(node.op_type)
    if builder is None:
        raise UnsupportedModel(f"{where}: op {node.op_type} has no torch implementation")
    try:
        return builder(spec)
    except Unsupported as exc:
        raise UnsupportedModel(f"{where}: {exc}") from None


def _transform_outputs(result, hooks: list):
    single = isinstance(result, torch.Tensor)
    values = [result] if single else list(result)
    for slot, transform in hooks:
        values[slot] = transform(values[slot])
    return values[0] if single else tuple(values)


def _can_fold(node: onnx.NodeProto, fn: Callable, foldable: set[str]) -> bool:
    """Constant nodes and pure functions of constant shape values run once, at construction."""
    graphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if getattr(fn, "wants_run", False) or any(a.type in graphs for a in node.attribute):
        return False
    return all(not name or name in foldable for name in node.input)


def _plan_frees(prog: _Program) -> None:
    """Free every produced value after its last reader (graph outputs are kept)."""
    keep = set(prog.outputs) | {s for s, _, _ in prog.sources} | {_NONE}
    last: dict[int, int] = {}
    for i, (_, _, ins, outs, _, _) in enumerate(prog.steps):
        for slot in outs:
            last.setdefault(slot, i)
        for slot in ins:
            last[slot] = i
    for slot in prog.inputs:
        last.setdefault(slot, -1)
    frees: list[list[int]] = [[] for _ in prog.steps]
    for slot, i in last.items():
        if slot not in keep and i >= 0:
            frees[i].append(slot)
    for i, step in enumerate(prog.steps):
        free = frees[i] + ([_NONE] if _NONE in step[3] else [])
        prog.steps[i] = step[:4] + (tuple(free),) + step[5:]
