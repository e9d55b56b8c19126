"""The largest part of a graph that onnxruntime can run, for graphs it cannot run whole.

A node onnxruntime has no CPU kernel for (a TensorRT plugin such as EfficientNMS_TRT, any
custom-domain layer) cannot run in the oracle. The graph is cut before such nodes: every node
that depends on one is dropped too, and the tensors the dropped part reads from the rest become
outputs. Verification (and normalisation, which runs the model to learn shapes) works on that
part; `Coverage` says exactly which tensors were compared and which nodes never ran. The
analysis blocks the channels of the dropped part (units.py), so no slice lies where no proof
reaches, and `unproven_slices` checks that it stayed so. What the oracle can run decides what
may be sliced: analysis/units.py and analysis/normalize.py import this module lazily, an edge
against the stage order (this module imports no stage).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx

from onnxprune.model.graph import graph_inputs, outer_reads

_STANDARD = ("", "ai.onnx")


@functools.cache
def _cpu_kernels() -> frozenset[tuple[str, str]] | None:
    """(domain, op type) of every kernel onnxruntime's CPU provider registers (None if this
    onnxruntime does not list them)."""
    try:
        from onnxruntime.capi import _pybind_state

        kernels = _pybind_state.get_all_opkernel_def()
    except (ImportError, AttributeError):
        return None
    return frozenset((k.domain, k.op_name) for k in kernels
                     if k.provider == "CPUExecutionProvider")


# where onnxruntime cannot list its kernels: the domains it has kernels in
_ORT_DOMAINS = ("ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc")


def runs_in_onnxruntime(node: onnx.NodeProto,
                        functions: frozenset[tuple[str, str]] = frozenset()) -> bool:
    """Whether the oracle's onnxruntime (CPU) can execute `node`: a standard op (onnxruntime
    reports the rare unsupported one itself), an op with a CPU kernel, or one of the model's
    own functions, given as (domain, name) pairs."""
    if node.domain in _STANDARD or (node.domain, node.op_type) in functions:
        return True
    kernels = _cpu_kernels()
    if kernels is None:
        return node.domain in _ORT_DOMAINS
    return (node.domain, node.op_type) in kernels


@dataclass(frozen=True)
class NodeRef:
    name: str
    op_type: str
    domain: str

    def __str__(self) -> str:
        op = f"{self.domain}::{self.op_type}" if self.domain not in _STANDARD else self.op_type
        return f"{op} (node {self.name})"

    def as_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "domain": self.domain}


@dataclass(frozen=True)
class Coverage:
    """What the oracle compares: `proven_outputs` (the graph outputs it can compute and the
    tensors the dropped part reads); `unproven_nodes` never ran: `causes`, the nodes
    onnxruntime cannot run, and every node after them."""
    proven_outputs: tuple[str, ...]
    unproven_nodes: tuple[NodeRef, ...] = ()
    causes: tuple[NodeRef, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.unproven_nodes

    def as_dict(self) -> dict:
        return {"proven_outputs": list(self.proven_outputs),
                "unproven_nodes": [n.as_dict() for n in self.unproven_nodes],
                "not_runnable": [n.as_dict() for n in self.causes]}

    def summary(self) -> str:
        """One line for the human summary ("" when the oracle covers the whole graph)."""
        if self.complete:
            return ""
        causes = ", ".join(str(n) for n in self.causes)
        after = len(self.unproven_nodes) - len(self.causes)
        return (f"oracle covers the graph up to {', '.join(self.proven_outputs) or 'nothing'}; "
                f"not run: {causes}" + (f" and {after} node(s) after it" if after else ""))


def _ref(node: onnx.NodeProto) -> NodeRef:
    return NodeRef(node.name, node.op_type, node.domain)


def reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor `node` reads: its inputs and the names its subgraphs (If / Loop / Scan
    bodies) read from the enclosing graph, which do not appear in node.input."""
    return {n for n in node.input if n} | outer_reads(node)


def dropped_nodes(model: onnx.ModelProto) -> dict[int, int]:
    """Index of every node the oracle cannot run -> index of the node onnxruntime cannot run
    that it depends on (itself for those), nodes in topological order."""
    functions = frozenset((f.domain, f.name) for f in model.functions)
    dropped: dict[int, int] = {}
    cause_of: dict[str, int] = {}  # tensor computed by a dropped node -> its cause
    for index, node in enumerate(model.graph.node):
        if not runs_in_onnxruntime(node, functions):
            dropped[index] = index
        else:
            causes = [cause_of[name] for name in reads(node) if name in cause_of]
            if not causes:
                continue
            dropped[index] = min(causes)
        cause_of.update((o, dropped[index]) for o in node.output if o)
    return dropped


def coverage(model: onnx.ModelProto) -> Coverage:
    """What the oracle can compare on `model` (normalised: topologically sorted)."""
    dropped = dropped_nodes(model)
    outputs = [o.name for o in model.graph.output]
    if not dropped:
        return Coverage(tuple(outputs))
    nodes = model.graph.node
    made = {o for i, n in enumerate(nodes) if i not in dropped for o in n.output if o}
    read = [name for i in dropped for name in [*nodes[i].input, *sorted(outer_reads(nodes[i]))]
            if name in made]
    proven = [o for o in outputs if o in made] + read
    causes = sorted(set(dropped.values()))
    return Coverage(tuple(dict.fromkeys(proven)), tuple(_ref(nodes[i]) for i in dropped),
                    tuple(_ref(nodes[i]) for i in causes))


def restrict(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The part of `model` that computes `outputs`, which become its graph outputs; every real
    input stays (the oracle feeds the same inputs), unused initializers go."""
    needed, keep = set(outputs), []
    for node in reversed(model.graph.node):
        if needed & set(node.output):
            keep.append(node)
            needed |= reads(node)
    part = onnx.ModelProto()
    part.CopyFrom(model)
    graph = part.graph
    del graph.node[:]
    graph.node.extend(reversed(keep))
    infos = {vi.name: vi for vi in list(graph.value_info) + list(graph.output)}
    del graph.output[:]
    graph.output.extend(infos.get(name, onnx.ValueInfoProto(name=name)) for name in outputs)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    real = {i.name for i in graph_inputs(model)}
    inputs = [i for i in graph.input if i.name in real or i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
    return part


def unproven_slices(model: onnx.ModelProto, sliced: Iterable[str]) -> list[str]:
    """Sliced initializers that a node outside the runnable part reads: no proof covers them."""
    nodes = model.graph.node
    read = {name for i in dropped_nodes(model) for name in reads(nodes[i])}
    return sorted(set(sliced) & read)


def runnable_pair(original: onnx.ModelProto, pruned: onnx.ModelProto, sliced: Iterable[str]):
    """(original, pruned, Coverage): both models cut to the part the oracle can run, or as
    they are when it can run all of `original`. A slice outside that part is refused."""
    from onnxprune.errors import VerificationError

    cover = coverage(original)
    if cover.complete:
        return original, pruned, cover
    outside = unproven_slices(original, sliced)
    if outside:
        raise VerificationError(f"initializer {outside[0]} was sliced but only nodes onnxruntime "
                                f"cannot run read it: {cover.summary()}")
    return (restrict(original, cover.proven_outputs), restrict(pruned, cover.proven_outputs),
            cover)
