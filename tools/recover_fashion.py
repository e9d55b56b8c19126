"""The recovery commands a user runs, on both Fashion-MNIST models, with and without labels.

    python tools/recover_fashion.py [--models resnet20,mobilenetv2_small] [--epochs 5]
                                    [--train-images 20000] [--target 0.5] [--out DIR]

For each model (models/fashion.py, trained and cached on first use) it writes `calib.npz`
(`--train-images` labelled training images, seeded) and runs exactly

    onnxprune MODEL --target-mem T --data calib.npz --finetune-epochs E            (labels)
    onnxprune MODEL --target-mem T --data calib.npz --finetune-epochs E --no-labels (distillation)

plus the same prune without fine-tuning, as a subprocess each, then scores every output on
the 10,000 test images in onnxruntime. Columns: top-1 of the original, of the pruned model
before fine-tuning and after each recovery; M and MACs ratios from the report; fine-tuning
steps and seconds; top-1 agreement with the original on the report's held-out samples.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str]) -> tuple[dict, float]:
    print("$ onnxprune " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxprune", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    report = args[args.index("--report") + 1]
    return json.loads(Path(report).read_text()), time.perf_counter() - start


def _run(model: Path, out: Path, tag: str, extra: list[str], args) -> tuple[dict, float]:
    return _cli([str(model), "--target-mem", str(args.target), "--data",
                 str(out / "calib.npz"), "-o", str(out / f"{tag}.onnx"),
                 "--report", str(out / f"{tag}.json"), *extra])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=Path("recover-out"))
    args = p.parse_args()

    from onnxprune.models.fashion import cached_fashion_model, evaluate_onnx
    from onnxprune.models.fashion_data import write_npz

    rows = []
    for name in args.models.split(","):
        out = (args.out / name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        model = cached_fashion_model(name, log=print)
        write_npz(out / "calib.npz", split="train", n=args.train_images, seed=0)
        base = evaluate_onnx(model)
        sliced, _ = _run(model, out, "oneshot", [], args)
        cells = [name, f"{100 * base:.2f}", f"{100 * evaluate_onnx(out / 'oneshot.onnx'):.2f}"]
        for tag, extra in (("labels", []), ("no-labels", ["--no-labels"])):
            report, seconds = _run(model, out, tag,
                                   ["--finetune-epochs", str(args.epochs), *extra], args)
            recovery = report["recovery"]
            cells += [f"{100 * evaluate_onnx(out / f'{tag}.onnx'):.2f}",
                      f"{100 * recovery['fidelity']['top1_agreement']:.1f}",
                      f"{recovery['finetune']['steps']} / {seconds:.0f} s"]
        cells += [f"{sliced['ratio']['mem']:.3f}", f"{sliced['ratio']['macs']:.3f}"]
        rows.append(cells)
    print(f"\n### --target-mem {args.target}, --finetune-epochs {args.epochs} on "
          f"{args.train_images} training images (test top-1 %, 10,000 images)\n")
    print("| model | original | pruned, no fine-tuning | labels: top-1 | agreement % | "
          "steps / time | no labels: top-1 | agreement % | steps / time | M | MACs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
