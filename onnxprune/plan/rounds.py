"""Iterative scoring: remove in rounds, re-scoring before each with what is gone masked.

A one-shot score is taken on the full network and then trusted while up to 70 % of its memory
goes; a unit's importance changes once its neighbours are removed. With R rounds and a target
fraction f of some cost C (memory, MACs, ...), round r = 1..R plans to

    C_r = (1 − (1 − f) · r / R) · C_0,

an equal share of the cost to remove per round, keeping every unit an earlier round removed
(`plan_pruning(..., gone=...)`), after scoring the network with those units' channels
multiplied by zero at every site (`calibrate.scoring.data_scores(..., removed=...)`): for Group
Fisher, F_u = Σ_n g_{n,u}² of the masked network, which is Algorithm 2 of Liu et al. (2021)
with a least-squares refit where the paper trains between removals. With the refit on (the
default with data, api.PruneConfig.reconstructs), the network scored in round r > 1 is the
slice of round r − 1 refit by calibrate/refit.py and put back in the original's graph
(rewrite/unslice.py); without it, the masked original, whose accuracy collapses at deep cuts
and whose gradients then mislead (docs/recovery.md, "Choosing"). The cost is R scoring
passes over the calibration samples plus R − 1 refits (each two forward passes per level).
The last round plans to the target itself, so the result meets it exactly as a one-shot plan
does.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from onnxprune.config import Target
from onnxprune.plan.planner import Plan

Score = Callable[[np.ndarray | None], np.ndarray]            # gone units -> scores
PlanTo = Callable[[np.ndarray, Target, np.ndarray | None], Plan]  # scores, target, gone


def round_targets(target: Target, rounds: int) -> list[Target]:
    """The target of each round: equal shares of the cost to remove (module docstring)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    removed = 1.0 - target.fraction
    return [Target(target.kind, 1.0 - removed * r / rounds) for r in range(1, rounds)] + [target]


def plan_in_rounds(target: Target, rounds: int, score: Score,
                   plan_to: PlanTo) -> tuple[Plan, np.ndarray]:
    """(the last round's plan, with `Plan.rounds` filled; each unit's score: the one it was
    removed by, or the last round's for units that stay)."""
    gone: np.ndarray | None = None
    kept_scores = None
    log = []
    for r, step in enumerate(round_targets(target, rounds), start=1):
        tick = time.perf_counter()
        scores = score(gone)
        plan = plan_to(scores, step, gone)
        new = plan.removed if gone is None else plan.removed & ~gone
        if gone is not None and not plan.removed[gone].all():
            raise AssertionError("a round put back units an earlier round removed")
        kept_scores = scores.copy() if kept_scores is None else kept_scores
        kept_scores[new | ~plan.removed] = scores[new | ~plan.removed]
        log.append({"round": r, "target": step.fraction, "units_removed": int(new.sum()),
                    "seconds": round(time.perf_counter() - tick, 3)})
        gone = plan.removed
    plan.rounds = log
    return plan, kept_scores
