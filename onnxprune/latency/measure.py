"""End-to-end latency of original and pruned models, and the `--target-latency` loop.

The models run interleaved (round r runs each once) on the chosen backend, medians reported.
`--target-latency F` plans to a *predicted* ratio (the per-layer tables); the table misses what
the whole graph does between layers (fusion, copies, cache effects), so the result is measured.
When the measured ratio misses F, the plan is redone at its predicted ratio scaled by
F / measured (at most LatencyConfig.retries times, reusing the scores); the first plan that
meets F is kept, or, if none does, the fastest one, and the summary says that the target was
missed.
"""
from __future__ import annotations

import time
from dataclasses import replace

import onnx

from onnxprune.bench.onnxruntime import LatencyStats, interleave, summarize
from onnxprune.config import LatencyConfig, PruneConfig, Target, TargetKind
from onnxprune.errors import UserError
from onnxprune.latency.layers import model_timer
from onnxprune.latency.options import backend_runner, check


def measure(models: list[onnx.ModelProto], config: LatencyConfig,
            seed: int = 0) -> list[LatencyStats]:
    """Interleaved medians of `models` (same random inputs for equal input shapes)."""
    backend = backend_runner(config)
    timers = [model_timer(backend, m, seed) for m in models]
    times = interleave(timers, runs=config.runs, warmup=config.warmup)
    return [summarize(t, backend.name) for t in times]


def _stats(s: LatencyStats) -> dict:
    return {"median_ms": s.median_ms, "p90_ms": s.p90_ms, "mean_ms": s.mean_ms}


def latency_record(before: LatencyStats, after: LatencyStats, config: LatencyConfig) -> dict:
    """The report's `latency`: original (normalised, batch 1) vs pruned."""
    return {"backend": config.backend.value, "batch": 1, "runs": config.runs,
            "warmup": config.warmup, "threads": config.threads, "spinning": config.spinning,
            "before": _stats(before), "after": _stats(after),
            "speedup": before.median_ms / after.median_ms}


def _attempt(result, before: LatencyStats, after: LatencyStats, planned: float) -> dict:
    plan = result.plan
    return {"planned": planned, "predicted_ratio": plan.after.latency / plan.before.latency,
            "measured_ratio": after.median_ms / before.median_ms}


def _target_record(goal: float, config: LatencyConfig, result, attempts: list[dict],
                   chosen: int, stats: tuple[LatencyStats, LatencyStats]) -> dict:
    table = result.analysis.costs.latency.table
    plan, (before, after) = result.plan, stats
    measured = after.median_ms / before.median_ms
    return {"fraction": goal, "backend": config.backend.value, "met": measured <= goal,
            "predicted": {"before_ms": plan.before.latency, "after_ms": plan.after.latency,
                          "ratio": plan.after.latency / plan.before.latency},
            "measured": {"before": _stats(before), "after": _stats(after), "ratio": measured},
            "attempts": attempts, "chosen": chosen,
            "table": {"layers": len(table.layers), "cached": table.cached,
                      "path": str(table.path) if table.path else None,
                      "model_ms": table.model_ms, "overhead_ms": table.overhead_ms}}


def prune_to_latency(model, config: PruneConfig, data=None) -> tuple[object, dict]:
    """Prune to `config.target` (a latency fraction), measure, re-plan on a miss (module
    docstring). Returns the chosen PruneResult and {"latency", "latency_target"} records."""
    from onnxprune.api import analyze, prune
    from onnxprune.plan.planner import TargetUnreachable

    latency, goal = config.latency or LatencyConfig(), config.target.fraction
    planned, scores, runs, attempts = goal, None, [], []
    # once for every re-plan
    analysis = analyze(model, config.input_shapes, config.keep, config.attention)
    tick = time.perf_counter()
    for _ in range(latency.retries + 1):
        try:
            result = prune(analysis, replace(config, target=Target(TargetKind.LATENCY, planned)),
                           scores=scores, data=data)
        except TargetUnreachable:
            if not runs:
                raise
            break  # a tighter re-plan cannot be reached: keep what was measured
        stats = measure([result.analysis.model, result.model], latency, config.seed)
        scores = result.scores
        runs.append((result, stats))
        attempts.append(_attempt(result, *stats, planned))
        if attempts[-1]["measured_ratio"] <= goal:
            break
        # below what the last plan reached, so the next plan really differs (chunk steps)
        planned = attempts[-1]["predicted_ratio"] * goal / attempts[-1]["measured_ratio"]
    met = [i for i, a in enumerate(attempts) if a["measured_ratio"] <= goal]
    chosen = met[0] if met else min(range(len(runs)), key=lambda i: attempts[i]["measured_ratio"])
    result, stats = runs[chosen]
    result.calibration = result.calibration or runs[0][0].calibration
    result.timings["latency_loop"] = time.perf_counter() - tick - sum(result.timings.values())
    result.timings["analyze"] = analysis.seconds
    return result, {"latency": latency_record(*stats, latency),
                    "latency_target": _target_record(goal, latency, result, attempts, chosen,
                                                     stats)}


def prune_measured(model, config: PruneConfig, data=None, bench: bool = False
                   ) -> tuple[object, dict]:
    """api.prune, plus the `latency` record when `bench`, plus the measured loop for a latency
    target. The backend is checked first: an unavailable one fails before any work."""
    from onnxprune.api import prune

    latency = config.latency or LatencyConfig()
    if config.uses_latency and config.finetune is not None:
        raise UserError("a latency target or normaliser with fine-tuning is not supported yet "
                        "(calibrate.recover plans without the latency table)")
    if bench or config.uses_latency:
        check(latency)
    if config.target.kind is TargetKind.LATENCY:
        return prune_to_latency(model, config, data)
    result = prune(model, config, data=data)
    if not bench:
        return result, {}
    tick = time.perf_counter()
    stats = measure([result.analysis.model, result.model], latency, config.seed)
    result.timings["bench"] = time.perf_counter() - tick
    return result, {"latency": latency_record(*stats, latency)}


def summary_lines(extra: dict) -> str:
    """Lines for the prune summary (empty without latency records)."""
    lines = []
    if extra.get("latency"):
        lat = extra["latency"]
        b, a = lat["before"], lat["after"]
        lines.append(f"  latency on {lat['backend']} (batch 1, median of {lat['runs']} "
                     f"interleaved runs): {b['median_ms']:.3f} -> {a['median_ms']:.3f} ms "
                     f"(p90 {b['p90_ms']:.3f} -> {a['p90_ms']:.3f}), "
                     f"speed-up {lat['speedup']:.2f}x")
    target = extra.get("latency_target")
    if target:
        lines.append(_target_line(target))
    return "\n".join(lines)


def _target_line(t: dict) -> str:
    tries = len(t["attempts"])
    plans = ", ".join(f"{a['planned']:.3f}" for a in t["attempts"])
    head = (f"  latency target {t['fraction']:g} on {t['backend']}: predicted "
            f"{t['predicted']['ratio']:.3f} (table of {t['table']['layers']} layers"
            f"{', cached' if t['table']['cached'] else ''}), measured {t['measured']['ratio']:.3f}")
    if t["met"]:
        return head + ": met" + (f" (plan {t['chosen'] + 1} of {tries}: {plans})"
                                   if tries > 1 else "")
    return (head + f"\n  WARNING: the measured latency ratio {t['measured']['ratio']:.3f} MISSES "
            f"the target {t['fraction']:g} after {tries} plan(s) at predicted fractions "
            f"{plans}; kept the fastest. Timing noise or a backend that fuses layers the "
            f"per-layer table times alone can cause this: try a lower --target-latency")

