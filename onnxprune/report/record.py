"""The machine-readable record of a prune (JSON) and the human summaries on stdout."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxprune import __version__
from onnxprune.analysis.cost import Costs, stored_costs
from onnxprune.analysis.units import RuleError
from onnxprune.config import PruneConfig
from onnxprune.model.graph import format_input_shapes
from onnxprune.plan.planner import chunk_shape
from onnxprune.verify.oracle import TOLERANCE

if TYPE_CHECKING:
    from onnxprune.api import Analysis, PruneResult

_COST_NAMES = (("mem", "M (feature-map elements)"), ("macs", "MACs"), ("params", "params"),
               ("weight_bytes", "weight bytes"), ("activations", "activation elements"))


def group_records(analysis: Analysis, removed: np.ndarray | None = None,
                  scores: np.ndarray | None = None,
                  floor: tuple[int, float] | None = None) -> list[dict]:
    """One record per layer group; with `scores`, each unit's score (in `units` order); with
    `floor` = (round_to, max_prune_share), the channels the planner keeps at least (`min_kept`).
    `reasons` are structural; `rule_errors` are blocks caused by a bug in an op rule."""
    mem = np.bincount(analysis.channels.labels, weights=analysis.costs.per_node_mem(),
                      minlength=analysis.channels.n_components)
    records = []
    for g in analysis.groups:
        gone = int(removed[g.units].sum()) if removed is not None else 0
        records.append({
            "index": g.index, "channels": g.channels,
            "kept": (len(g.units) - gone) * g.channels_per_unit,
            "units": len(g.units), "prunable": not g.blocked, "heads": g.heads,
            **({"min_kept": chunk_shape(g, *floor)[1] * g.channels_per_unit} if floor else {}),
            "mem": int(mem[g.units].sum()), "tensors": list(g.tensors), "reasons": g.reasons,
            "rule_errors": g.rule_errors,
        })
        if scores is not None:
            records[-1]["unit_scores"] = [float(x) for x in scores[g.units]]
            if removed is not None:
                records[-1]["removed_units"] = np.flatnonzero(removed[g.units]).tolist()
    return records


def prune_record(result: PruneResult, config: PruneConfig, source: str, output: str) -> dict:
    before = result.plan.before.as_dict()  # params, weight bytes: as the files store them
    after = stored_costs(result.plan.after, result.model).as_dict()
    return {
        "onnxprune": __version__, "input": source, "output": output,
        "options": {"target": {"kind": config.target.kind.value,
                               "fraction": config.target.fraction},
                    "criterion": config.criterion.value, "normalize": config.normalize.value,
                    "round_to": config.round_to, "max_prune_share": config.max_prune_share,
                    "attention": config.attention.value,
                    "seed": config.seed,
                    "calibration": {"batch_size": config.calibration.batch_size,
                                    "max_batches": config.calibration.max_batches,
                                    "no_labels": config.calibration.no_labels,
                                    "rounds": config.calibration.rounds},
                    "finetune": _finetune_options(config.finetune),
                    "input_shapes": {k: list(v) for k, v in config.input_shapes.items()},
                    "keep": list(config.keep),
                    "quantize": config.quantize.value if config.quantize else None},
        "before": before, "after": after,
        "ratio": {k: (after[k] / before[k] if before[k] else 1.0) for k in before},
        "plan": {"excess": result.plan.excess,
                 "rounds": result.plan.rounds},
        "calibration": (result.calibration.as_dict() if result.calibration is not None
                        else None),
        "bn_recalibration": ({"samples": result.bn_samples}
                             if getattr(result, "bn_samples", None) else None),
        "recovery": (result.recovery.as_dict() if getattr(result, "recovery", None) is not None
                     else None),
        "groups": group_records(result.analysis, result.plan.removed, result.scores,
                                (config.round_to, config.max_prune_share)),
        "rule_errors": [e.as_dict() for e in result.analysis.channels.rule_errors],
        "slices": [s.as_dict() for s in result.slices],
        "verification": {"max_relative_error": result.error, "tolerance": TOLERANCE,
                         "precision": result.verdict.precision,
                         "float32_error": result.verdict.float32_error,
                         "runs": config.verify_runs, **_coverage(result),
                         **_signature(result, config)},
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def _coverage(result: PruneResult) -> dict:
    """Which tensors the oracle compared and which nodes it could not run (verify/partial.py)."""
    cover = result.verdict.coverage
    if cover is None:
        return {"proven_outputs": [o.name for o in result.model.graph.output],
                "unproven_nodes": [], "not_runnable": []}
    return cover.as_dict()


def _signature(result: PruneResult, config: PruneConfig) -> dict:
    """The oracle at each input shape of the written file (two where a dimension stays
    dynamic: onnxprune.rewrite.signature), and the dimensions kept dynamic."""
    sig = result.analysis.signature
    free = [] if sig is None or config.static_shape else sig.dims
    return {"shapes": [{"inputs": {k: list(v) for k, v in c.inputs.items()},
                        "max_relative_error": c.verdict.error, "precision": c.verdict.precision}
                       for c in getattr(result, "shapes", [])],
            "dynamic_dims": [{"input": d.input, "axis": d.axis, "name": d.label} for d in free],
            "static_shape": sig is not None and config.static_shape}


def _signature_line(result: PruneResult) -> str:
    checks, sig = getattr(result, "shapes", []), result.analysis.signature
    if sig is None or not checks:
        return ""
    if len(checks) == 1:
        return (f"  signature: --static-shape, the file keeps the analysis shape "
                f"{format_input_shapes(checks[0].inputs)}\n")
    return (f"  signature: the original's (dynamic {sig.describe()}); oracle at input "
            + ", ".join(f"{format_input_shapes(c.inputs)}: {c.verdict.error:.2e}" for c in checks)
            + "\n")


def _coverage_line(result: PruneResult) -> str:
    cover = result.verdict.coverage
    return f"  {cover.summary()}\n" if cover is not None and not cover.complete else ""


def _finetune_options(ft) -> dict | None:
    if ft is None:
        return None
    return {k: (v.value if hasattr(v, "value") else v) for k, v in vars(ft).items()}


def _num(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def cost_table(before: Costs, after: Costs | None = None) -> str:
    lines = []
    for field, label in _COST_NAMES:
        b = getattr(before, field)
        if after is None:
            lines.append(f"  {label:<22} {_num(b):>10}")
        else:
            a = getattr(after, field)
            lines.append(f"  {label:<22} {_num(b):>10} -> {_num(a):>10}  ({a / b if b else 1:.3f})")
    if before.latency is not None:  # predicted by the per-layer latency table
        b, a = before.latency, (after or before).latency
        lines.append(f"  {'latency ms, predicted':<22} {b:>10.3f}"
                     + (f" -> {a:>10.3f}  ({a / b if b else 1:.3f})" if after else ""))
    return "\n".join(lines)


def _calibration_line(result) -> str:
    cal = result.calibration
    if cal is None:
        return ""
    rounds = f" in each of {cal.rounds} rounds" if cal.rounds > 1 else ""
    return (f"  {cal.criterion.value}: {cal.samples} samples in {cal.batches} batches{rounds} "
            f"from {cal.data}; labels: {cal.labels}; {cal.mode}\n")


def _excess_line(plan) -> str:
    return (f"  the plan ends {plan.excess:.4f} of the original below the target "
            f"(the last channel unit removed crossed it)\n" if plan.excess > 0 else "")


def _bn_line(result) -> str:
    samples = getattr(result, "bn_samples", None)
    return f"  BatchNormalization statistics re-estimated on {samples} samples\n" if samples else ""


def fidelity_text(fid: dict, against: str, before: str, after: str) -> str:
    """One fidelity record (verify/fidelity.py) as text: `against` names the reference model,
    `before` / `after` the suffixes of its accuracy keys (accuracy_<before>, accuracy_<after>)."""
    parts = [f"{fid['samples']} held-out samples"]
    if "top1_agreement" in fid:
        parts.append(f"top-1 agreement with {against} {fid['top1_agreement']:.2%}")
    if f"accuracy_{after}" in fid:
        parts.append(f"top-1 {fid[f'accuracy_{before}']:.2%} -> {fid[f'accuracy_{after}']:.2%}")
    parts.append(f"max relative output error {fid['max_relative_error']:.3g}")
    return ", ".join(parts)


def _recovery_lines(result) -> str:
    """Refit, fine-tuning, the candidate written and its fidelity on held-out data (the oracle
    line is about the slicing)."""
    rec = getattr(result, "recovery", None)
    if rec is None:
        return ""
    lines = []
    if rec.refit is not None:
        lines.append(_refit_line(rec.refit))
    ft = rec.finetune
    if ft is not None:
        lines.append(f"  fine-tuned ({rec.schedule.value}): {ft.steps} steps, "
                     f"loss {ft.first_loss:.4f} -> {ft.last_loss:.4f}")
        if rec.start is not None:
            lines[-1] += f", from the {rec.start}; kept step {rec.checkpoint}"
        if rec.gfp:
            lines[-1] += (f"; gfp removed {rec.gfp['units_removed']} units in "
                          f"{rec.gfp['removals']} steps")
    judged = {n: f for n, f in rec.candidates.items() if f}
    if len(judged) > 1:
        lines.append("  held-out score: " + ", ".join(
            f"{name} {_score_text(fid)}" for name, fid in judged.items())
            + f"; written: the {rec.chosen}")
    fid = rec.fidelity
    if fid:
        lines.append("  fidelity: " + fidelity_text(fid, "the original", "original", "pruned"))
    lines += [f"  WARNING: {w}" for w in rec.warnings]
    return "\n".join(lines) + "\n"


def _refit_line(refit: dict) -> str:
    if not refit.get("layers"):
        why = refit.get("reason") or "no layer that lost input channels can be refit"
        return f"  refit: none ({why})"
    return (f"  refit: {refit['refit_layers']} of {len(refit['layers'])} layers by least "
            f"squares on {refit['samples']} samples in {refit['passes']} passes, "
            f"{refit['seconds']:.1f} s" + (f"; {len(refit['skipped'])} layers not refit"
                                           if refit["skipped"] else ""))


def _score_text(fid: dict) -> str:
    if "accuracy_pruned" in fid:
        return f"top-1 {fid['accuracy_pruned']:.2%}"
    if "top1_agreement" in fid:
        return f"agreement {fid['top1_agreement']:.2%}"
    return f"mean abs error {fid['mean_abs_error']:.3g}"


def prune_summary(result: PruneResult, output: str) -> str:
    total = sum(result.timings.values())
    sliced = (" of the slicing, before recovery" if getattr(result, "recovery", None) else
              " of the slicing, before BN re-estimation" if getattr(result, "bn_samples", None)
              else "")
    return (f"pruned -> {output}\n{_calibration_line(result)}"
            f"{cost_table(result.plan.before, stored_costs(result.plan.after, result.model))}\n"
            f"{_excess_line(result.plan)}"
            f"{_bn_line(result)}{_recovery_lines(result)}"
            f"  oracle{sliced}: max relative error {result.error:.2e} (tolerance {TOLERANCE:g}"
            + ("" if result.verdict.precision == "float32" else
               f"; float32 rounding noise {result.verdict.float32_error:.2e}, decided in float64")
            + ")\n"
            + _coverage_line(result) + _signature_line(result) +
            f"  time: {total:.2f} s ("
            + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()) + ")")


def _status(rec: dict) -> str:
    if rec["prunable"]:
        return "prunable"
    if not rec["reasons"]:
        return "blocked by a rule error (see below)"
    more = " (and a rule error, see below)" if rec["rule_errors"] else ""
    return "blocked: " + "; ".join(rec["reasons"][:2]) + more


def _rule_error_rows(errors: Sequence[RuleError]) -> list[str]:
    """Rule errors apart from the structural reasons: they are bugs in onnxprune."""
    if not errors:
        return []
    return ["rule errors (bugs in onnxprune's op rules, not properties of the model; the "
            "channels they touch stay; please report them):"] + [
        f"  {e.op_type} node {e.node}: {e.message}" for e in errors]


def analysis_text(analysis: Analysis, minimum: Costs, floor: tuple[int, float] = (8, 1.0)) -> str:
    """`minimum`: the reachable minimum under `floor` = (round_to, max_prune_share)."""
    before = analysis.costs.costs()
    rows = ["layer groups (channels or hd = attention heads, share of M, member tensors, "
            "status):"]
    records = group_records(analysis, floor=floor)
    for rec in records:
        share = rec["mem"] / before.mem if before.mem else 0
        first = rec["tensors"][0] if rec["tensors"] else "?"
        more = f" +{len(rec['tensors']) - 1}" if len(rec["tensors"]) > 1 else ""
        status = _status(rec) + (f", keeps >= {rec['min_kept']}" if rec["prunable"] else "")
        what = "hd" if rec["heads"] else "ch"
        rows.append(f"  #{rec['index']:<4} {rec['channels']:>6} {what} {share:6.1%}  "
                    f"{first}{more}  {status}")
    rows += _rule_error_rows(analysis.channels.rule_errors)
    prunable = sum(r["mem"] for r in records if r["prunable"])
    rows.append(f"prunable share of M: {prunable / before.mem if before.mem else 0:.1%}")
    rows.append("costs:\n" + cost_table(before))
    rows.append(f"reachable minimum with what is prunable, each group keeping at least "
                f"{1 - floor[1]:.0%} of its channels and one --round-to {floor[0]} unit "
                f"(fraction of the original):")
    for field, label in _COST_NAMES[:3]:
        b = getattr(before, field)
        option = {"mem": "mem", "macs": "flops", "params": "params"}[field]
        share = getattr(minimum, field) / b if b else 1
        rows.append(f"  --target-{option} {share:.3f}   ({label})")
    return "\n".join(rows)
