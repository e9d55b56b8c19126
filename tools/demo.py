"""The demo: export a ResNet-18 (random weights: no pretrained weights can be downloaded here),
analyse it, prune it to half its feature-map memory with the CLI, and time both in onnxruntime.

    python tools/demo.py [--out demo-out] [--model resnet18] [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "onnxprune", *args]
    print("$ onnxprune " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="folder for the models and report")
    parser.add_argument("--model", default="resnet18", help="a torchvision model name")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model")
    args = parser.parse_args()

    from models.zoo import Exporter, export
    from onnxprune.bench.onnxruntime import latency_interleaved

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source, pruned, report = out / f"{args.model}.onnx", out / f"{args.model}.pruned.onnx", out / "report.json"
    if not source.exists():
        print(f"exporting torchvision {args.model} (random weights, TorchScript exporter) -> {source}")
        export(args.model, Exporter.TORCHSCRIPT, source)
    _cli("analyze", str(source))
    _cli(str(source), "--target-mem", "0.5", "-o", str(pruned), "--report", str(report))
    record = json.loads(report.read_text())
    slow, fast = latency_interleaved([source, pruned], runs=args.runs, warmup=3)
    print(f"\nonnxruntime CPU, batch 1, median of {args.runs} interleaved runs:")
    print(f"  original {slow.median_ms:8.2f} ms   pruned {fast.median_ms:8.2f} ms   "
          f"speed-up {slow.median_ms / fast.median_ms:.2f}x "
          f"(MACs ideal {1 / record['ratio']['macs']:.2f}x)")
    print(f"  report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
