"""Accuracy against measured latency on Fashion-MNIST: onnxprune's criteria, Torch-Pruning and
onnxsim on the same trained files, at the same feature-map memory, as a table and a plot.

    python tools/front_fashion.py --models resnet20 --forms folded --targets 0.7,0.5,0.3 \
        --seeds 0,1,2 [--steps 0] [--train 2000] [--methods a,b] [--one-seed a,b] \
        [--out DIR] [--runs 100] [--plot] [--no-latency] [--stored-only]

For every model (models/fashion.py, trained once and cached), BN form (`kept`: BN nodes in the
file; `folded`: BN folded into the convs, as exporters write by default), memory target M and
seed, each method prunes the file to M <= target (onnxprune's cost model) and the result's
test top-1 on the 10,000 test images is measured. Methods (`--methods`, default all):

- onnxprune, through its API with the CLI's defaults (`--max-prune-share`, the refit with
  data, `--rounds`; `--round-to 8`, or the largest of 4, 2, 1 that reaches the target, as
  the table says): `fisher` (iterative), `fisher-r1` (one round, the old
  one-shot), `taylor`, `hrank`, `l1` (the data-free default), `random`; with `--steps`,
  also `gfp` (pruning while fine-tuning, the paper's Algorithm 2; with `--methods`, only if
  listed). Any criterion takes
  `-r<rounds>`, `-s<max prune share>`, `-n<normalize>` and `-nodata` (no refit: a user
  without data) to measure other settings (`fisher-r8-s1`, `lamp-nnone-nodata`).
- Torch-Pruning 1.6 (`torch-pruning`) on the PyTorch model, global pruning, the classifier
  kept, its `max_pruning_ratio` 0.9, the ratio scanned for the largest M <= target
  (`run_tp`), exported in the file's BN form: `tp-magnitude-1` / `tp-magnitude-8`
  (GroupMagnitudeImportance, L2, round_to 1 / 8) and `tp-taylor-1` / `tp-taylor-8`
  (GroupTaylorImportance on 256 seeded images).
- onnxsim 0.8.1 (`tools/peer_onnxsim.py`: sparsity bisected to the same M, shared biases
  unshared when its file fails onnxruntime): `onnxsim-l2`, `onnxsim-l2-ridge`,
  `onnxsim-wanda`, `onnxsim-wanda-ridge`.

Data: `--train` training images drawn with seed 0 (an .npz as `onnxprune --data` reads it).
onnxprune sets aside 500 of them (drawn by the seed) to judge its recovery candidates and
scores on 1,024 drawn by the seed; Torch-Pruning's Taylor uses 256 drawn by the seed; onnxsim's
Wanda and ridge read them all. Budgets: `--steps 0` (default) trains nothing: the rows are
one-shot (onnxprune with its least-squares refit, onnxsim with or without its ridge). With
`--steps N` every row is then fine-tuned N steps of 64 images (lr 0.01, cosine, SGD Nesterov,
cross-entropy + distillation from the original, `calibrate.finetune`): onnxprune through its
own recovery (which also judges slice / refit / fine-tuned on the held-out share), the peers'
files by the same fine-tuning code without that judge. Torch-Pruning's model is then exported
and fine-tuned with its BatchNormalization kept, as its own pipeline trains (onnxruntime folds
BN at load, so latency is that of the folded file); onnxsim's files are BN-folded (it prunes
only those) and are fine-tuned without the BN re-insertion onnxprune's rows get.

Latency: `onnxprune bench --threads 1 --batch 1,32` (onnxruntime CPU, one thread, the original
and every method's first-seed file of a (model, form) interleaved, median of `--runs` rounds;
batch 32 on a copy with a symbolic batch, the time of the whole batch). A row is *dominated*
when some `fisher*` row (any rounds) of the same model and form is at least as accurate and
at most 1 % slower at batch 32. Every prune is kept in `--out` (results.jsonl + the files),
so a rerun resumes; `--stored-only` assembles the table and plot from what parallel workers
stored (each (method, target) with the seeds it has); `--plot` writes front.png (needs
matplotlib).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from bench_accuracy import Store, _mem, tp_prune
from demo import BATCHES, bench_medians

from calibrate.data import open_data
from calibrate.distributed import world
from calibrate.recover import finetune_model
from onnxprune.api import analyze, prune
from onnxprune.config import (
    Criterion,
    FinetuneConfig,
    Normalize,
    PruneConfig,
    Schedule,
    Target,
    TargetKind,
)
from onnxprune.model.graph import input_specs
from onnxprune.model.io import cache_dir
from onnxprune.models.fashion import cached_fashion_model, export_onnx, load_torch_model
from onnxprune.models.fashion_data import write_npz
from onnxprune.plan.planner import reachable_minimum

OURS = ("fisher", "fisher-r1", "taylor", "hrank", "l1", "random")
TP = {"tp-magnitude-1": ("magnitude", 1), "tp-magnitude-8": ("magnitude", 8),
      "tp-taylor-1": ("taylor", 1), "tp-taylor-8": ("taylor", 8)}
ONNXSIM = {"onnxsim-l2": ("l2", False), "onnxsim-l2-ridge": ("l2", True),
           "onnxsim-wanda": ("wanda", False), "onnxsim-wanda-ridge": ("wanda", True)}


@dataclass
class Case:
    """One (model, form) and what every method of it reads."""
    name: str
    form: str
    path: Path
    npz: Path
    steps: int

    @property
    def folded(self) -> bool:
        return self.form == "folded"


def _finetune(steps: int, schedule=Schedule.ONESHOT, prune_count: int = 1):
    if not steps:
        return None
    return FinetuneConfig(steps=steps, batch_size=64, lr=0.01, schedule=schedule,
                          prune_every=5, prune_count=prune_count)


def is_ours(method: str) -> bool:
    return method.split("-")[0] in {c.value for c in Criterion} | {"gfp"}


def ours_config(method: str, target: float, seed: int, steps: int) -> PruneConfig:
    """`<criterion>[-r<rounds>][-s<max prune share>][-n<normalize>][-nodata]`, or `gfp`: the
    API's defaults else; `nodata` prunes as a user without data (no refit)."""
    head, *options = method.split("-")
    schedule = Schedule.GFP if head == "gfp" else Schedule.ONESHOT
    criterion = Criterion.FISHER if head == "gfp" else Criterion(head)
    config = PruneConfig(Target(TargetKind.MEM, target), criterion=criterion, seed=seed,
                         finetune=_finetune(steps, schedule, prune_count=4))
    for option in options:
        if option.startswith("r"):
            config = replace(config, calibration=replace(config.calibration,
                                                         rounds=int(option[1:])))
        elif option.startswith("s"):
            config = replace(config, max_prune_share=float(option[1:]))
        elif option == "nodata":
            config = replace(config, reconstruct=False)
        elif option.startswith("n"):
            config = replace(config, normalize=Normalize(option[1:]))
        else:
            raise SystemExit(f"{method}: options are -r<rounds>, -s<share>, -n<normalize>, "
                             "-nodata")
    return config


