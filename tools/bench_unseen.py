"""Prune models onnxprune was not developed on, and re-check every prune independently.

    python tools/bench_unseen.py [--models dla34,ocr_rec] [--targets 0.7,0.5] [--no-ocr]
                                 [--exporters torchscript,dynamo] [--no-timm] [--workdir DIR]

Models (a missing optional package prints one line and its part is skipped):
- timm: architectures outside the torchvision zoo, pretrained=False, 1x3x224x224, exported with
  dynamo=False (opset 17) and dynamo=True (one file), cached in $ONNXPRUNE_CACHE/unseen (default
  ~/.cache/onnxprune/unseen).
  timm's default init leaves many nearly input-independent, which blinds the oracle, so every
  constant-valued parameter is re-drawn and BatchNorm statistics are calibrated (seeded).
- rapidocr-onnxruntime: the trained PaddleOCR det / cls / rec models shipped in the wheel.

Per model and target: `python -m onnxprune MODEL --target-mem T -o OUT --report R [--input-shape
S]` in a subprocess, then the oracle recomputed from the report's `slices` without onnxprune's
verifier: zero `removed` along `axis` of every sink weight, run reference and pruned model in
onnxruntime on a new random input, require max |pruned - ref| <= 1e-4 * max(1, max |ref|).
Zeroing uses the original file, input fixed to the analysis shape ("orig"), when every sink is
one of its initializers or Constant outputs and none is all-equal and shared; otherwise (folded
weights, `<name>__<node>_<slot>` copies) onnxprune's normalised model
`onnxprune.api.analyze(path, shapes).model` ("norm"). If float32 fails, float64 decides
(onnxprune.verify.precision.run_float64): "f64". Summary: N model files, K pruned at every target, E
with an exit 2, F with an internal error (exit 1, timeout) or a failed recomputation (exit 1).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from onnxprune.model.io import cache_dir, write_atomic  # noqa: E402

TIMM_MODELS = ("cspresnet50", "dla34", "dpn68", "resnest14d", "repvgg_a0", "ghostnetv2_100",
               "hrnet_w18_small", "res2net50_14w_8s", "skresnet18", "rexnet_100",
               "tf_efficientnet_lite0", "mobilevit_xxs", "efficientformerv2_s0", "efficientvit_b0",
               "inception_v3", "convnext_atto", "deit_tiny_patch16_224", "vit_small_patch16_224",
               "swin_tiny_patch4_window7_224", "levit_128s")
OCR_MODELS = {"ocr_det": ("ch_PP-OCRv4_det_infer.onnx", "1x3x640x640"),
              "ocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "1x3x48x192"),
              "ocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", "1x3x48x320")}
TOLERANCE, SEED, IMAGE, TIMEOUT = 1e-4, 0, 224, 3600
EXPORT_FAILURES: list[str] = []


@dataclass
class Case:
    name: str
    source: str
    exporter: str
    path: Path
    shape: str | None = None
    analysis: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)  # target -> run record


def randomize(model, seed: int):
    """Re-draw constant-valued parameters, calibrate BatchNorm statistics; eval mode."""
    import torch

    from onnxprune.models.other import redraw_constant_parameters

    gen = torch.Generator().manual_seed(seed)
    redraw_constant_parameters(model, gen)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, IMAGE, IMAGE, generator=gen))
    return model.eval()


def export_timm(name: str, exporter: str, path: Path) -> None:
    """Build, randomise (one torch thread: deterministic) and export atomically."""
    import timm
    import torch
    torch.set_num_threads(1)

    def export(tmp: str) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.manual_seed(SEED)
            model = randomize(timm.create_model(name, pretrained=False), SEED)
            x = torch.randn(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(SEED))
            io_names = dict(input_names=["input"], output_names=["output"])
            if exporter == "torchscript":
                torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=17, **io_names)
            else:
                torch.onnx.export(model, (x,), None, dynamo=True, **io_names).save(
                    tmp, external_data=False)

    write_atomic(path, export)


def timm_cases(names, exporters) -> list[Case]:
    try:
        import timm
        import torch
    except ImportError as exc:
        print(f"skipping the timm models: {exc} (pip install timm)")
        return []
    cache = cache_dir("unseen")
    cache.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^0-9A-Za-z.]+", "_", f"torch{torch.__version__}-timm{timm.__version__}")
    cases = []
    for name in names:
        for exporter in exporters:
            path = cache / f"timm-{name}-{exporter}-{IMAGE}-cal-s{SEED}-{tag}.onnx"
            try:
                if not path.exists():
                    tick = time.perf_counter()
                    export_timm(name, exporter, path)
                    print(f"exported {path.name} in {time.perf_counter() - tick:.0f} s", flush=True)
                cases.append(Case(name, "timm, random (cal.)", exporter, path))
            except Exception as exc:  # a torch / timm problem, not onnxprune's
                EXPORT_FAILURES.append(f"{name} ({exporter}): {type(exc).__name__}: {exc}"[:300])
                print(f"export FAILED: {EXPORT_FAILURES[-1]}", flush=True)
    return cases


def ocr_cases(names) -> list[Case]:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        print("skipping the PaddleOCR models: no module rapidocr_onnxruntime "
              "(pip install rapidocr-onnxruntime)")
        return []
    folder = Path(spec.origin).parent / "models"
    def opset(path):
        return max(o.version for o in onnx.load(str(path)).opset_import if not o.domain)
    return [Case(name, "PaddleOCR, trained", f"Paddle, opset {opset(folder / file)}", folder / file,
                 shape) for name, (file, shape) in OCR_MODELS.items() if name in names]


def cli(args: list[str], log: Path):
    """`python -m onnxprune ARGS` -> (exit, stdout, stderr, wall s); the ONNXPRUNE_DEBUG
    traceback of an internal error is saved to `log`."""
    command, tick = [sys.executable, "-m", "onnxprune", *args], time.perf_counter()
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, "", f"timeout after {TIMEOUT} s", time.perf_counter() - tick
    wall, err = time.perf_counter() - tick, p.stderr.strip()
    if p.returncode not in (0, 2):
        env = dict(os.environ, ONNXPRUNE_DEBUG="1")
        log.write_text(subprocess.run(command, capture_output=True, text=True, env=env).stderr)
        err += f" [traceback: {log}]"
    return p.returncode, p.stdout, err, wall


def analyze_case(case: Case, workdir: Path) -> None:
    args = ["analyze", str(case.path)] + (["--input-shape", case.shape] if case.shape else [])
    rc, out, err, _ = cli(args, workdir / f"{case.path.stem}.analyze.traceback.txt")
    share = re.search(r"prunable share of M: ([\d.]+%)", out)
    minimum = re.search(r"--target-mem ([\d.]+)", out)
    case.analysis = {"rc": rc, "error": err, "share": share and share.group(1),
                     "min": minimum and minimum.group(1)}


def prune_case(case: Case, target: str, workdir: Path) -> dict:
    stem = f"{case.path.stem}.{target}"
    out, report = workdir / f"{stem}.onnx", workdir / f"{stem}.json"
    args = [str(case.path), "--target-mem", target, "-o", str(out), "--report", str(report)]
    args += ["--input-shape", case.shape] if case.shape else []
    rc, _, err, wall = cli(args, workdir / f"{stem}.traceback.txt")
    run = {"rc": rc, "wall": wall, "error": (err.splitlines() or [""])[0] if rc == 2 else err}
    if rc == 0:
        rec = json.loads(report.read_text())
        run.update(mem=rec["ratio"]["mem"], seconds=sum(rec["timings"].values()),
                   oracle=rec["verification"])
        try:
            run["check"] = recompute(case.path, rec, out)
        except Exception as exc:  # the check itself crashed: a failure too
            run["check"] = {"ok": False, "where": "?", "precision": "?",
                            "crash": f"{type(exc).__name__}: {exc}"}
        out.unlink()  # reports stay; pruned models would fill the disk
    return run


def graph_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fix_shapes(model, shapes: dict) -> None:
    """The analysis shape on the inputs (other dynamic dims 1); output shapes that the new
    input shape may contradict (Paddle stores -1 dims) are dropped."""
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        want = shapes.get(inp.name) or [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        for dim, value in zip(dims, want):
            dim.Clear()
            dim.dim_value = int(value)
    for out in model.graph.output:
        if any(not d.HasField("dim_value") or d.dim_value <= 0
               for d in out.type.tensor_type.shape.dim):
            out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]


def weights(model) -> dict:
    """Initializers and single-tensor Constant nodes (PaddlePaddle), by tensor name."""
    found = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            found[node.output[0]] = node.attribute[0].t
    return found


def names_match(model, sinks) -> bool:
    """Every sink is a weight here and none is all-equal and read by several nodes (onnxprune
    gives each reader its own copy: zeroing the shared tensor would zero too much)."""
    found = weights(model)
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    readers = collections.Counter()
    for node in model.graph.node:
        for name in node.input if node.op_type != "Identity" else ():
            while name in alias:
                name = alias[name]
            readers[name] += 1
    for name in sinks:
        value = numpy_helper.to_array(found[name]) if name in found else None
        shared = value is not None and readers[name] > 1 and value.size > 1
        if value is None or (shared and np.all(value == value.flat[0])):
            return False
    return True


def zero_sinks(model, sinks: dict) -> None:
    for name, tensor in weights(model).items():
        if name in sinks:
            value = numpy_helper.to_array(tensor).copy()
            for axis, removed in sinks[name]:
                value[(slice(None),) * axis + (removed,)] = 0
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def run_ort(model, feeds: dict) -> dict:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def worst_error(got: dict, want: dict) -> float:
    if set(got) != set(want):
        raise ValueError(f"outputs differ: {sorted(got)} vs {sorted(want)}")
    worst = 0.0
    for name, ref in want.items():
        ref = np.asarray(ref, np.float64)
        diff = float(np.abs(np.asarray(got[name], np.float64) - ref).max(initial=0))
        worst = max(worst, diff / max(1.0, float(np.abs(ref).max(initial=0))))
    return worst


def recompute(path: Path, report: dict, pruned_path: Path) -> dict:
    shapes = {k: tuple(v) for k, v in report["options"]["input_shapes"].items()}
    sinks = collections.defaultdict(list)
    for s in report["slices"]:
        if s["role"] in ("sink", "mask"):
            sinks[s["initializer"]].append((s["axis"], s["removed"]))
    reference, where = onnx.load(str(path)), "orig"
    fix_shapes(reference, shapes)
    if not names_match(reference, sinks):
        from onnxprune.api import analyze
        reference, where = analyze(str(path), shapes).model, "norm"
    zero_sinks(reference, sinks)
    pruned, rng, feeds = onnx.load(str(pruned_path)), np.random.default_rng(12345), {}
    for inp in graph_inputs(reference):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = (rng.standard_normal(dims) if np.issubdtype(dtype, np.floating)
                           else rng.integers(0, 4, dims)).astype(dtype)
    err = worst_error(run_ort(pruned, feeds), run_ort(reference, feeds))
    check = {"ok": err <= TOLERANCE, "where": where, "error": err, "precision": "f32"}
    if not check["ok"]:
        from onnxprune.verify.precision import run_float64
        def outputs(m):
            return dict(zip([o.name for o in m.graph.output], run_float64(m, feeds)))
        err64 = worst_error(outputs(pruned), outputs(reference))
        check.update(ok=err64 <= TOLERANCE, error64=err64, precision="f64")
    return check


def oracle_cells(run: dict) -> tuple[str, str]:
    """onnxprune's oracle error and the recomputed check, for one run."""
    if run["rc"] != 0:
        return "—", "—"
    oracle, check = run["oracle"], run["check"]
    mine = check.get("error64", check.get("error", float("nan")))
    return (f"{oracle['max_relative_error']:.0e}" + " f64" * (oracle["precision"] == "float64"),
            f"{'ok' if check['ok'] else 'FAIL'} {mine:.0e} {check['where']}"
            + " f64" * (check["precision"] == "f64"))


