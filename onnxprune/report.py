"""The machine-readable record of a prune (JSON) and the human summaries on stdout."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import __version__
from .config import PruneConfig
from .cost import Costs
from .graph import default_file_mode
from .verify import TOLERANCE

_COST_NAMES = (("mem", "M (feature-map elements)"), ("macs", "MACs"), ("params", "params"),
               ("weight_bytes", "weight bytes"), ("activations", "activation elements"))


def group_records(analysis, removed: np.ndarray | None = None) -> list[dict]:
    mem = np.bincount(analysis.channels.labels, weights=analysis.costs.per_node_mem(),
                      minlength=analysis.channels.n_components)
    records = []
    for g in analysis.groups:
        gone = int(removed[g.units].sum()) if removed is not None else 0
        records.append({
            "index": g.index, "channels": g.channels,
            "kept": (len(g.units) - gone) * g.channels_per_unit,
            "units": len(g.units), "prunable": not g.blocked,
            "mem": int(mem[g.units].sum()), "tensors": list(g.tensors), "reasons": g.reasons,
        })
    return records


def prune_record(result, config: PruneConfig, source: str, output: str) -> dict:
    before, after = result.plan.before.as_dict(), result.plan.after.as_dict()
    return {
        "onnxprune": __version__, "input": source, "output": output,
        "options": {"target": {"kind": config.target.kind.value,
                               "fraction": config.target.fraction},
                    "criterion": config.criterion.value, "normalize": config.normalize.value,
                    "round_to": config.round_to, "seed": config.seed,
                    "input_shapes": {k: list(v) for k, v in config.input_shapes.items()}},
        "before": before, "after": after,
        "ratio": {k: (after[k] / before[k] if before[k] else 1.0) for k in before},
        "groups": group_records(result.analysis, result.plan.removed),
        "slices": [s.as_dict() for s in result.slices],
        "verification": {"max_relative_error": result.error, "tolerance": TOLERANCE,
                         "precision": result.verdict.precision,
                         "float32_error": result.verdict.float32_error,
                         "runs": config.verify_runs},
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def write_json_atomic(record: dict, path: str | os.PathLike) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.chmod(tmp, default_file_mode())
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return "\n".join(lines)


def prune_summary(result, output: str) -> str:
    total = sum(result.timings.values())
    return (f"pruned -> {output}\n{cost_table(result.plan.before, result.plan.after)}\n"
            f"  oracle: max relative error {result.error:.2e} (tolerance {TOLERANCE:g}"
            + ("" if result.verdict.precision == "float32" else
               f"; float32 rounding noise {result.verdict.float32_error:.2e}, decided in float64")
            + ")\n"
            f"  time: {total:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
            + ")")


def analysis_text(analysis, minimum: Costs) -> str:
    before = analysis.costs.costs()
    rows = ["layer groups (channels, share of M, member tensors, status):"]
    records = group_records(analysis)
    for rec in records:
        share = rec["mem"] / before.mem if before.mem else 0
        first = rec["tensors"][0] if rec["tensors"] else "?"
        more = f" +{len(rec['tensors']) - 1}" if len(rec["tensors"]) > 1 else ""
        status = "prunable" if rec["prunable"] else "blocked: " + "; ".join(rec["reasons"][:2])
        rows.append(f"  #{rec['index']:<4} {rec['channels']:>6} ch {share:6.1%}  {first}{more}  "
                    f"{status}")
    prunable = sum(r["mem"] for r in records if r["prunable"])
    rows.append(f"prunable share of M: {prunable / before.mem if before.mem else 0:.1%}")
    rows.append("costs:\n" + cost_table(before))
    rows.append("reachable minimum with what is prunable (fraction of the original):")
    for field, label in _COST_NAMES[:3]:
        b = getattr(before, field)
        rows.append(f"  --target-{'mem' if field == 'mem' else 'flops' if field == 'macs' else 'params'}"
                    f" {getattr(minimum, field) / b if b else 1:.3f}   ({label})")
    return "\n".join(rows)
