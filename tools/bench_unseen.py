"""Prune models onnxprune was not developed on and re-check every prune independently.

    python tools/bench_unseen.py [--models dla34,ocr_rec] [--targets 0.7,0.5]
                                 [--exporters torchscript,dynamo] [--no-ocr] [--no-timm]
                                 [--workdir DIR]

Models (needs the optional packages; a missing one prints one line and its part is skipped):
- timm (`pip install timm`): architectures torchvision lacks, pretrained=False, 1x3x224x224,
  exported with torch.onnx.export(dynamo=False, opset 17) and dynamo=True (one self-contained
  file), cached under $ONNXPRUNE_CACHE or ~/.cache/onnxprune/unseen (atomic writes).
  timm's default init makes many of them nearly input-independent (zero-init last BN gammas,
  layer scale 1e-6, identity BN statistics), which leaves the oracle blind; so every
  constant-valued parameter is re-drawn (gammas U(0.5, 1.5), biases N(0, 0.1), matrices
  Kaiming) and BatchNorm statistics are calibrated on 4 random batches (seeded).
- rapidocr-onnxruntime: the trained PaddleOCR det / cls / rec models shipped in the wheel.

For each model and target the real CLI runs in a subprocess (`python -m onnxprune MODEL
--target-mem T -o OUT --report R [--input-shape S]`), then the oracle is recomputed from the
report without onnxprune's verifier: zero the `removed` indices along `axis` of every
`role == "sink"` initializer, run reference and pruned model in onnxruntime (optimisations off)
on a fresh random input, require max |pruned - ref| <= 1e-4 * max(1, max |ref|) per output.
The zeroing is applied to the original file with its input fixed to the analysis shape
("orig") when every sink name is one of its initializers and none is an all-equal tensor shared
by several nodes; otherwise (Paddle Constant-node weights, folded weights, `<name>__<node>_<slot>`
copies) to onnxprune's normalised model `onnxprune.api.analyze(path, shapes).model` ("norm").
If float32 fails, float64 decides (onnx reference evaluator via onnxprune.precision.run_float64),
shown as "f64". Summary: N model files, K pruned at every target, E with an exit 2, F with an
internal error (exit 1 / timeout) or a failed recomputation; exit status 1 when F > 0.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

TIMM_MODELS = ("cspresnet50", "dla34", "dpn68", "resnest14d", "repvgg_a0", "ghostnetv2_100",
               "hrnet_w18_small", "res2net50_14w_8s", "skresnet18", "rexnet_100",
               "tf_efficientnet_lite0", "mobilevit_xxs", "efficientformerv2_s0", "efficientvit_b0",
               "inception_v3", "convnext_atto")
OCR_MODELS = {"ocr_det": ("ch_PP-OCRv4_det_infer.onnx", "1x3x640x640"),
              "ocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "1x3x48x192"),
              "ocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", "1x3x48x320")}
EXPORTERS = ("torchscript", "dynamo")
TOLERANCE, SEED, IMAGE, TIMEOUT = 1e-4, 0, 224, 3600
EXPORT_FAILURES: list[str] = []


@dataclass
class Case:
    name: str
    source: str
    exporter: str
    path: Path
    shape: str | None = None
    runs: dict = field(default_factory=dict)      # target -> run record
    analysis: dict = field(default_factory=dict)


# ---------------------------------------------------------------- timm models

def randomize(model, seed: int):
    """Re-draw constant-valued parameters and calibrate BatchNorm statistics (in place)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.reshape(-1)
            if flat.numel() > 1 and not bool((flat == flat[0]).all()) and p.abs().max() > 0:
                continue
            if p.ndim >= 2:
                torch.nn.init.kaiming_normal_(p, generator=gen)
            elif name.endswith("bias") or "beta" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, IMAGE, IMAGE, generator=gen))
    return model.eval()


