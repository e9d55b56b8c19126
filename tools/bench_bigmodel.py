"""Peak memory of pruning a model over 2 GB, beside what merely loading it costs.

    python tools/bench_bigmodel.py [--gigabytes 2.2] [--target 0.5] [--folder DIR]

Builds the widened VGG of `models/big.py` (weights in external data) and runs, each as a fresh
process whose peak resident memory is read with getrusage:
- `onnx.load` of the model with its external data (the weights once, in protobuf);
- an onnxruntime CPU session of it (what deploying it costs);
- `onnxprune MODEL --target-mem T` (analysis, L1 scores, slicing, the exactness oracle in
  onnxruntime, and the streamed write of the output's external data).
The table gives peak RSS in GB and as a multiple of the weights' size; the goal is <= 2.5x.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from onnxprune.models.big import build, peak_rss, weight_bytes

_LOAD = "import onnx, sys; onnx.load(sys.argv[1])"
_ORT = ("import onnxruntime as ort, sys; "
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])")


def _row(label: str, command: list[str], size: int) -> str:
    start = time.perf_counter()
    code, peak = peak_rss(command)
    seconds = time.perf_counter() - start
    status = "" if code == 0 else f" (exit {code})"
    return (f"| {label}{status} | {peak / 1e9:.2f} | {peak / size:.2f}× | {seconds:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigabytes", type=float, default=2.2)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--folder", type=Path, default=None, help="where to build (default: a tmp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        model = build(Path(tmp) / "wide_vgg.onnx", args.gigabytes)
        size = weight_bytes(model)
        out = Path(tmp) / "pruned.onnx"
        rows = [
            _row("onnx.load (weights in memory)", [sys.executable, "-c", _LOAD, str(model)], size),
            _row("onnxruntime CPU session", [sys.executable, "-c", _ORT, str(model)], size),
            _row(f"onnxprune --target-mem {args.target}",
                 [sys.executable, "-m", "onnxprune", str(model), "--target-mem",
                  str(args.target), "-o", str(out)], size),
        ]
        pruned = weight_bytes(out) if out.exists() else 0
    print(f"\n### Widened VGG, {size / 1e9:.2f} GB of weights in external data "
          f"(pruned: {pruned / 1e9:.2f} GB)\n")
    print("| process | peak RSS GB | × weights | seconds |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
