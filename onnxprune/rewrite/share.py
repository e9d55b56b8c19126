"""Store identical initializers once in the pruned model.

Normalisation gives each user of a shared all-equal initializer (a folded zero bias that the
exporter deduplicated) its own copy, so that unrelated layers are not coupled through it
(`analysis/normalize.py`). Nothing shared them again: a timm cspdarknet53 pruned to half its
feature-map memory was 63.9 MB against 61.4 MB in. After slicing, copies of one width are
identical again, and so are other tensors (two zero biases of different widths cut to one
width): `reshare` keeps one of each.

Exact by construction: it runs after the oracle has proven the slice (`api.prune`), and a
merged initializer has the same dtype, shape and bytes as every tensor it replaces, so every
node reads the very values it read before and the proof carries over unchanged. What counts as
identical is decided once, by `analysis.cost.identical_tensors`, which the cost model also uses
to report params and weight bytes as the written file stores them.
"""
from __future__ import annotations

import onnx

from onnxprune.analysis.cost import identical_tensors


def reshare(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with initializers of identical dtype, shape and bytes merged into the first of
    them: node inputs (and reads from inside If / Loop / Scan bodies) are renamed. Changed in
    place and returned; copying would hold every weight twice. Lazy external tensors are read
    through memory maps, one at a time. Initializers named as graph inputs (overridable) or
    outputs keep their own tensor."""
    graph = model.graph
    fixed = {i.name for i in graph.input} | {o.name for o in graph.output}
    rows = [r for r, t in enumerate(graph.initializer) if t.name not in fixed]
    first = identical_tensors([graph.initializer[r] for r in rows])
    rename = {graph.initializer[rows[i]].name: graph.initializer[rows[f]].name
              for i, f in enumerate(first) if f != i}
    if not rename:
        return model
    _rename_reads(graph, rename)
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in rename:
            del graph.initializer[index]
    for index in reversed(range(len(graph.value_info))):
        if graph.value_info[index].name in rename:
            del graph.value_info[index]
    return model


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename node inputs in `graph` and in its nodes' subgraphs, where a subgraph does not
    define the name itself."""
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in rename:
                node.input[slot] = rename[name]
        for attr in node.attribute:
            subs = ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs)
            for sub in subs:
                own = {i.name for i in sub.input} | {i.name for i in sub.initializer}
                own |= {o for inner in sub.node for o in inner.output}
                inner_rename = {k: v for k, v in rename.items() if k not in own}
                if inner_rename:
                    _rename_reads(sub, inner_rename)