def row(case: Case, targets: list[str]) -> str:
    runs, a, last = [case.runs[t] for t in targets], case.analysis, case.runs[targets[-1]]
    oracle, check = zip(*map(oracle_cells, runs))
    cells = [case.name, case.source, case.exporter,
             *["timeout" if r["rc"] is None else str(r["rc"]) for r in runs],
             f"{last['mem']:.3f}" if last["rc"] == 0 else "—",
             (f"{last['seconds']:.2f}" if last["rc"] == 0 else "—") + f" ({last['wall']:.1f})",
             " / ".join(oracle), " / ".join(check), a["share"] or "—", a["min"] or "—"]
    return "| " + " | ".join(cells) + " |"


def problems(case: Case) -> tuple[list[str], bool]:
    """Note lines (exit 2 reasons, internal errors, failed checks) and whether any failed."""
    who, a, notes = f"- {case.name} ({case.exporter})", case.analysis, []
    if a["rc"] != 0:
        notes.append((f"{who} analyze: INTERNAL ERROR (exit {a['rc']}): {a['error']}", True))
    for t, r in case.runs.items():
        if r["rc"] == 2:
            notes.append((f"{who} @{t}: exit 2: {r['error']}", False))
        elif r["rc"] != 0:
            notes.append((f"{who} @{t}: INTERNAL ERROR (exit {r['rc']}): {r['error']}", True))
        elif not r["check"]["ok"]:
            notes.append((f"{who} @{t}: RECOMPUTATION FAILED: {r['check']}", True))
    return [text for text, _ in notes], any(bad for _, bad in notes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated subset: timm names, ocr_det, ocr_cls, ocr_rec")
    p.add_argument("--targets", default="0.7,0.5", help="--target-mem values (default 0.7,0.5)")
    p.add_argument("--exporters", default="torchscript,dynamo")
    p.add_argument("--no-ocr", action="store_true")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--workdir", help="reports, tracebacks, results.json (default: new temp dir)")
    args = p.parse_args()
    wanted = args.models.split(",") if args.models else [*OCR_MODELS, *TIMM_MODELS]
    targets = args.targets.split(",")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_unseen."))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = [] if args.no_ocr else ocr_cases(wanted)
    if not args.no_timm:
        cases += timm_cases([m for m in wanted if m not in OCR_MODELS], args.exporters.split(","))
    for case in cases:
        analyze_case(case, workdir)
        case.runs = {t: prune_case(case, t, workdir) for t in targets}
        print(f"done {case.path.name}: exits {[r['rc'] for r in case.runs.values()]}", flush=True)
    at = " / ".join(f"@{t}" for t in targets)
    print(f"\nonnxprune --target-mem T, criterion l1, round-to 8; reports in {workdir}\n\n"
          f"| model | source | exporter | {' | '.join(f'exit@{t}' for t in targets)} | "
          f"M@{targets[-1]} | pipeline s @{targets[-1]} (wall) | oracle err {at} | "
          f"recomputed oracle {at} | prunable M | reachable min M |\n"
          + "|---" * (9 + len(targets)) + "|")
    for case in cases:
        print(row(case, targets))
    records = [{**vars(c), "path": str(c.path)} for c in cases]
    (workdir / "results.json").write_text(json.dumps(records, indent=1))
    checked = [problems(case) for case in cases]
    notes = [line for lines, _ in checked for line in lines]
    print("".join(f"\n{line}" for line in notes) + "\n" * bool(notes))
    pruned = sum(all(r["rc"] == 0 for r in c.runs.values()) for c in cases)
    exit2 = sum(any(r["rc"] == 2 for r in c.runs.values()) for c in cases)
    failures = sum(failed for _, failed in checked)
    exports = f", {len(EXPORT_FAILURES)} export failures" if EXPORT_FAILURES else ""
    print(f"{len(cases)} models, {pruned} pruned, {exit2} exit-2, {failures} failures{exports}")
    print("".join(f"- export failed: {line}\n" for line in EXPORT_FAILURES), end="")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
