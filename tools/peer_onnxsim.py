"""onnxsim 0.8.1 as a measured peer: its structured L2 / Wanda channel pruning, with or without
its closed-form ridge refit, on the same files, targets and calibration images as onnxprune.

    python tools/peer_onnxsim.py --models resnet20,mobilenetv2_small --folded both \
        --targets 0.7,0.5,0.3 --data calib.npz --out DIR [--reference]

Prints one Markdown row per (model, BN form, target, method, ridge): the sparsity onnxsim was
given, M / MACs / params of the pruned file over the original's (onnxprune's cost model) and
the test top-1 on the 10,000 Fashion-MNIST test images. `--reference` adds onnxprune's own
no-training prunes of the same files (`python -m onnxprune MODEL --target-mem T --data NPZ`:
Fisher with the CLI's default recovery on the data; the same with `--no-reconstruct`: the exact
slice; `--criterion l1` without data). Every row is kept as JSON in `--out`: a rerun
resumes. onnxsim is an optional dependency (`pip install onnxsim==0.8.1`).

What onnxsim does (read in its 0.8.1 source; none of it is copied here):
- `onnxsim.apply_structured_pruning(model, sparsity=s)` finds producer -> consumer chains (a
  Conv or Gemm / MatMul whose output reaches one consumer through activations, depthwise
  convs, residual Adds or Concats) and removes from every chain the same fraction of the
  producer's output channels, keep = max(1, n - round(n s)), lowest filter L2 norm first.
  BatchNormalization is not a pass-through for it (it expects BN folded): a BN-kept file
  comes back unchanged, whatever s.
- `onnxsim.apply_structured_wanda_pruning(model, calibration_data, sparsity=s)` (a thin
  alias of its C++ port): the same keep counts, ranked by ||W_c||_2 * ||X_c||_2, X_c the
  channel's activation where it enters the consumer (root mean square over samples and
  positions). Its chain finder is the C++ one, which unlike the Python L2 leaves a
  conv -> GlobalAveragePool -> Flatten -> Gemm chain uncut.
- `onnxsim.finetune.apply_pruning_finetune(original, pruned, calibration_data)` ("ridge"):
  for every Gemm / MatMul (never a Conv) refits W, b in closed form,
  min ||X W'^T + b' - Y||^2 + lam ||[W', b'] - [W, b]||^2, lam = reg tr(X^T X) / dim,
  reg = 1e-2, X the *original* model's input of the layer on the kept input channels, Y the
  original's output on the kept output channels; a layer cut on both axes is left as is.

The sparsity: onnxsim takes a fraction s, not a memory target. The memory ratio
M(s) = M(pruned at s) / M(original), M from `onnxprune.api.analyze` (elements of every
Conv / ConvTranspose / Gemm / MatMul output at batch 1, as in onnxprune's report), is a
non-increasing step function of s. Bisection on [0, 0.999] finds the smallest s with
M(s) <= target (to 1e-4 in s): the largest M <= target that one uniform fraction reaches.
Keep counts depend on s alone, not on the ranking, so the bisection probes with a data-free
call with the same chain finder (for Wanda the C++ L2, `apply_structured_pruning_cpp`) and
Wanda runs once at the chosen s. The written file's M is measured again, and a mismatch
re-bisects with Wanda itself. When M(0.999) (one channel left per
chain) is still above the target, the target is unreachable for onnxsim: the file is pruned
to onnxsim's floor (the smallest s reaching M(0.999)) and `info["reached"]` is False.

Shared initializers: if a pruned file does not load or run in onnxruntime and the original
has initializers read by several nodes (exporters deduplicate equal biases), every node gets
its own copy of them, the search restarts from that copy, and
`info["unshared_initializers"]` lists them (`info["first_failure"]` keeps the error).

Calibration data: the `input` images of the .npz that `onnxprune --data` reads
(`models/fashion_data.py::write_npz`), all of them, one image per batch because the exported
models have batch 1 fixed. `info["peak_rss_mb"]` is the process's peak resident memory when
the call returns (a bound for the call only in a fresh process); `info["onnxsim_output"]` is
whatever onnxsim printed or warned during the call.
"""
from __future__ import annotations

