"""The demo: a ResNet-20 trained here on Fashion-MNIST, pruned to half its feature-map memory
with Group Fisher and fine-tuned, before / after: top-1, M, MACs, params, onnxruntime latency
at batch 1 and batch 32.

    python tools/demo.py [--out demo-out] [--epochs 2] [--finetune-steps 300] [--runs 30]
    python tools/demo.py --quick     # the same steps on a budget of seconds (the tests' run)

Needs the Debian package `dataset-fashion-mnist` (README's first command installs it). The
ResNet-20 is trained once (about 75 s per epoch on 2 idle cores) and cached; the pruning,
Fisher scoring and fine-tuning are one `onnxprune` command, printed as it runs. `--quick`
trains for 40 steps only (cached apart), scores and fine-tunes on 1,000 images (500 more are
held out) for 10 steps and evaluates on 1,000 test images: every step of the demo runs, in
about a minute on 2 cores, and its accuracy means little.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "onnxprune", *args]
    print("$ onnxprune " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="folder for the models and report")
    parser.add_argument("--epochs", type=int, default=2, help="ResNet-20 training epochs")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--train-images", type=int, default=20000,
                        help="labelled training images for scoring and fine-tuning")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model")
    parser.add_argument("--quick", action="store_true",
                        help="every step on a budget of seconds (see the module docstring)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.finetune_steps, args.train_images, args.runs = 1, 10, 1500, 5
    train_steps, test_images = (40, 1000) if args.quick else (None, None)

    from onnxprune.errors import UserError
    from onnxprune.models.fashion import cached_fashion_model, evaluate_onnx
    from onnxprune.models.fashion_data import write_npz

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        print(f"ResNet-20 on Fashion-MNIST, {args.epochs} epochs (trained once, then cached)",
              flush=True)
        source = cached_fashion_model("resnet20", epochs=args.epochs, log=print,
                                      max_steps=train_steps)
        data = out / "train.npz"
        write_npz(data, "train", args.train_images, seed=0)
    except UserError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    pruned, report = out / "resnet20.pruned.onnx", out / "report.json"
    _cli("analyze", str(source))
    _cli(str(source), "--target-mem", "0.5", "--data", str(data), "--criterion", "fisher",
         "--finetune-steps", str(args.finetune_steps), "--batch-size", "64",
         "-o", str(pruned), "--report", str(report))
    record = json.loads(report.read_text())
    acc = [evaluate_onnx(source, n=test_images), evaluate_onnx(pruned, n=test_images)]
    ratio = record["ratio"]
    print(f"\nbefore -> after ({test_images or 10000:,} test images; onnxruntime CPU, one "
          f"thread, median of {args.runs} interleaved runs)")
    print(f"  top-1     {100 * acc[0]:6.2f} % -> {100 * acc[1]:6.2f} %")
    for key, label in (("mem", "M"), ("macs", "MACs"), ("params", "params")):
        print(f"  {label:<9} {record['before'][key]:>9,} -> {record['after'][key]:>9,} "
              f"({ratio[key]:.3f})")
    before, after = bench_medians([source, pruned], args.runs)
    for batch in BATCHES:
        slow, fast = before[batch], after[batch]
        print(f"  batch {batch:<3} {slow:7.3f} ms -> {fast:7.3f} ms   speed-up "
              f"{slow / fast:.2f}x (MACs ideal {1 / ratio['macs']:.2f}x)")
    print(f"  report: {report}")
    return 0


def bench_medians(models: list, runs: int, warmup: int | None = None) -> list[dict[int, float]]:
    """Median ms of each model per batch size in BATCHES (1, and 32 where per-node overhead no
    longer hides the cut), by `onnxprune bench` in a fresh process (interleaved rounds, one
    thread; batch 32 on a symbolic-batch copy). tools/front_fashion.py times with it too."""
    paths = [str(Path(m).resolve()) for m in models]  # the command runs in ROOT
    command = [sys.executable, "-m", "onnxprune", "bench", *paths, "--batch",
               ",".join(map(str, BATCHES)), "--runs", str(runs), "--threads", "1", "--json"]
    if warmup is not None:
        command += ["--warmup", str(warmup)]
    done = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return [{b: m["results"][str(b)]["median_ms"] for b in BATCHES}
            for m in json.loads(done.stdout)["models"]]


if __name__ == "__main__":
    raise SystemExit(main())
