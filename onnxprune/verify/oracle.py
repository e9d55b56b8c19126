"""The exactness oracle: the pruned model must equal the original in which every sink slice of
every removed channel is zeroed (and nothing else changes), in onnxruntime, on random inputs:

    max |pruned - reference| <= 1e-4 * max(1, max |reference|)   for every output, float32.

Anyone can recompute it from the report's `slices`: zero the `removed` indices along `axis` of
every `sink` initializer of the original model. A weight stored quantized (the data of a
DequantizeLinear in a QDQ model) is set to its zero point instead, the stored value that
dequantizes to exactly 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.context import dequantized_constants
from onnxprune.analysis.flow import Role
from onnxprune.errors import VerificationError, first_line
from onnxprune.model import external
from onnxprune.model.runtime import random_inputs, session
from onnxprune.model.weights import attach, check, detach, feeds_of
from onnxprune.rewrite.surgery import Slice
from onnxprune.verify.partial import Coverage, runnable_pair
from onnxprune.verify.precision import run_float64

TOLERANCE = 1e-4


def _zero(value: np.ndarray, sinks: list[Slice], zero: np.ndarray | int = 0) -> np.ndarray:
    """Set the sink slices to `zero` (broadcast to `value`); a writable array (a fresh read) is
    changed in place."""
    if not value.flags.writeable:
        value = np.array(value)
    zero = np.broadcast_to(np.asarray(zero, dtype=value.dtype), value.shape)
    for s in sinks:
        index = [slice(None)] * value.ndim
        index[s.axis] = s.removed
        value[tuple(index)] = zero[tuple(index)]
    return value


def zero_points(model: onnx.ModelProto, names) -> dict[str, np.ndarray]:
    """For each of `names` stored quantized (a DequantizeLinear's data): the value that
    dequantizes to exactly 0, its zero point, shaped to broadcast along the DequantizeLinear
    axis. A weight stored in float is absent (its zero is 0)."""
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for dq in dequantized_constants(model).values():
        if dq.data not in names or not dq.zero_point:
            continue
        zero = external.value(inits[dq.zero_point])
        if dq.axis is not None:
            shape = [1] * len(inits[dq.data].dims)
            shape[dq.axis] = -1
            zero = zero.reshape(shape)
        if dq.data in found and not np.array_equal(found[dq.data], zero):
            raise VerificationError(f"{dq.data} is dequantized with two different zero points")
        found[dq.data] = zero
    return found


def reference_weights(original: onnx.ModelProto, slices: Sequence[Slice]):
    """The original as (light model, weight feeds) with the sink and mask slices of removed
    channels zeroed (a weight stored quantized: to its zero point, which dequantizes to 0); large
    weights are fed as inputs (see weights.py), small ones stay initializers."""
    sinks: dict[str, list[Slice]] = {}
    for s in slices:
        if s.role in (Role.SINK, Role.MASK):
            sinks.setdefault(s.initializer, []).append(s)
    zeros = zero_points(original, set(sinks))
    light, large = detach(original)
    feeds = feeds_of(large)
    for name in set(sinks) & set(feeds):
        feeds[name] = _zero(feeds[name], sinks[name], zeros.get(name, 0))
    for init in light.graph.initializer:
        if init.name in sinks:
            zeroed = _zero(numpy_helper.to_array(init), sinks[init.name], zeros.get(init.name, 0))
            init.CopyFrom(numpy_helper.from_array(zeroed, init.name))
    return light, feeds


def relative_error(got_all, want_all) -> float:
    """max over outputs of max |got - want| / max(1, max |want|). Non-finite values must sit at
    the same places with the same values (NaN where NaN, +inf where +inf); else the error is
    infinite — a NaN never passes for "equal"."""
    worst = 0.0
    for got, want in zip(got_all, want_all):
        if got.shape != want.shape:
            raise VerificationError(f"output shape {got.shape} differs from {want.shape}")
        if not want.size:
            continue
        want, got = np.asarray(want, dtype=np.float64), np.asarray(got, dtype=np.float64)
        finite = np.isfinite(want)
        same_nonfinite = np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(
            got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
        if not same_nonfinite or not np.isfinite(got[finite]).all():
            return float("inf")
        if not finite.any():
            continue
        scale = max(1.0, float(np.max(np.abs(want[finite]))))
        worst = max(worst, float(np.max(np.abs(got[finite] - want[finite]))) / scale)
    return worst


def max_error(pruned: onnx.ModelProto, original: onnx.ModelProto, slices: Sequence[Slice],
              runs: int, seed: int) -> float:
    """The oracle's error in onnxruntime (float32) over `runs` random inputs."""
    inputs = [random_inputs(original, seed + r) for r in range(runs)]
    light, large = detach(pruned)
    got = _outputs(light, feeds_of(large), inputs)
    want = _outputs(*reference_weights(original, slices), inputs)
    return max((relative_error(g, w) for g, w in zip(got, want)), default=0.0)


def _outputs(light: onnx.ModelProto, weights: dict[str, np.ndarray],
             inputs: list[dict]) -> list[list[np.ndarray]]:
    """Run one model on every input: the two models' weights are never in memory together."""
    sess = session(light, optimize=False)
    return [sess.run(None, {**feeds, **weights}) for feeds in inputs]


def float64_error(pruned: onnx.ModelProto, original: onnx.ModelProto,
                  slices: Sequence[Slice], runs: int, seed: int) -> float:
    """The same comparison in float64 with onnx's reference evaluator (precision.py)."""
    light, weights = reference_weights(original, slices)
    reference = attach(light, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    worst = 0.0
    for r in range(runs):
        feeds = random_inputs(original, seed + r)
        got, want = run_float64(pruned, feeds), run_float64(reference, feeds)
        worst = max(worst, relative_error(got, want))
    return worst


def check_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """onnx.checker on `model`. A complaint it also makes about `original` is about the input
    file, not the pruning (onnxruntime's optimiser writes ops onnx does not know, such as
    SimplifiedLayerNormalization, into the standard domain): the oracle still runs."""
    try:
        check(model)
    except Exception as exc:
        message = str(exc).splitlines()[0][:300]
        if original is not None and _checker_message(original) == message:
            return
        raise VerificationError(f"onnx.checker rejects the pruned model: {message}") from None


def _checker_message(model: onnx.ModelProto) -> str | None:
    try:
        check(model)
    except Exception as exc:
        return str(exc).splitlines()[0][:300]
    return None


@dataclass(frozen=True)
class Verdict:
    error: float           # the error that decided: float32 unless it needed float64
    precision: str         # "float32" or "float64"
    float32_error: float
    coverage: Coverage | None = None  # what was compared (verify/partial.py); None: all


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, slices: Sequence[Slice],
           runs: int = 2, seed: int = 0) -> Verdict:
    """Checker + oracle; raises VerificationError beyond tolerance.

    float32 in onnxruntime first; if that exceeds the tolerance, float64 decides (a model that
    amplifies rounding noise fails in float32 even against itself; a wrong prune fails in both).
    """
    check_model(pruned, original)
    # where onnxruntime cannot run part of the graph, both are cut before it (partial.py)
    original, pruned, cover = runnable_pair(original, pruned, [s.initializer for s in slices])
    err = max_error(pruned, original, slices, runs, seed)
    if err <= TOLERANCE:
        return Verdict(err, "float32", err, cover)
    try:
        err64 = float64_error(pruned, original, slices, runs, seed)
    except Exception as exc:  # onnx's evaluator lacks an op onnxruntime has (a contrib op)
        raise VerificationError(f"pruned model differs from the masked original: relative error "
                                f"{err:.3g} (float32) > {TOLERANCE:g}; no float64 second opinion "
                                f"({first_line(exc)})") from None
    if not err64 <= TOLERANCE:
        raise VerificationError(f"pruned model differs from the masked original: relative "
                                f"error {err:.3g} (float32), {err64:.3g} (float64) > {TOLERANCE:g}")
    return Verdict(err64, "float64", err, cover)