import argparse
import contextlib
import enum
import functools
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis.cost import Costs
from onnxprune.api import analyze
from onnxprune.errors import first_line
from onnxprune.model.runtime import session

MAX_SPARSITY = 0.999      # onnxsim needs s < 1; at 0.999 every chain keeps one channel
SPARSITY_TOLERANCE = 1e-4
RIDGE_REG = 1e-2          # onnxsim's default reg_param
RATIO_KEYS = ("mem", "macs", "params")


class Method(enum.Enum):
    L2 = "l2"
    WANDA = "wanda"


def _onnxsim():
    import onnxsim
    import onnxsim.finetune  # noqa: F401  (apply_pruning_finetune lives there)

    return onnxsim


# ------------------------------------------------------------------- inputs and checks


def calibration_batches(calib_npz: str | os.PathLike, input_name: str) -> list[dict]:
    """One {input_name: image [1, C, H, W]} feed per calibration image of the .npz."""
    images = np.load(calib_npz)["input"].astype(np.float32)
    return [{input_name: images[i:i + 1]} for i in range(len(images))]


def graph_input_name(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def ort_failure(model: onnx.ModelProto, feed: dict) -> str | None:
    """None if onnxruntime loads `model` and runs it on `feed`, else the error's first line."""
    try:
        session(model, quiet=True).run(None, feed)
    except Exception as exc:  # noqa: BLE001  onnxruntime raises several unrelated types
        return first_line(str(exc))
    return None


def shared_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers read by more than one node input."""
    names = {i.name for i in model.graph.initializer}
    uses = Counter(x for node in model.graph.node for x in node.input if x in names)
    return sorted(name for name, count in uses.items() if count > 1)


def unshare(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` where every use of `names` after the first reads its own copy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = {i.name: i for i in out.graph.initializer if i.name in names}
    seen: set[str] = set()
    for index, node in enumerate(out.graph.node):
        for slot, name in enumerate(node.input):
            if name not in tensors:
                continue
            if name in seen:
                copy = out.graph.initializer.add()
                copy.CopyFrom(tensors[name])
                copy.name = f"{name}__{index}_{slot}"
                node.input[slot] = copy.name
            seen.add(name)
    return out


@contextlib.contextmanager
def captured_output(sink: list[str]) -> Iterator[None]:
    """Collect what is printed to stdout / stderr (Python and native code) and warned."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    text = io.StringIO()
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        try:
            with (warnings.catch_warnings(record=True) as caught,
                  contextlib.redirect_stdout(text), contextlib.redirect_stderr(text)):
                warnings.simplefilter("always")
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            native.seek(0)
            printed = native.read().decode(errors="replace") + text.getvalue()
            sink.extend(line for line in printed.splitlines() if line.strip())
            sink.extend(f"warning: {w.category.__name__}: {w.message}" for w in caught)


# ------------------------------------------------------------------- sparsity search


def bisect_sparsity(ratio_at: Callable[[float], float], target: float) -> tuple[float, bool]:
    """(smallest s with ratio_at(s) <= target to SPARSITY_TOLERANCE, reached). `ratio_at` is
    non-increasing; an unreachable target is replaced by the floor ratio_at(MAX_SPARSITY)."""
    goal = max(target, ratio_at(MAX_SPARSITY))
    if ratio_at(0.0) <= goal:
        return 0.0, ratio_at(0.0) <= target
    lo, hi = 0.0, MAX_SPARSITY
    while hi - lo > SPARSITY_TOLERANCE:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ratio_at(mid) <= goal else (mid, hi)
    return hi, ratio_at(hi) <= target


def _prune(method: Method, base: onnx.ModelProto, sparsity: float, batches: list[dict],
           seed: int) -> onnx.ModelProto:
    sim = _onnxsim()
    if method is Method.L2:
        return sim.apply_structured_pruning(base, sparsity=sparsity)
    return sim.apply_structured_wanda_pruning(base, calibration_data=batches, seed=seed,
                                              sparsity=sparsity)


def _probe(method: Method) -> Callable[[onnx.ModelProto, float], onnx.ModelProto]:
    """A data-free prune with `method`'s chains and keep counts: the L2 call itself, or for
    Wanda (onnxsim's C++ port) the C++ port of the L2 call, whose chain finder it shares (the
    Python L2 also cuts a conv -> GlobalAveragePool -> Flatten -> Gemm chain that the C++ port
    leaves alone)."""
    sim = _onnxsim()
    if method is Method.L2:
        return lambda base, s: sim.apply_structured_pruning(base, sparsity=s)
    return lambda base, s: sim.apply_structured_pruning_cpp(base, sparsity=s)


def _search(method: Method, base: onnx.ModelProto, target: float, m0: float,
            batches: list[dict], seed: int) -> tuple[onnx.ModelProto, float, bool, dict]:
    """(pruned model, sparsity, reached, seconds per phase): bisect with `method`'s data-free
    probe, prune with `method`, re-bisect with `method` itself if its M differs from the
    probe's."""
    def ratio_with(prune: Callable[[onnx.ModelProto, float], onnx.ModelProto]):
        return functools.cache(lambda s: analyze(prune(base, s)).costs.costs().mem / m0)

    start = time.perf_counter()
    probe = ratio_with(_probe(method))
    sparsity, reached = bisect_sparsity(probe, target)
    searched = time.perf_counter()
    pruned = _prune(method, base, sparsity, batches, seed)
    seconds = {"search": searched - start, "prune": time.perf_counter() - searched,
               "research": 0.0}
    if analyze(pruned).costs.costs().mem / m0 != probe(sparsity):
        again = time.perf_counter()
        sparsity, reached = bisect_sparsity(
            ratio_with(lambda b, s: _prune(method, b, s, batches, seed)), target)
        pruned = _prune(method, base, sparsity, batches, seed)
        seconds["research"] = time.perf_counter() - again
    return pruned, sparsity, reached, seconds


def _ridge(base: onnx.ModelProto, pruned: onnx.ModelProto, batches: list[dict],
           seed: int) -> tuple[onnx.ModelProto, list[str]]:
    """onnxsim's ridge refit, and the initializers whose values it changed."""
    refit = _onnxsim().finetune.apply_pruning_finetune(base, pruned, calibration_data=batches,
                                                       seed=seed, reg_param=RIDGE_REG)
    old = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    changed = [i.name for i in refit.graph.initializer
               if i.name not in old or not np.array_equal(old[i.name],
                                                          onnx.numpy_helper.to_array(i))]
    return refit, changed


# ------------------------------------------------------------------- the peer


def _ratios(model: onnx.ModelProto, before: Costs) -> dict[str, float]:
    after = analyze(model).costs.costs().as_dict()
    return {k: after[k] / b if b else 1.0 for k, b in before.as_dict().items()}


def _prune_to_target(base, method, target_mem, before, batches, seed, ridge, printed):
    """One complete attempt from `base`: (pruned model, info without the file facts)."""
    with captured_output(printed):
        pruned, sparsity, reached, seconds = _search(method, base, target_mem, before.mem,
                                                     batches, seed)
        refit: list[str] = []
        if ridge:
            start = time.perf_counter()
            pruned, refit = _ridge(base, pruned, batches, seed)
            seconds["ridge"] = time.perf_counter() - start
    ratios = _ratios(pruned, before)
    return pruned, {"sparsity": sparsity, "reached": reached, "ratio": ratios,
                    "ridge_changed": refit, "seconds_phases": seconds,
                    "seconds_onnxsim": seconds["prune"] + seconds.get("ridge", 0.0)}


def onnxsim_prune(model_path: str | os.PathLike, target_mem: float,
                  calib_npz: str | os.PathLike, method: str | Method = "l2",
                  ridge: bool = False, seed: int = 0,
                  workdir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Prune `model_path` with onnxsim to M(pruned) <= target_mem x M(original), as closely
    as one uniform sparsity allows (module docstring). Returns (pruned file, info)."""
    method, start = Method(method), time.perf_counter()
    base = onnx.load(os.fspath(model_path))
    batches = calibration_batches(calib_npz, graph_input_name(base))
    before = analyze(base).costs.costs()
    printed: list[str] = []
    info: dict = {"model": os.fspath(model_path), "target_mem": target_mem,
                  "method": method.value, "ridge": ridge, "seed": seed,
                  "calibration_images": len(batches), "unshared_initializers": []}
    attempt = (method, target_mem, before, batches, seed, ridge, printed)
    shared = shared_initializers(base)
    try:
        pruned, found = _prune_to_target(base, *attempt)
        failure = ort_failure(pruned, batches[0])
    except Exception as exc:  # noqa: BLE001  a mis-sliced shared tensor fails anywhere
        if not shared:
            raise
        failure = f"{type(exc).__name__}: {first_line(str(exc))}"
    if failure and shared:
        info.update(first_failure=failure, unshared_initializers=shared)
        pruned, found = _prune_to_target(unshare(base, shared), *attempt)
        failure = ort_failure(pruned, batches[0])
    if failure:
        raise RuntimeError(f"onnxsim's pruned model fails in onnxruntime: {failure}")
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="peer-onnxsim-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (f"{Path(model_path).stem}.onnxsim-{method.value}"
                    f"{'-ridge' if ridge else ''}-m{target_mem:g}.onnx")
    onnx.save(pruned, out)
    info.update(found, output=str(out), onnxsim_output=printed,
                seconds=time.perf_counter() - start,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out, info


# ------------------------------------------------------------------- the benchmark


BN_FORMS = {"kept": False, "folded": True}
HEADER = ("| model | BN | target M | method | ridge | sparsity | M | MACs | params | top-1 % "
          "| onnxsim s | total s | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


class Reference(enum.Enum):
    """onnxprune's own no-training prunes, through its CLI."""
    FISHER = "fisher"              # --data: Fisher and the CLI's default recovery on the data
    FISHER_SLICE = "fisher-slice"  # --data --no-reconstruct: the exact slice, no refit
    L1 = "l1"                      # no data: l1

    def arguments(self, calib_npz: str | os.PathLike) -> list[str]:
        data = ["--data", os.fspath(calib_npz)]
        return {Reference.FISHER: data, Reference.FISHER_SLICE: [*data, "--no-reconstruct"],
                Reference.L1: ["--criterion", "l1"]}[self]


def onnxprune_reference(model_path: str | os.PathLike, target_mem: float,
                        calib_npz: str | os.PathLike, kind: Reference, workdir: Path) -> dict:
    """One onnxprune CLI prune of `model_path`; a prune the CLI refuses (an unreachable
    target, an option this checkout lacks) gives {"error": its last line}."""
    stem = f"{Path(model_path).stem}.onnxprune-{kind.value}-m{target_mem:g}"
    out, report = workdir / f"{stem}.onnx", workdir / f"{stem}.json"
    command = [sys.executable, "-m", "onnxprune", os.fspath(model_path), "--target-mem",
               f"{target_mem:g}", "-o", str(out), "--report", str(report),
               *kind.arguments(calib_npz)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    facts = {"command": " ".join(command[1:]), "seconds": time.perf_counter() - start,
             "source": source_state()}
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {**facts, "error": lines[-1] if lines else f"exit status {done.returncode}"}
    record = json.loads(report.read_text())
    recovery = record.get("recovery") or {}
    return {**facts, "output": str(out), "ratio": record["ratio"],
            "recovery_chosen": recovery.get("chosen"),
            "refit_layers": (recovery.get("refit") or {}).get("refit_layers")}


def source_state() -> dict | None:
    """The onnxprune checkout's commit and `git status --short` (it changes under work), or
    None outside a git checkout."""
    import onnxprune

    root = Path(onnxprune.__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True,
                                text=True, check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--short"], capture_output=True, text=True,
                                check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "status": status}


def _cached(path: Path, compute: Callable[..., dict], *args) -> dict:
    """The JSON at `path`, or `compute(*args)` written there (atomically) first: a rerun
    resumes."""
    if path.exists():
        return json.loads(path.read_text())
    record = compute(*args)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def _with_top1(record: dict) -> dict:
    from onnxprune.models.fashion import evaluate_onnx

    return {**record, "top1": evaluate_onnx(record["output"])} if "output" in record else record


def _onnxsim_record(*args) -> dict:
    return _with_top1(onnxsim_prune(*args)[1])


def _reference_record(*args) -> dict:
    return _with_top1(onnxprune_reference(*args))


def _note(record: dict) -> str:
    notes = [] if record.get("reached", True) else ["target unreachable: onnxsim's floor"]
    if "error" in record:
        notes.append(record["error"])
    if record.get("unshared_initializers"):
        notes.append(f"unshared {len(record['unshared_initializers'])} initializers")
    if record.get("recovery_chosen"):
        notes.append(f"onnxprune kept its {record['recovery_chosen']} "
                     f"({record['refit_layers']} layers refit)")
    if record.get("ridge"):
        notes.append(f"ridge changed {len(record['ridge_changed'])} tensors")
    return "; ".join(notes)


def format_row(name: str, bn: str, target: str, method: str, ridge: str, record: dict) -> str:
    ratio = record.get("ratio", {})
    cells = [name, bn, target, method, ridge,
             f"{record['sparsity']:.4f}" if "sparsity" in record else "-",
             *(f"{ratio[k]:.3f}" if k in ratio else "-" for k in RATIO_KEYS),
             f"{100 * record['top1']:.2f}" if "top1" in record else "-",
             f"{record['seconds_onnxsim']:.1f}" if "seconds_onnxsim" in record else "-",
             f"{record['seconds']:.1f}" if "seconds" in record else "-", _note(record)]
    return "| " + " | ".join(cells) + " |"


def _onnxsim_rows(args, name: str, bn: str, path: Path, target: float) -> Iterator[str]:
    for method in args.methods.split(","):
        for ridge in (False, True):
            key = f"{name}-{bn}-m{target:g}-{method}{'-ridge' if ridge else ''}"
            record = _cached(args.out / f"{key}.json", _onnxsim_record,
                             path, target, args.data, method, ridge, args.seed, args.out)
            yield format_row(name, bn, f"{target:g}", method, "yes" if ridge else "no", record)


def _reference_rows(args, name: str, bn: str, path: Path, target: float) -> Iterator[str]:
    for kind in Reference:
        record = _cached(args.out / f"{name}-{bn}-m{target:g}-onnxprune-{kind.value}.json",
                         _reference_record, path, target, args.data, kind, args.out)
        yield format_row(name, bn, f"{target:g}", f"onnxprune {kind.value}", "-", record)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2_small")
    p.add_argument("--folded", choices=("no", "yes", "both"), default="both",
                   help="BN kept (no), BN folded into the convs (yes), or both")
    p.add_argument("--targets", default="0.7,0.5,0.3", help="memory targets M")
    p.add_argument("--methods", default="l2,wanda")
    p.add_argument("--data", required=True, help="calibration .npz (models.fashion npz)")
    p.add_argument("--out", type=Path, default=Path("peer-onnxsim"),
                   help="pruned files and one JSON per row; a rerun resumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", action="store_true",
                   help="also onnxprune's own no-training prunes (Fisher with --data, with and "
                        "without its refit; l1)")
    args = p.parse_args(argv)
    if any(m not in {x.value for x in Method} for m in args.methods.split(",")):
        p.error(f"--methods: choose from {', '.join(x.value for x in Method)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from onnxprune.models.fashion import cached_fashion_model

    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    forms = {"no": ["kept"], "yes": ["folded"], "both": ["kept", "folded"]}[args.folded]
    print(HEADER, flush=True)
    for name in args.models.split(","):
        for bn in forms:
            path = cached_fashion_model(name, fold_bn=BN_FORMS[bn])
            original = _cached(args.out / f"{name}-{bn}-original.json", _with_top1,
                               {"output": str(path)})
            print(format_row(name, bn, "-", "original", "-", original), flush=True)
            for target in map(float, args.targets.split(",")):
                rows = [*_onnxsim_rows(args, name, bn, path, target)]
                if args.reference:
                    rows += [*_reference_rows(args, name, bn, path, target)]
                print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