@functools.cache
def round_to(path: Path, target: float, max_share: float) -> int:
    """8 (the CLI default) where it can reach the target, else the largest of 4, 2, 1 that can
    (ResNet-20 keeping 8 channels per group bottoms out at M 0.375)."""
    base = analyze(str(path))
    for step in (8, 4, 2, 1):
        floor = reachable_minimum(base.channels, base.groups, base.costs, step, max_share)
        if floor.mem <= target * base.costs.costs().mem:
            return step
    return 1


def run_ours(case: Case, method: str, target: float, seed: int) -> tuple[onnx.ModelProto, dict]:
    config = ours_config(method, target, seed, case.steps)
    config = replace(config, round_to=round_to(case.path, target, config.max_prune_share))
    criterion = config.criterion
    data = str(case.npz) if criterion.needs_data or config.reconstructs(True) else None
    result = prune(str(case.path), config, data=data)
    chosen = result.recovery.chosen if result.recovery is not None else "slice"
    return result.model, {"chosen": chosen, "excess": result.plan.excess,
                          "round_to": config.round_to}


def run_tp(case: Case, method: str, target: float, seed: int) -> tuple[onnx.ModelProto, dict]:
    """Torch-Pruning's global ratio scanned over 0.02, 0.04, ..., 0.96: the file whose M is
    the largest at or under target · M0. A scan, not a bisection: with `round_to` (and near
    `max_pruning_ratio`) its M is not monotone in the ratio (ResNet-20, round_to 8: ratio 0.5
    gives M 0.64, 0.95 prunes nothing)."""
    kind, round_to = TP[method]
    arrays = np.load(case.npz)
    pick = np.random.default_rng(seed).permutation(len(arrays["labels"]))[:256]
    calib = (arrays["input"][pick], arrays["labels"][pick].astype(np.int64))
    net, base_mem = load_torch_model(case.name), _mem(onnx.load(str(case.path)))
    best, best_mem, best_ratio = None, -1.0, None
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in np.arange(1, 49) * 0.02:
            pruned = tp_prune(net, kind, float(ratio), calib, round_to)
            path = export_onnx(pruned.eval(), Path(tmp) / "tp.onnx",
                               fold_bn=case.folded and not case.steps)
            model = onnx.load(str(path))
            mem = _mem(model) / base_mem
            if best_mem < mem <= target:
                best, best_mem, best_ratio = model, mem, float(ratio)
    if best is None:
        raise RuntimeError(f"Torch-Pruning cannot reach M {target} at any ratio up to 0.96")
    return best, {"tp_ratio": best_ratio}


