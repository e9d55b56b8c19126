"""The exactness oracle: the pruned model must equal the original in which every sink slice of
every removed channel is zeroed (and nothing else changes), in onnxruntime, on random inputs:

    max |pruned - reference| <= 1e-4 * max(1, max |reference|)   for every output, float32.

Anyone can recompute it from the report's `slices`: zero the `removed` indices along `axis` of
every `sink` initializer of the original model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import VerificationError
from .runtime import random_inputs, session
from .weights import check, detach, feeds_of

TOLERANCE = 1e-4


def _zero(value: np.ndarray, sinks) -> np.ndarray:
    value = np.array(value)
    for s in sinks:
        index = [slice(None)] * value.ndim
        index[s.axis] = s.removed
        value[tuple(index)] = 0
    return value


def reference_weights(original: onnx.ModelProto, slices):
    """The original as (light model, weight feeds) with the sink slices of removed channels set
    to zero; large weights are fed as inputs (see weights.py), small ones stay initializers."""
    sinks: dict[str, list] = {}
    for s in slices:
        if s.role == "sink":
            sinks.setdefault(s.initializer, []).append(s)
    light, large = detach(original)
    feeds = feeds_of(large)
    for name in set(sinks) & set(feeds):
        feeds[name] = _zero(feeds[name], sinks[name])
    for init in light.graph.initializer:
        if init.name in sinks:
            init.CopyFrom(numpy_helper.from_array(_zero(numpy_helper.to_array(init), sinks[init.name]),
                                                  init.name))
    return light, feeds


def max_error(pruned: onnx.ModelProto, original: onnx.ModelProto, slices, runs: int,
              seed: int) -> float:
    """Largest error relative to max(1, max |reference|) over outputs and random inputs."""
    ref_light, ref_weights = reference_weights(original, slices)
    pruned_light, pruned_large = detach(pruned)
    pruned_weights = feeds_of(pruned_large)
    pruned_sess = session(pruned_light, optimize=False)
    ref_sess = session(ref_light, optimize=False)
    worst = 0.0
    for r in range(runs):
        feeds = random_inputs(original, seed + r)
        got_all = pruned_sess.run(None, {**feeds, **pruned_weights})
        want_all = ref_sess.run(None, {**feeds, **ref_weights})
        for got, want in zip(got_all, want_all):
            if got.shape != want.shape:
                raise VerificationError(f"output shape {got.shape} differs from {want.shape}")
            want = np.asarray(want, dtype=np.float64)
            scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
            diff = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if want.size else 0.0
            worst = max(worst, diff / scale)
    return worst


def check_model(model: onnx.ModelProto) -> None:
    try:
        check(model)
    except Exception as exc:
        raise VerificationError(f"onnx.checker rejects the pruned model: "
                                f"{str(exc).splitlines()[0][:300]}") from None


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, slices, runs: int = 2,
           seed: int = 0) -> float:
    """Checker + oracle; returns the relative error, raises VerificationError beyond tolerance."""
    check_model(pruned)
    err = max_error(pruned, original, slices, runs, seed)
    if not err <= TOLERANCE:
        raise VerificationError(f"pruned model differs from the masked original: relative "
                                f"error {err:.3g} > {TOLERANCE:g}")
    return err
