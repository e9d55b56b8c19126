"""How many calibration samples Group Fisher needs: the rank stability of its scores.

    python tools/rank_stability.py [--models resnet20,mobilenetv2_small] [--forms folded]
                                   [--sizes 64,128,256,512,1024,2048] [--seeds 0,1,2]
                                   [--reference 4096]

For each model, the Fisher scores of every prunable unit are computed on `--reference` training
images (the reference ranking) and on `--sizes` samples drawn by each seed (the subset
`--calib-batches` draws, calibrate.data.calibration_batches) from other training images, so
that no subset shares samples with the reference. The table gives the
Spearman rank correlation of each subset's scores with the reference (mean ± std over seeds)
and the overlap of the 25 % lowest-scored units (the ones a plan removes first), with the
seconds each pass took. The default sample count of `onnxprune --data` (32 batches of 32) is
chosen from it (docs/recovery.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from calibrate.data import open_data
from calibrate.scoring import data_scores
from onnxprune.api import analyze
from onnxprune.config import CalibrationConfig, Criterion
from onnxprune.model.graph import input_specs
from onnxprune.models.fashion import cached_fashion_model
from onnxprune.models.fashion_data import load_fashion, to_input

BATCH = 32


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the ranks (ties broken by position, which Fisher never has)."""
    ra, rb = (np.argsort(np.argsort(x, kind="stable")).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def low_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.25) -> float:
    k = max(1, int(share * len(a)))
    return len(set(np.argsort(a)[:k]) & set(np.argsort(b)[:k])) / k


def _scores(analysis, data, samples: int, seed: int) -> tuple[np.ndarray, float]:
    config = CalibrationConfig(batch_size=BATCH, max_batches=samples // BATCH)
    tick = time.perf_counter()
    result = data_scores(analysis.channels, Criterion.FISHER, data, config, seed)
    return result.scores, time.perf_counter() - tick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--forms", default="folded")
    p.add_argument("--sizes", default="64,128,256,512,1024,2048")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--reference", type=int, default=4096)
    args = p.parse_args(argv)
    images, labels = load_fashion("train")
    sizes = [int(s) for s in args.sizes.split(",")]
    pick = np.random.default_rng(0).permutation(len(labels))[:args.reference + max(sizes)]
    parts = {"reference": pick[:args.reference], "subsets": pick[args.reference:]}
    print("| model | BN | samples | Spearman ρ vs reference | lowest-25 % overlap | s per pass |\n"
          "|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for form in args.forms.split(","):
            analysis = analyze(cached_fashion_model(name, fold_bn=form == "folded"))
            data = {k: open_data([({"input": to_input(images[i])}, labels[i])],
                                 input_specs(analysis.model)) for k, i in parts.items()}
            units = np.concatenate([g.units for g in analysis.groups if not g.blocked])
            units = units[~analysis.channels.blocked[units]]
            reference, ref_s = _scores(analysis, data["reference"], args.reference, 0)
            for size in sizes:
                rhos, overlaps, secs = [], [], []
                for seed in (int(s) for s in args.seeds.split(",")):
                    scores, s = _scores(analysis, data["subsets"], size, seed)
                    rhos.append(spearman(scores[units], reference[units]))
                    overlaps.append(low_overlap(scores[units], reference[units]))
                    secs.append(s)
                print(f"| {name} | {form} | {size} | {statistics.mean(rhos):.3f} ± "
                      f"{statistics.pstdev(rhos):.3f} | {statistics.mean(overlaps):.2f} | "
                      f"{statistics.mean(secs):.1f} |", flush=True)
            print(f"| {name} | {form} | {args.reference} (reference) | 1 | 1 | {ref_s:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