def run_onnxsim(case: Case, method: str, target: float, seed: int
                ) -> tuple[onnx.ModelProto, dict]:
    from peer_onnxsim import onnxsim_prune

    kind, ridge = ONNXSIM[method]
    with tempfile.TemporaryDirectory() as tmp:
        path, info = onnxsim_prune(case.path, target, case.npz, kind, ridge, seed, tmp)
        model = onnx.load(str(path))
    return model, {"sparsity": info["sparsity"], "reached": info["reached"]}


def _peer_finetune(case: Case, model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The same fine-tuning as onnxprune's, teacher the original, on the same images."""
    original = analyze(str(case.path)).model
    normalised = analyze(model).model
    config = PruneConfig(Target(TargetKind.MEM, 0.5), seed=seed, finetune=_finetune(case.steps))
    data = open_data(str(case.npz), input_specs(normalised))
    tuned, _ = finetune_model(original, normalised, data, config, world("cpu"), case.steps,
                              False)
    return tuned


def make(case: Case, method: str, target: float, seed: int):
    def build():
        if is_ours(method):
            return run_ours(case, method, target, seed)
        runner = run_tp if method in TP else run_onnxsim
        model, record = runner(case, method, target, seed)
        if case.steps:
            model = _peer_finetune(case, model, seed)
        return model, record
    return build


def _key(case: Case, method: str, target: float, seed: int) -> str:
    return f"{case.name}|{case.form}|{target}|{method}|{seed}|steps={case.steps}|n={case.npz.stem}"


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(case: Case, rows: list[dict], base_acc: float, base_ms: dict[int, float]) -> str:
    head = (f"\n### {case.name}, BN {case.form}, "
            + (f"fine-tuned {case.steps} steps × 64" if case.steps else "no training")
            + f"; original top-1 {100 * base_acc:.2f} %, {base_ms[1]:.3f} ms at batch 1, "
            f"{base_ms[32]:.3f} ms at batch 32\n\n"
            "| target M | method | top-1 % | seeds | M | ms batch 1 | ms batch 32 (speed-up) | "
            "dominated by fisher |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['method']} | {r['error']} | | | | | |")
            continue
        step = r["records"][0].get("round_to", 8)
        label = r["method"] + (f" (round-to {step})" if step != 8 else "")
        lines.append(f"| {r['target']} | {label} | {_cell(r['top1'])} | {len(r['top1'])} | "
                     f"{r['mem']:.3f} | "
                     f"{r['ms'][1]:.3f} | {r['ms'][32]:.3f} ({base_ms[32] / r['ms'][32]:.2f}×) | "
                     f"{r['dominated']} |")
    return "\n".join(lines)


def dominated(row: dict, fronts: list[dict]) -> str:
    """'yes' if a fisher row is as accurate (mean) and as fast at batch 32 (module docstring)."""
    if row["method"].startswith("fisher"):
        return ""
    acc = statistics.mean(row["top1"])
    for f in fronts:
        if statistics.mean(f["top1"]) >= acc and f["ms"][32] <= 1.01 * row["ms"][32]:
            return f"yes (M {f['target']})"
    return "**no**"


# no seed in what they read, until fine-tuning draws its batches by the seed
DETERMINISTIC = {"tp-magnitude-1", "tp-magnitude-8", *ONNXSIM}


def _rows(case: Case, store: Store, args) -> list[dict]:
    rows = []
    for target in args.targets:
        for method in args.methods:
            fixed = method in args.one_seed or (method in DETERMINISTIC and not case.steps)
            seeds = args.seeds[:1] if fixed else args.seeds
            if args.stored_only:
                seeds = [s for s in seeds if store.has(_key(case, method, target, s))]
                if not seeds:
                    continue
            try:
                records = [store.run(_key(case, method, target, s), make(case, method, target, s))
                           for s in seeds]
            except Exception as exc:  # noqa: BLE001  a peer that cannot reach M is a row too
                print(f"  {case.name} {case.form} {target} {method}: {exc}", flush=True)
                rows.append({"target": target, "method": method, "error": str(exc)})
                continue
            rows.append({"target": target, "method": method, "records": records,
                         "top1": [r["top1"] for r in records]})
    return rows


def _measure(case: Case, store: Store, rows: list[dict], runs: int) -> dict[int, float]:
    """Fills each row's M and latency (first seed's file); returns the original's latency."""
    rows = [r for r in rows if "error" not in r]
    files = [r["records"][0]["file"] for r in rows]
    ms = bench_medians([case.path] + [store.dir / f for f in files], runs, warmup=10)
    m0 = _mem(onnx.load(str(case.path)))
    for row, file, lat in zip(rows, files, ms[1:]):
        row["mem"] = _mem(onnx.load(str(store.dir / file))) / m0
        row["ms"] = lat
    fronts = [r for r in rows if r["method"].startswith("fisher")]
    for row in rows:
        row["dominated"] = dominated(row, fronts)
    return ms[0]


def plot(path: Path, panels: list[tuple[Case, list[dict], float, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.5 * len(panels)), squeeze=False)
    for (case, rows, base_acc, base_ms), pair in zip(panels, axes):
        rows = [r for r in rows if "error" not in r]
        for ax, batch in zip(pair, BATCHES):
            for method in dict.fromkeys(r["method"] for r in rows):
                mine = sorted((r for r in rows if r["method"] == method),
                              key=lambda r: r["ms"][batch])
                style = "o-" if method.startswith(("fisher", "gfp")) else "x--"
                ax.plot([r["ms"][batch] for r in mine],
                        [100 * statistics.mean(r["top1"]) for r in mine], style, label=method,
                        linewidth=2.5 if method == "fisher" else 1)
            ax.plot([base_ms[batch]], [100 * base_acc], "k*", markersize=12, label="original")
            ax.set_xlabel(f"onnxruntime CPU ms, batch {batch}, 1 thread")
            ax.set_ylabel("test top-1 %")
            ax.set_title(f"{case.name}, BN {case.form}, "
                         + (f"{case.steps} fine-tuning steps" if case.steps else "no training"))
            ax.grid(alpha=0.3)
        pair[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--forms", default="folded", help="kept, folded or kept,folded")
    p.add_argument("--targets", default="0.7,0.5,0.3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=None,
                   help="comma-separated (default: every method; with --steps, gfp too)")
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: none)")
    p.add_argument("--train", type=int, default=2000, help="training images read")
    p.add_argument("--runs", type=int, default=100, help="interleaved latency rounds")
    p.add_argument("--out", type=Path, default=cache_dir("front"))
    p.add_argument("--plot", action="store_true", help="write front.png to --out")
    p.add_argument("--one-seed", default="", metavar="M,M",
                   help="methods run at the first seed only (a budget; the table says so)")
    p.add_argument("--stored-only", action="store_true",
                   help="table, latency and plot of the prunes already in --out (what parallel "
                        "workers made); nothing new is pruned")
    p.add_argument("--no-latency", action="store_true",
                   help="prune and evaluate only (parallel workers; a last run without it "
                        "reuses their files and times them on a quiet machine)")
    args = p.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    given = args.methods is not None
    args.methods = (args.methods or ",".join([*OURS, *TP, *ONNXSIM])).split(",")
    args.one_seed = set(filter(None, args.one_seed.split(",")))
    if args.steps and not given and "gfp" not in args.methods:
        args.methods = [*args.methods, "gfp"]
    return args


def main(argv: list[str] | None = None) -> int:
    from onnxprune.models.fashion import evaluate_onnx

    args = _parse(argv)
    store = Store(args.out)
    npz = write_npz(args.out / f"train{args.train}.npz", "train", args.train, seed=0)
    panels = []
    for name in args.models.split(","):
        for form in args.forms.split(","):
            case = Case(name, form, cached_fashion_model(name, fold_bn=form == "folded"), npz,
                        args.steps)
            rows = _rows(case, store, args)
            if args.no_latency:  # a worker among several: the latency waits for a quiet run
                continue
            base_acc = evaluate_onnx(case.path)
            base_ms = _measure(case, store, rows, args.runs)
            print(table(case, rows, base_acc, base_ms), flush=True)
            panels.append((case, rows, base_acc, base_ms))
    if args.plot:
        plot(args.out / "front.png", panels)
        print(f"\nplot: {args.out / 'front.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
