"""Export the model zoo with both exporters, check it in onnxruntime, list ops.

Usage (from the repo root):
    python tools/export_zoo.py                      # full ZOO, both exporters
    python tools/export_zoo.py --small              # SMALL_ZOO only
    python tools/export_zoo.py resnet18 googlenet --exporter dynamo
    python tools/export_zoo.py --cache-dir /tmp/zoo  # fresh cache => real export times

Prints three sections: a results table (export time, ORT ok, max|diff| vs
torch, file size), the sorted op-type set per export plus the union per
exporter, and "forms" worth knowing when writing pruning rules (computed
Reshape shapes, Split forms, Resize, Identity/Constant counts, bias-less
convs, grouped convs, ...).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnxprune.models import zoo  # noqa: E402


@dataclass
class Result:
    """Outcome of exporting and checking one (model, exporter) pair."""

    model: str
    exporter: zoo.Exporter
    export_s: float | None = None  # None: export failed
    cached: bool = False
    ort_ok: bool = False
    max_diff: float = float("nan")
    ref_scale: float = float("nan")
    file_mb: float = float("nan")
    error: str = ""
    op_types: list[str] = field(default_factory=list)
    forms: list[str] = field(default_factory=list)
    opset: int | None = None


def torch_reference(name: str, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random input and the torch model's output for it."""
    model = zoo.build_torch_model(name, seed)
    x = zoo.example_input(image_size, seed=seed + 123)
    with torch.no_grad():
        y = model(x)
    return x.numpy(), y.numpy()


