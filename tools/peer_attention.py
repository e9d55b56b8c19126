"""What onnxsim 0.8.1 and onnxprune can remove from exported vision transformers.

    python tools/peer_attention.py [--models deit_tiny_patch16_224,vit_small_patch16_224]
                                   [--fashion] [--sparsities 0.3,0.5,0.7,0.9]

For each file (timm models of models/other.py from both torch exporters; with `--fashion` the
trained Fashion-MNIST ViT of models/fashion.py), one Markdown row: the M (feature-map memory,
onnxprune's cost model) of onnxsim's `apply_structured_pruning` (channels, L2) and
`apply_attention_head_pruning` (whole heads of fused attention ops) at each sparsity, over the
original's; and onnxprune's prunable share of M and reachable minimum with whole heads and with
head dims (`--attention dims`), each group keeping 10 % and one `--round-to 8` unit.
onnxsim is optional (`pip install onnxsim==0.8.1`); a function that raises prints its error.
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx

from onnxprune.api import analyze
from onnxprune.config import AttentionUnits
from onnxprune.plan.planner import reachable_minimum

TIMM = ("deit_tiny_patch16_224", "vit_small_patch16_224", "swin_tiny_patch4_window7_224",
        "levit_128s")


def ours(model: onnx.ModelProto, attention: AttentionUnits) -> str:
    a = analyze(model, attention=attention)
    per_unit = np.bincount(a.channels.labels, weights=a.costs.per_node_mem(),
                           minlength=a.channels.n_components)
    mem = a.costs.costs().mem
    prunable = sum(per_unit[g.units].sum() for g in a.groups if not g.blocked) / mem
    floor = reachable_minimum(a.channels, a.groups, a.costs, 8, 0.9).mem / mem
    return f"{prunable:.1%} / {floor:.3f}"


def onnxsim_m(model: onnx.ModelProto, fn, sparsity: float, m0: float) -> str:
    try:
        return f"{analyze(fn(model, sparsity=sparsity)).costs.costs().mem / m0:.3f}"
    except Exception as exc:  # the peer's failure is a result, not ours to hide
        return f"error: {type(exc).__name__}"


def files(args) -> list[tuple[str, str]]:
    from onnxprune.models.other import build

    found = [(f"{name} ({exporter})", str(build(f"{name}-{exporter}")))
             for name in args.models.split(",") for exporter in ("torchscript", "dynamo")]
    if args.fashion:
        from onnxprune.models.fashion import cached_fashion_model

        found += [(f"Fashion vit_p4 ({e})", str(cached_fashion_model("vit_p4", exporter=e)))
                  for e in ("torchscript", "dynamo")]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(TIMM))
    p.add_argument("--fashion", action="store_true")
    p.add_argument("--sparsities", default="0.3,0.5,0.7,0.9")
    args = p.parse_args()
    import onnxsim

    sparsities = [float(s) for s in args.sparsities.split(",")]
    peers = (onnxsim.apply_structured_pruning, onnxsim.apply_attention_head_pruning)
    print(f"M after / before; onnxsim at sparsity {', '.join(map(str, sparsities))}\n")
    print("| model | onnxsim channels | onnxsim heads | onnxprune heads: prunable / min | "
          "onnxprune dims: prunable / min |\n|---|---|---|---|---|")
    for label, path in files(args):
        model = onnx.load(path)
        m0 = analyze(model).costs.costs().mem
        cells = [" / ".join(onnxsim_m(model, fn, s, m0) for s in sparsities) for fn in peers]
        cells += [ours(model, a) for a in AttentionUnits]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
