"""Every torchvision classification model through the CLI: internal errors are bugs.

    python tools/sweep_torchvision.py [--target 0.5] [--max-params 100e6] [--exporter torchscript]
                                      [--models swin_t,maxvit_t]

Each model (random weights, BatchNorm calibrated, see models/zoo.py) is exported once (cached)
and pruned with `python -m onnxprune MODEL --target-mem T`. A model either prunes (exit 0: the
oracle passed), or exits 2 with its reachable minimum (structure onnxprune will not guess at),
or fails (exit 1, or anything else): the last line counts each outcome.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torchvision  # noqa: E402

from onnxprune.models.zoo import Exporter, cached_model  # noqa: E402

SIZES = {"inception_v3": 299}  # models whose default input is not 224


def classification_models(max_params: float) -> list[str]:
    """Names whose published weights have at most `max_params` parameters (read from the
    weight metadata, so no model is built for it)."""
    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = torchvision.models.get_model_weights(name)
        params = min(w.meta.get("num_params", 0) for w in weights)
        if params <= max_params:
            names.append(name)
    return names


def prune_one(path: Path, target: float, folder: Path) -> tuple[int, str, float]:
    report = folder / "report.json"
    tick = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxprune", str(path), "--target-mem",
                           str(target), "-o", str(folder / "out.onnx"), "--report", str(report)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - tick
    if proc.returncode == 0:
        record = json.loads(report.read_text())
        detail = (f"M {record['ratio']['mem']:.3f}, oracle "
                  f"{record['verification']['max_relative_error']:.1e}")
    else:
        detail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
    return proc.returncode, detail, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--max-params", type=float, default=100e6)
    parser.add_argument("--exporter", default="torchscript", choices=[e.value for e in Exporter])
    parser.add_argument("--models", help="comma-separated subset of the classification models")
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else None
    counts = {"pruned": 0, "exit 2": 0, "failed": 0}
    print("| model | exit | result | s |\n|---|---|---|---|")
    for name in classification_models(args.max_params):
        if wanted is not None and name not in wanted:
            continue
        try:
            path = cached_model(name, Exporter(args.exporter), image_size=SIZES.get(name, 224))
        except Exception as exc:  # an export failure is torch's, not ours: report and go on
            print(f"| {name} | export failed | {type(exc).__name__}: {str(exc)[:100]} | |")
            continue
        with tempfile.TemporaryDirectory() as folder:
            code, detail, seconds = prune_one(path, args.target, Path(folder))
        counts["pruned" if code == 0 else "exit 2" if code == 2 else "failed"] += 1
        print(f"| {name} | {code} | {detail} | {seconds:.1f} |", flush=True)
    print(f"{sum(counts.values())} models: {counts['pruned']} pruned, {counts['exit 2']} exit 2 "
          f"(reachable minimum above the target), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