def export_timm(name: str, exporter: str, path: Path) -> None:
    import contextlib
    import io
    import warnings

    import timm
    import torch
    torch.manual_seed(SEED)
    model = randomize(timm.create_model(name, pretrained=False), SEED)
    x = torch.randn(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(SEED))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            kw = dict(input_names=["input"], output_names=["output"])
            if exporter == "torchscript":
                torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=17, **kw)
            else:
                torch.onnx.export(model, (x,), None, dynamo=True, **kw).save(
                    tmp, external_data=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def timm_cases(names, exporters) -> list[Case]:
    try:
        import timm
        import torch
    except ImportError as exc:
        print(f"skipping timm models: {exc} (pip install timm)")
        return []
    cache = Path(os.environ.get("ONNXPRUNE_CACHE") or Path.home() / ".cache/onnxprune/unseen")
    cache = cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^0-9A-Za-z.]+", "_", f"torch{torch.__version__}-timm{timm.__version__}")
    cases = []
    for name in names:
        for exporter in exporters:
            path = cache / f"timm-{name}-{exporter}-{IMAGE}-cal-s{SEED}-{tag}.onnx"
            if not path.exists():
                tick = time.perf_counter()
                try:
                    export_timm(name, exporter, path)
                except Exception as exc:  # a torch / timm problem, not onnxprune's
                    EXPORT_FAILURES.append(f"{name} ({exporter}): {type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    print(f"export FAILED: {EXPORT_FAILURES[-1]}", flush=True)
                    continue
                print(f"exported {path.name} in {time.perf_counter() - tick:.0f} s", flush=True)
            cases.append(Case(name, "timm, input-sensitive random", exporter, path))
    return cases


def ocr_cases(names) -> list[Case]:
    import importlib.util
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        print("skipping PaddleOCR models: rapidocr_onnxruntime is not installed "
              "(pip install rapidocr-onnxruntime)")
        return []
    folder = Path(spec.origin).parent / "models"
    return [Case(name, "PaddleOCR (rapidocr), trained", "paddle2onnx", folder / file, shape)
            for name, (file, shape) in OCR_MODELS.items() if name in names]


# ---------------------------------------------------------------- the CLI

def cli(args: list[str], debug: bool = False):
    env = dict(os.environ, ONNXPRUNE_DEBUG="1") if debug else None
    tick = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True,
                           text=True, timeout=TIMEOUT, env=env)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - tick
    except subprocess.TimeoutExpired:
        return None, "", f"timeout after {TIMEOUT} s", time.perf_counter() - tick


def internal_error(stem: str, args: list[str], stderr: str, workdir: Path) -> str:
    """The error line, with the ONNXPRUNE_DEBUG traceback saved next to the reports."""
    log = workdir / f"{stem}.traceback.txt"
    log.write_text(cli(args, debug=True)[2])
    return f"{stderr.strip()} [traceback: {log}]"


def analyze_case(case: Case, workdir: Path) -> None:
    args = ["analyze", str(case.path)] + (["--input-shape", case.shape] if case.shape else [])
    rc, out, err, _ = cli(args)
    share = re.search(r"prunable share of M: ([\d.]+)%", out)
    minimum = re.search(r"--target-mem ([\d.]+)", out)
    case.analysis = {"rc": rc, "share": share and share.group(1),
                     "min": minimum and minimum.group(1)}
    if rc != 0:
        case.analysis["error"] = internal_error(f"{case.path.stem}.analyze", args, err, workdir)


def prune_case(case: Case, target: str, workdir: Path) -> dict:
    stem = f"{case.path.stem}.{target}"
    out, report = workdir / f"{stem}.onnx", workdir / f"{stem}.json"
    args = [str(case.path), "--target-mem", target, "-o", str(out), "--report", str(report)]
    args += ["--input-shape", case.shape] if case.shape else []
    rc, _, err, wall = cli(args)
    run = {"rc": rc, "wall": wall}
    if rc == 2:
        run["reason"] = err.strip().splitlines()[0].removeprefix("onnxprune: error: ")
    elif rc != 0:
        run["error"] = internal_error(stem, args, err, workdir)
    else:
        rec = json.loads(report.read_text())
        run.update(mem=rec["ratio"]["mem"], seconds=sum(rec["timings"].values()),
                   oracle=rec["verification"])
        try:
            run["recomputed"] = recompute(case.path, rec, out)
        except Exception as exc:  # the check itself crashed: that is a failure too
            run["recomputed"] = {"ok": False, "where": "?", "detail": f"{type(exc).__name__}: {exc}"}
    return run


