"""The recovery commands a user runs, on both Fashion-MNIST models, BN kept and BN folded.

    python tools/recover_fashion.py [--models resnet20,mobilenetv2_small] [--forms kept,folded]
        [--targets 0.7,0.5,0.3] [--finetune-targets 0.5] [--epochs 5] [--train-images 2000]
        [--schedules oneshot,gfp] [--out DIR]

For each model (models/fashion.py, trained and cached on first use), exported with
BatchNormalization kept and folded into the convolutions (`fold_bn`, what `torch.onnx.export`
of an eval-mode model gives), it writes `calib.npz` (`--train-images` labelled training images,
seeded) and runs, as a subprocess each, exactly

    onnxprune MODEL --target-mem T --data calib.npz --no-reconstruct   (the slice)
    onnxprune MODEL --target-mem T --data calib.npz                    (slice + refit)
    onnxprune MODEL --target-mem T --data calib.npz --finetune-epochs E [--no-labels]
              [--schedule gfp]                                        (fine-tuning)

then scores every output on the 10,000 test images in onnxruntime (onnxsim 0.8.1's pruning
and ridge at the same M, next to our no-training rows: tools/peer_onnxsim.py). Every run's
report is kept in --out and reused
(delete it to rerun). Columns: test top-1, M and MACs ratios, seconds, the candidate the
guard wrote and its held-out agreement.
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


def _cli(args: list[str], report: Path) -> dict:
    """Run onnxprune once (or reuse its report); the report gains `seconds` and `exit`."""
    if report.exists():
        return json.loads(report.read_text())
    print("$ onnxprune " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "onnxprune", *args, "--report", str(report)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    record = json.loads(report.read_text()) if run.returncode == 0 else {}
    record.update(seconds=seconds, exit=run.returncode, stderr=run.stderr.strip()[-400:])
    report.write_text(json.dumps(record))
    return record


def _row(record: dict, model_path: Path, evaluate) -> dict:
    if record.get("exit"):
        return {"top1": None, "error": record["stderr"].splitlines()[-1:]}
    rec = record.get("recovery") or {}
    fid = rec.get("fidelity") or {}
    if "top1" not in record:
        record["top1"] = evaluate(model_path)
    return {"top1": record["top1"], "M": record["ratio"]["mem"],
            "MACs": record["ratio"]["macs"], "seconds": record["seconds"],
            "chosen": rec.get("chosen"), "agreement": fid.get("top1_agreement"),
            "warnings": rec.get("warnings") or []}


def _runs(args) -> list[tuple[str, float, list[str]]]:
    """(tag, target, extra CLI flags) of every run of one model file."""
    runs = []
    for t in args.targets:
        runs += [("slice", t, ["--no-reconstruct"]), ("refit", t, [])]
    for t in args.finetune_targets:
        for schedule in args.schedules:
            for labels in (True, False):
                tag = f"ft-{schedule}-{'labels' if labels else 'nolabels'}"
                extra = ["--finetune-epochs", str(args.epochs), "--schedule", schedule]
                runs.append((tag, t, extra + ([] if labels else ["--no-labels"])))
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--forms", default="kept,folded")
    p.add_argument("--targets", default="0.7,0.5,0.3")
    p.add_argument("--finetune-targets", default="0.5")
    p.add_argument("--schedules", default="oneshot,gfp")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("recover-out"))
    args = p.parse_args()
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.finetune_targets = [float(t) for t in args.finetune_targets.split(",") if t]
    args.schedules = args.schedules.split(",")

    from onnxprune.models.fashion import cached_fashion_model, evaluate_onnx
    from onnxprune.models.fashion_data import write_npz

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    calib = out / "calib.npz"
    if not calib.exists():
        write_npz(calib, split="train", n=args.train_images, seed=0)
    rows = []
    for name in args.models.split(","):
        for form in args.forms.split(","):
            model = cached_fashion_model(name, log=print, fold_bn=form == "folded")
            base = evaluate_onnx(model)
            rows.append((name, form, "original", None, {"top1": base}))
            for tag, target, extra in _runs(args):
                stem = f"{out}/{name}-{form}-{target}-{tag}"  # no with_suffix: "0.5" has a dot
                report = Path(f"{stem}.json")
                record = _cli([str(model), "--target-mem", str(target), "--data", str(calib),
                               "-o", f"{stem}.onnx", *extra], report)
                row = _row(record, Path(f"{stem}.onnx"), evaluate_onnx)
                report.write_text(json.dumps(record))
                rows.append((name, form, tag, target, row))
    _print(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


def _fmt(value, spec=".2f", scale=1.0):
    return "–" if value is None else format(value * scale, spec)


def _print(rows) -> None:
    print("\n| model | BN | target M | run | test top-1 % | M | MACs | written | held-out "
          "agreement % | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, form, tag, target, r in rows:
        print(f"| {name} | {form} | {_fmt(target, 'g')} | {tag} | "
              f"{_fmt(r.get('top1'), '.2f', 100)} | {_fmt(r.get('M'), '.3f')} | "
              f"{_fmt(r.get('MACs'), '.3f')} | {r.get('chosen') or '–'} | "
              f"{_fmt(r.get('agreement'), '.1f', 100)} | {_fmt(r.get('seconds'), '.0f')} |"
              + (f" {r['error']}" if r.get("error") else ""))


if __name__ == "__main__":
    sys.exit(main())
