"""What each graph output is, for losses and fidelity: a classifier (float [N, K], K ≥ 2, read
as probabilities when a Softmax produces it, else as logits) or anything else."""
from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class OutputKind:
    classifier: bool
    probabilities: bool   # the output is already softmax'ed


def output_kinds(model: onnx.ModelProto) -> list[OutputKind]:
    """One kind per graph output, from the static shapes of the analysed model."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    kinds = []
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        is_cls = len(dims) == 2 and dims[1].dim_value >= 2
        kinds.append(OutputKind(is_cls, is_cls and producers.get(out.name) == "Softmax"))
    return kinds


def first_classifier(kinds: list[OutputKind]) -> int | None:
    return next((i for i, k in enumerate(kinds) if k.classifier), None)