# ---------------------------------------------------------------- independent oracle

def graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def fix_shapes(model, shapes: dict) -> None:
    """Static analysis shape on the inputs; drop output shapes stored as -1 (Paddle)."""
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        want = shapes.get(inp.name) or [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        for dim, value in zip(dims, want):
            dim.Clear()
            dim.dim_value = int(value)
    for out in model.graph.output:
        if any(d.HasField("dim_value") and d.dim_value <= 0 for d in out.type.tensor_type.shape.dim):
            out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]


def constants(model) -> dict:
    """Weights by name: initializers and single-tensor Constant nodes (PaddlePaddle)."""
    found = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            found[node.output[0]] = node.attribute[0].t
    return found


def names_match(model, sinks) -> bool:
    """Every sink is a weight here, and none is an all-equal tensor read by several nodes
    (onnxprune gives each reader its own copy, so zeroing the shared one would zero too much)."""
    weights = constants(model)
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    readers = collections.Counter()
    for node in model.graph.node:
        if node.op_type != "Identity":
            for name in node.input:
                while name in alias:
                    name = alias[name]
                readers[name] += 1
    for name in sinks:
        if name not in weights:
            return False
        value = numpy_helper.to_array(weights[name])
        if readers[name] > 1 and value.size > 1 and np.all(value == value.reshape(-1)[0]):
            return False
    return True


def zero_sinks(model, sinks: dict) -> None:
    for name, tensor in constants(model).items():
        if name in sinks:
            value = numpy_helper.to_array(tensor).copy()
            for axis, removed in sinks[name]:
                index = [slice(None)] * value.ndim
                index[axis] = removed
                value[tuple(index)] = 0
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def run_ort(model, feeds: dict) -> dict:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def worst_error(got: dict, want: dict) -> float:
    if set(got) != set(want):
        raise ValueError(f"outputs differ: {sorted(got)} vs {sorted(want)}")
    worst = 0.0
    for name, ref in want.items():
        ref = np.asarray(ref, np.float64)
        diff = np.abs(np.asarray(got[name], np.float64) - ref)
        worst = max(worst, float(diff.max(initial=0)) / max(1.0, float(np.abs(ref).max(initial=0))))
    return worst


def recompute(path: Path, report: dict, pruned_path: Path) -> dict:
    shapes = {k: tuple(v) for k, v in report["options"]["input_shapes"].items()}
    sinks = collections.defaultdict(list)
    for s in report["slices"]:
        if s["role"] == "sink":
            sinks[s["initializer"]].append((s["axis"], s["removed"]))
    reference, where = onnx.load(str(path)), "orig"
    fix_shapes(reference, shapes)
    if not names_match(reference, sinks):
        from onnxprune.api import analyze
        reference, where = analyze(str(path), shapes).model, "norm"
    zero_sinks(reference, sinks)
    pruned = onnx.load(str(pruned_path))
    rng = np.random.default_rng(12345)
    feeds = {}
    for inp in graph_inputs(reference):
        tt = inp.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = [d.dim_value for d in tt.shape.dim]
        feeds[inp.name] = (rng.standard_normal(dims) if np.issubdtype(dtype, np.floating)
                           else rng.integers(0, 4, dims)).astype(dtype)
    err = worst_error(run_ort(pruned, feeds), run_ort(reference, feeds))
    result = {"ok": err <= TOLERANCE, "where": where, "error": err, "precision": "f32"}
    if not result["ok"]:
        from onnxprune.precision import run_float64
        names = [o.name for o in reference.graph.output]
        got = dict(zip([o.name for o in pruned.graph.output], run_float64(pruned, feeds)))
        err64 = worst_error(got, dict(zip(names, run_float64(reference, feeds))))
        result.update(ok=err64 <= TOLERANCE, error64=err64, precision="f64")
    return result


