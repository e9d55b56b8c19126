"""Pictures and a Markdown summary of a prune record (the dict of `report.prune_record`).

    groups_plot(record, "groups.png")   kept vs original channels per layer group
    costs_plot(record, "costs.png")     M, MACs, params, weight bytes, activations: after / before
    markdown_summary(record) -> str     targets, cost table, top groups, oracle, timings, latency
    sweep_plot(points, "sweep.png")     latency (and accuracy) vs memory over several targets
    write_all(record, folder)           the two PNGs and summary.md in `folder`

matplotlib is imported here only, lazily, and drawn with the Agg canvas (no display, no pyplot
state); without it the plots raise a one-line UserError. Files are written atomically.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxprune.errors import UserError
from onnxprune.model.io import write_atomic, write_text_atomic

COSTS = (("mem", "M (feature-map elements)"), ("macs", "MACs"), ("params", "params"),
         ("weight_bytes", "weight bytes"), ("activations", "activation elements"),
         ("latency", "latency ms (predicted)"))
TARGET_COST = {"mem": "mem", "flops": "macs", "params": "params", "latency": "latency"}
TOP_GROUPS = 10


def _figure(width: float, height: float) -> Any:
    try:
        import matplotlib  # noqa: F401  (first, so a missing package fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                      bbox_inches="tight"), suffix=".png")


def _num(x: float) -> str:
    if isinstance(x, float) and abs(x) < 1e3:  # milliseconds; counts are ints
        return f"{x:.3g}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _ratio(record: dict, key: str) -> float:
    before = record["before"][key]
    return record["after"][key] / before if before else 1.0


def groups_plot(record: dict, path: str | os.PathLike) -> Path:
    """Bars per layer group: original channels (light) with the kept ones drawn over them."""
    groups = [g for g in record["groups"] if g["channels"]]
    if not groups:
        raise UserError("the record has no layer groups to plot")
    fig = _figure(max(6.0, 0.22 * len(groups) + 2), 3.6)
    ax = fig.add_subplot()
    x = range(len(groups))
    ax.bar(x, [g["channels"] for g in groups], color="#d9d9d9", label="original")
    for prunable, color, label in ((True, "#1f77b4", "kept"), (False, "#8c8c8c", "blocked")):
        xs = [i for i, g in zip(x, groups) if g["prunable"] == prunable]
        if xs:
            ax.bar(xs, [groups[i]["kept"] for i in xs], width=0.6, color=color, label=label)
    step = max(1, len(groups) // 40)
    ax.set_xticks(list(x)[::step], [f"#{g['index']}" for g in groups][::step], rotation=90,
                  fontsize=7)
    kept, total = sum(g["kept"] for g in groups), sum(g["channels"] for g in groups)
    ax.set(xlabel="layer group", ylabel="channels",
           title=f"channels kept per layer group: {kept} of {total}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def costs_plot(record: dict, path: str | os.PathLike) -> Path:
    """after / before for every cost, with the target fraction marked on its cost."""
    fig = _figure(6.4, 3.0)
    ax = fig.add_subplot()
    keys = [k for k, _ in COSTS if k in record["before"]]
    ratios = [_ratio(record, k) for k in keys]
    rows = range(len(keys))[::-1]
    ax.barh(list(rows), ratios, color="#1f77b4")
    for y, k, r in zip(rows, keys, ratios):
        ax.text(r + 0.01, y, f"{r:.3f}  ({_num(record['before'][k])} -> "
                f"{_num(record['after'][k])})", va="center", fontsize=8)
    ax.set_yticks(list(rows), [dict(COSTS)[k] for k in keys], fontsize=8)
    target = record.get("options", {}).get("target")
    if target and TARGET_COST.get(target["kind"]) in keys:
        ax.axvline(target["fraction"], color="#d62728", linestyle="--", linewidth=1,
                   label=f"target {target['kind']} {target['fraction']:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlim=(0, max(1.0, *ratios) * 1.45), xlabel="after / before",
           title="costs after pruning, as a fraction of the original")
    return _save(fig, path)


def sweep_plot(points: Sequence[dict], path: str | os.PathLike) -> Path:
    """Latency (and accuracy, if the points have it) against memory, one point per target.

    Each point: {"target", "mem", "macs", "latency_ms", "accuracy"?}; `mem` and `macs` are
    what the pruned model reached (fractions of the original, or absolute counts).
    """
    for i, pt in enumerate(points):
        missing = {"target", "mem", "macs", "latency_ms"} - set(pt)
        if missing:
            raise UserError(f"sweep point {i} lacks {', '.join(sorted(missing))}")
    if not points:
        raise UserError("sweep_plot needs at least one point")
    pts = sorted(points, key=lambda p: p["mem"])
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    mem = [p["mem"] for p in pts]
    ax.plot(mem, [p["latency_ms"] for p in pts], "o-", color="#1f77b4", label="latency")
    for p in pts:
        label = "original" if p["target"] == 1.0 else f"target {p['target']:g}"
        ax.annotate(f"{label}, MACs {p['macs']:.3g}", (p["mem"], p["latency_ms"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    fraction = all(0 < m <= 1.0 for m in mem)
    ax.set(xlabel="feature-map memory M" + (" (fraction of the original)" if fraction else ""),
           ylabel="latency (ms)", title="latency vs memory")
    with_acc = [p for p in pts if p.get("accuracy") is not None]
    if with_acc:
        acc = ax.twinx()
        acc.plot([p["mem"] for p in with_acc], [p["accuracy"] for p in with_acc], "s--",
                 color="#2ca02c", label="accuracy")
        acc.set_ylabel("accuracy")
        ax.legend(handles=ax.get_lines() + acc.get_lines(), loc="best", fontsize=8)
        ax.set_title("latency and accuracy vs memory")
    return _save(fig, path)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _cost_lines(record: dict) -> list[str]:
    rows = [(label, _num(record["before"][k]), _num(record["after"][k]), f"{_ratio(record, k):.3f}")
            for k, label in COSTS if k in record["before"]]
    return _table(("cost", "before", "after", "after / before"), rows, "lrrr")


def _group_lines(record: dict) -> list[str]:
    groups = record["groups"]
    total_mem = record["before"].get("mem") or 1
    pruned = sorted((g for g in groups if g["kept"] < g["channels"]),
                    key=lambda g: (g["kept"] - g["channels"], g["index"]))[:TOP_GROUPS]
    lines = [(f"{sum(g['prunable'] for g in groups)} of {len(groups)} layer groups are prunable; "
              f"{sum(g['kept'] < g['channels'] for g in groups)} were pruned.")]
    if pruned:
        lines += ["", f"Pruned most (top {len(pruned)} by channels removed):", ""]
        rows = [(f"#{g['index']}", f"`{g['tensors'][0]}`" if g["tensors"] else "", g["channels"],
                 g["kept"], g["channels"] - g["kept"], f"{g['mem'] / total_mem:.1%}")
                for g in pruned]
        lines += _table(("group", "first tensor", "channels", "kept", "removed", "share of M"),
                        rows, "llrrrr")
    return lines


def _verdict_lines(record: dict) -> list[str]:
    v = record.get("verification")
    if not v:
        return ["No verification entry."]
    ok = v["max_relative_error"] <= v["tolerance"]
    word = "**exact**" if ok else "**FAILED**"
    extra = "" if v.get("precision", "float32") == "float32" else (
        f"; decided in {v['precision']}, float32 rounding noise {v['float32_error']:.2e}")
    return [(f"{word}: max relative error {v['max_relative_error']:.2e} "
             f"{'<=' if ok else '>'} tolerance {v['tolerance']:g} "
             f"({v.get('runs', '?')} random inputs{extra}).")]


def _latency_lines(latency: Any) -> list[str]:
    """A bench record (`onnxprune bench --json`) as a table; any other dict as key / value."""
    if isinstance(latency, dict) and isinstance(latency.get("models"), list):
        rows = []
        for m in latency["models"]:
            for cell in m["results"].values():
                if "median_ms" not in cell:
                    rows.append((f"`{m['path']}`", cell["batch"], cell.get("error", ""),
                                 "", "", ""))
                    continue
                speedup = f"{cell['speedup']:.2f}x" if cell.get("speedup") else ""
                rows.append((f"`{m['path']}`", cell["batch"], f"{cell['median_ms']:.3f}",
                             f"{cell['p90_ms']:.3f}", f"{cell['throughput']:.1f}", speedup))
        head = [(f"Backend {latency.get('backend', '?')} ({latency.get('precision', 'fp32')}), "
                 "interleaved runs."), ""]
        return head + _table(("model", "batch", "median ms", "p90 ms", "samples/s", "speed-up"),
                             rows, "lrrrrr")
    if isinstance(latency, dict) and isinstance(latency.get("before"), dict):
        rows = [(name, f"{latency[key]['median_ms']:.3f}", f"{latency[key]['p90_ms']:.3f}")
                for key, name in (("before", "original"), ("after", "pruned"))]
        return ([(f"Backend {latency.get('backend', '?')}, batch {latency.get('batch', 1)}, "
                 f"{latency.get('runs', '?')} interleaved runs; speed-up "
                 f"**{latency['speedup']:.2f}x**."), ""]
                + _table(("model", "median ms", "p90 ms"), rows, "lrr"))
    if isinstance(latency, dict):
        return _table(("", "value"), [(k, _fmt(v)) for k, v in latency.items()], "lr")
    return [str(latency)]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_summary(record: dict) -> str:
    opts = record.get("options", {})
    target = opts.get("target", {})
    cost = {"mem": "M", "flops": "MACs", "params": "params",
            "latency": "latency"}.get(target.get("kind"), "?")
    lines = ["# onnxprune summary", "",
             (f"`{record.get('input', '?')}` -> `{record.get('output', '?')}` "
              f"(onnxprune {record.get('onnxprune', '?')})"), "",
             (f"**Target:** {cost} <= {target.get('fraction', '?')} x original; criterion "
              f"`{opts.get('criterion', '?')}`, normalised by `{opts.get('normalize', '?')}`, "
              f"round-to {opts.get('round_to', '?')}, seed {opts.get('seed', '?')}."), "",
             "## Costs", ""] + _cost_lines(record)
    lines += ["", "## Layer groups", ""] + _group_lines(record)
    lines += ["", "## Verification", ""] + _verdict_lines(record)
    timings = record.get("timings") or {}
    if timings:
        lines += ["", "## Timings", "",
                  ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
                  + f"; total {sum(timings.values()):.2f} s."]
    if record.get("latency") is not None:
        lines += ["", "## Latency", ""] + _latency_lines(record["latency"])
    if record.get("latency_target") is not None:
        lines += ["", "## Latency target", ""] + _latency_target_lines(record["latency_target"])
    return "\n".join(lines) + "\n"


def _latency_target_lines(t: dict) -> list[str]:
    verdict = "**met**" if t["met"] else "**missed**"
    rows = [(i + 1, f"{a['planned']:.3f}", f"{a['predicted_ratio']:.3f}",
             f"{a['measured_ratio']:.3f}", "yes" if i == t["chosen"] else "")
            for i, a in enumerate(t["attempts"])]
    head = (f"Target latency {t['fraction']:g} x the original on {t['backend']}: {verdict} "
            f"(predicted {t['predicted']['ratio']:.3f}, measured {t['measured']['ratio']:.3f}).")
    return ([head, ""]
            + _table(("plan", "planned", "predicted", "measured", "kept"), rows, "rrrrl"))


def write_all(record: dict, folder: str | os.PathLike) -> dict[str, Path]:
    """groups.png, costs.png and summary.md in `folder` (which must exist)."""
    folder = Path(folder)
    text = markdown_summary(record)
    return {"groups": groups_plot(record, folder / "groups.png"),
            "costs": costs_plot(record, folder / "costs.png"),
            "summary": write_text_atomic(folder / "summary.md", text)}
