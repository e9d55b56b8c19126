"""The structure of a graph, checked before any tool sees it: one clear line for a broken file.

Why first: shape inference, graphsurgeon and onnxruntime each meet a malformed graph in their
own way (a cycle was onnxruntime's "the graph is not acyclic" deep inside constant folding, an
internal error; a tensor written by two nodes went through with one of the writers silently
ignored). `check_structure` runs at the start of `normalize` and names the node or tensor.

What a valid graph is here: every tensor is written once (by one node, or as a graph input or
initializer); every name a node reads is defined (reads from inside its If / Loop / Scan
bodies included); graph outputs are defined and listed once; the nodes form a DAG. Nodes need
not be listed in topological order (normalisation sorts them), so cycles are found by a real
topological sort (Kahn), with subgraph reads of outer names counted as dependencies.
"""
from __future__ import annotations

from collections import deque

import onnx

from onnxprune.errors import UserError
from onnxprune.model.graph import outer_reads

_PREFIX = "not a valid model: "


def check_structure(model: onnx.ModelProto) -> None:
    """Raise UserError (one line naming the node or tensor) for a malformed main graph."""
    graph = model.graph
    producer = _producers(graph)
    reads = [_reads(node) for node in graph.node]
    _check_defined(graph, producer, reads)
    _check_outputs(graph)
    _check_acyclic(graph, producer, reads)


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node #{index}"


def _reads(node: onnx.NodeProto) -> list[str]:
    return [n for n in node.input if n] + sorted(outer_reads(node))


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the one node writing it (single static assignment)."""
    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer:
                first = producer[name]
                raise UserError(f"{_PREFIX}tensor {name!r} is written twice, by "
                                f"{_label(graph.node[first], first)} and {_label(node, index)}")
            if name in sources:
                raise UserError(f"{_PREFIX}{_label(node, index)} writes {name!r}, which is "
                                f"also a graph input or initializer")
            producer[name] = index
    return producer


def _check_defined(graph: onnx.GraphProto, producer: dict[str, int],
                   reads: list[list[str]]) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | set(producer)
    for index, (node, names) in enumerate(zip(graph.node, reads)):
        missing = [name for name in names if name not in known]
        if missing:
            raise UserError(f"{_PREFIX}{_label(node, index)} reads {missing[0]!r}, which "
                            f"nothing defines")
    for out in graph.output:
        if out.name not in known:
            raise UserError(f"{_PREFIX}graph output {out.name!r} is not computed by any node")


def _check_outputs(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for out in graph.output:
        if out.name in seen:
            raise UserError(f"{_PREFIX}graph output {out.name!r} is listed twice")
        seen.add(out.name)


def _check_acyclic(graph: onnx.GraphProto, producer: dict[str, int],
                   reads: list[list[str]]) -> None:
    """Kahn's topological sort; what it cannot order holds a cycle, which the message shows."""
    deps = [sorted({producer[n] for n in names if n in producer}) for names in reads]
    users: list[list[int]] = [[] for _ in deps]
    waiting = [len(d) for d in deps]
    for index, dep in enumerate(deps):
        for d in dep:
            users[d].append(index)
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    while ready:
        for user in users[ready.popleft()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    left = {i for i, w in enumerate(waiting) if w > 0}
    if left:
        cycle = _a_cycle(deps, left)
        path = " -> ".join(_label(graph.node[i], i) for i in cycle[:6])
        more = " -> ..." if len(cycle) > 6 else f" -> {_label(graph.node[cycle[0]], cycle[0])}"
        raise UserError(f"{_PREFIX}the graph has a cycle: {path}{more}")


def _a_cycle(deps: list[list[int]], left: set[int]) -> list[int]:
    """Nodes of one cycle among `left` (each has a dependency in `left`), producers first."""
    node, seen, path = min(left), {}, []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in left)
    return list(reversed(path[seen[node]:]))