def run_ort(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    """Run the model once on CPU and return its single output."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x}
    return sess.run(None, feeds)[0]


def _const_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            names.update(node.output)
    return names


def _attr(node: onnx.NodeProto, name: str) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def describe_forms(model: onnx.ModelProto) -> list[str]:
    """Human-readable notes on op forms that matter for pruning rules."""
    graph = model.graph
    consts = _const_names(graph)
    counts: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        for note in _node_forms(node, consts):
            counts[note] += 1
    return [f"{note} x{n}" for note, n in sorted(counts.items())]


def _node_forms(node: onnx.NodeProto, consts: set[str]) -> list[str]:
    op = node.op_type
    inputs = list(node.input)
    notes: list[str] = []
    if op in ("Identity", "Constant"):
        notes.append(op)
    elif op == "Conv":
        group = _attr(node, "group") or 1
        if len(inputs) < 3 or not inputs[2]:
            notes.append("Conv without bias")
        if group > 1:
            notes.append("Conv group>1")
    elif op in ("Reshape", "Expand", "Tile", "ConstantOfShape"):
        shape_in = inputs[1] if len(inputs) > 1 else ""
        kind = "const" if shape_in in consts else "computed"
        notes.append(f"{op} with {kind} shape")
    elif op == "Split":
        notes.append(_split_form(node, consts))
    elif op == "Resize":
        mode = _attr(node, "mode")
        notes.append(f"Resize mode={mode.decode() if isinstance(mode, bytes) else mode}")
    elif op in ("Concat", "Flatten", "Softmax", "Gather", "LayerNormalization"):
        notes.append(f"{op} axis={_attr(node, 'axis')}")
    elif op == "Transpose":
        notes.append(f"Transpose perm={_attr(node, 'perm')}")
    elif op == "Slice":
        notes.append(_slice_form(inputs, consts))
    elif op.startswith("Reduce"):
        notes.append(_reduce_form(node, inputs, consts))
    elif op == "Gemm":
        notes.append(f"Gemm transB={_attr(node, 'transB')}")
    elif op in ("Add", "Sub", "Mul", "Div", "Pow", "Where"):
        kinds = "+".join("const" if i in consts else "tensor" for i in inputs)
        notes.append(f"{op} {kinds}")
    elif op == "Clip":
        kinds = ",".join("const" if i in consts else ("none" if not i else "tensor")
                         for i in inputs[1:])
        notes.append(f"Clip min/max={kinds or 'none'}")
    return notes


def _split_form(node: onnx.NodeProto, consts: set[str]) -> str:
    inputs = list(node.input)
    parts = [f"axis={_attr(node, 'axis')}", f"outputs={len(node.output)}"]
    if _attr(node, "num_outputs") is not None:
        parts.append("num_outputs attr")
    if _attr(node, "split") is not None:
        parts.append("split attr")
    if len(inputs) > 1 and inputs[1]:
        parts.append("split input " + ("const" if inputs[1] in consts else "computed"))
    return "Split " + " ".join(parts)


def _slice_form(inputs: list[str], consts: set[str]) -> str:
    computed = [i for i in inputs[1:] if i and i not in consts]
    return "Slice " + ("computed starts/ends/axes" if computed else "const params")


def _reduce_form(node: onnx.NodeProto, inputs: list[str], consts: set[str]) -> str:
    axes_attr = _attr(node, "axes")
    if axes_attr is not None:
        axes = f"axes attr={axes_attr}"
    elif len(inputs) > 1 and inputs[1]:
        axes = "axes input " + ("const" if inputs[1] in consts else "computed")
    else:
        axes = "all axes"
    return f"{node.op_type} {axes} keepdims={_attr(node, 'keepdims')}"


def check_one(name: str, exporter: zoo.Exporter, args: argparse.Namespace,
              ref: tuple[np.ndarray, np.ndarray]) -> Result:
    """Export (or reuse), run in ORT, compare with torch, collect op info."""
    res = Result(name, exporter)
    path = args.cache_dir / zoo.cache_file_name(name, exporter, args.image_size, args.seed)
    res.cached = path.exists()
    t0 = time.perf_counter()
    try:
        path = zoo.cached_model(name, exporter, args.image_size, args.cache_dir,
                                seed=args.seed)
    except Exception as exc:  # noqa: BLE001 - report and continue with the zoo
        res.error = f"export: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        traceback.print_exc(file=sys.stderr)
        return res
    res.export_s = time.perf_counter() - t0
    res.file_mb = path.stat().st_size / 2**20
    model = onnx.load(str(path))
    res.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    res.op_types = sorted({f"{n.domain}::{n.op_type}" if n.domain else n.op_type
                           for n in model.graph.node})
    res.forms = describe_forms(model)
    x, y_ref = ref
    try:
        y = run_ort(path, x)
    except Exception as exc:  # noqa: BLE001
        res.error = f"ort: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        return res
    res.max_diff = float(np.max(np.abs(y - y_ref))) if y.shape == y_ref.shape else float("inf")
    res.ref_scale = float(np.max(np.abs(y_ref)))
    res.ort_ok = res.max_diff <= args.atol + args.rtol * res.ref_scale
    if not res.ort_ok:
        res.error = f"mismatch (shape {y.shape} vs {y_ref.shape})"
    return res


def print_table(results: list[Result]) -> None:
    head = f"{'model':<20} {'exporter':<11} {'opset':>5} {'export s':>9} {'ORT ok':>6} " \
           f"{'max|diff|':>10} {'max|ref|':>9} {'MB':>7}  note"
    print(head)
    print("-" * len(head))
    for r in results:
        exp = "FAIL" if r.export_s is None else f"{r.export_s:.1f}" + ("c" if r.cached else "")
        print(f"{r.model:<20} {r.exporter.value:<11} {r.opset or '-':>5} {exp:>9} "
              f"{'yes' if r.ort_ok else 'NO':>6} {r.max_diff:>10.2e} {r.ref_scale:>9.2f} "
              f"{r.file_mb:>7.1f}  {r.error}")
    print("(export s with suffix 'c' = reused from cache)")


def print_ops(results: list[Result]) -> None:
    print("\n== op types per export ==")
    for r in results:
        print(f"{r.model} [{r.exporter.value}]: {' '.join(r.op_types)}")
    print("\n== union of op types per exporter ==")
    for exporter in zoo.Exporter:
        union = sorted({op for r in results if r.exporter is exporter for op in r.op_types})
        print(f"{exporter.value} ({len(union)}): {' '.join(union)}")
    print("\n== op forms per export ==")
    for r in results:
        print(f"{r.model} [{r.exporter.value}]: " + "; ".join(r.forms))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="model names (default: the whole ZOO)")
    p.add_argument("--small", action="store_true", help="use SMALL_ZOO")
    p.add_argument("--exporter", choices=[e.value for e in zoo.Exporter], action="append",
                   help="exporter(s) to use (default: both)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cache-dir", type=pathlib.Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="tolerance relative to max|torch output|")
    args = p.parse_args(argv)
    args.cache_dir = args.cache_dir or zoo.default_cache_dir()
    args.models = args.models or list(zoo.SMALL_ZOO if args.small else zoo.ZOO)
    args.exporters = [zoo.Exporter(e) for e in (args.exporter or [e.value for e in zoo.Exporter])]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[Result] = []
    for name in args.models:
        ref = torch_reference(name, args.image_size, args.seed)
        for exporter in args.exporters:
            r = check_one(name, exporter, args, ref)
            print(f"[{name} / {exporter.value}] ok={r.ort_ok} diff={r.max_diff:.2e} "
                  f"{r.error}", file=sys.stderr, flush=True)
            results.append(r)
    print_table(results)
    print_ops(results)
    return 0 if all(r.ort_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