# ---------------------------------------------------------------- the table

def cell_exit(run: dict) -> str:
    return "timeout" if run["rc"] is None else str(run["rc"])


def cell_oracle(run: dict) -> str:
    if run["rc"] != 0:
        return "—"
    v = run["oracle"]
    return f"{v['max_relative_error']:.0e}" + (" f64" if v["precision"] == "float64" else "")


def cell_check(run: dict) -> str:
    if run["rc"] != 0:
        return "—"
    r = run["recomputed"]
    return f"{'ok' if r['ok'] else 'FAIL'} {r['where']}" + (" f64" if r["precision"] == "f64" else "")


def row(case: Case, targets: list[str]) -> str:
    runs = [case.runs[t] for t in targets]
    last = runs[-1]
    mem = f"{last['mem']:.3f}" if last["rc"] == 0 else "—"
    secs = (f"{last['seconds']:.2f} ({last['wall']:.1f})" if last["rc"] == 0
            else f"— ({last['wall']:.1f})")
    a = case.analysis
    cells = [case.name, case.source, case.exporter, *[cell_exit(r) for r in runs], mem, secs,
             " / ".join(cell_oracle(r) for r in runs), " / ".join(cell_check(r) for r in runs),
             f"{a['share']}%" if a.get("share") else "—", a.get("min") or "—"]
    return "| " + " | ".join(cells) + " |"


def notes(case: Case) -> list[str]:
    out = []
    if case.analysis.get("error"):
        out.append(f"- {case.name} ({case.exporter}) analyze: INTERNAL ERROR "
                   f"{case.analysis['error']}")
    for t, run in case.runs.items():
        rec = run.get("recomputed")
        if run["rc"] == 2:
            out.append(f"- {case.name} ({case.exporter}) @{t}: exit 2: {run['reason']}")
        elif run["rc"] != 0:
            out.append(f"- {case.name} ({case.exporter}) @{t}: INTERNAL ERROR {run['error']}")
        elif not rec["ok"]:
            out.append(f"- {case.name} ({case.exporter}) @{t}: RECOMPUTATION FAILED: {rec}")
    return out


def failed(case: Case) -> bool:
    return case.analysis.get("rc") != 0 or any(
        r["rc"] not in (0, 2) or (r["rc"] == 0 and not r["recomputed"]["ok"])
        for r in case.runs.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated subset (timm names, ocr_det/cls/rec)")
    p.add_argument("--targets", default="0.7,0.5", help="--target-mem values (default 0.7,0.5)")
    p.add_argument("--exporters", default=",".join(EXPORTERS))
    p.add_argument("--no-ocr", action="store_true")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--workdir", help="pruned models, reports, tracebacks (default: a temp dir)")
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
        for t in targets:
            case.runs[t] = prune_case(case, t, workdir)
        print(f"done {case.path.stem}: exits {[r['rc'] for r in case.runs.values()]}", flush=True)
    ex = " / ".join(f"@{t}" for t in targets)
    print(f"\nonnxprune --target-mem T (criterion l1, round-to 8); reports in {workdir}\n")
    print(f"| model | source | exporter | {' | '.join(f'exit@{t}' for t in targets)} | "
          f"M@{targets[-1]} | pipeline s @{targets[-1]} (wall) | oracle err {ex} | "
          f"recomputed oracle {ex} | prunable M | reachable min M |")
    print("|" + "---|" * (9 + len(targets)))
    for case in cases:
        print(row(case, targets))
    lines = [line for case in cases for line in notes(case)]
    print("\n" + "\n".join(lines) if lines else "")
    pruned = sum(all(r["rc"] == 0 for r in c.runs.values()) for c in cases)
    exit2 = sum(any(r["rc"] == 2 for r in c.runs.values()) for c in cases)
    failures = sum(failed(c) for c in cases)
    skipped = f", {len(EXPORT_FAILURES)} export failures" if EXPORT_FAILURES else ""
    print(f"{len(cases)} models, {pruned} pruned, {exit2} exit-2, {failures} failures{skipped}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
