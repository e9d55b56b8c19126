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

TOLERANCE = 1e-4


def reference_model(original: onnx.ModelProto, slices) -> onnx.ModelProto:
    """The original with the sink slices of removed channels set to zero."""
    sinks: dict[str, list] = {}
    for s in slices:
        if s.role == "sink":
            sinks.setdefault(s.initializer, []).append(s)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    for init in model.graph.initializer:
        if init.name in sinks:
            value = numpy_helper.to_array(init).copy()
            for s in sinks[init.name]:
                index = [slice(None)] * value.ndim
                index[s.axis] = s.removed
                value[tuple(index)] = 0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model


def max_error(pruned: onnx.ModelProto, reference: onnx.ModelProto, runs: int, seed: int) -> float:
    """Largest error relative to max(1, max |reference|) over outputs and random inputs."""
    pruned_sess = session(pruned, optimize=False)
    ref_sess = session(reference, optimize=False)
    worst = 0.0
    for r in range(runs):
        feeds = random_inputs(reference, seed + r)
        for got, want in zip(pruned_sess.run(None, feeds), ref_sess.run(None, feeds)):
            if got.shape != want.shape:
                raise VerificationError(f"output shape {got.shape} differs from {want.shape}")
            want = np.asarray(want, dtype=np.float64)
            scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
            diff = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if want.size else 0.0
            worst = max(worst, diff / scale)
    return worst


def check_model(model: onnx.ModelProto) -> None:
    try:
        if model.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise VerificationError(f"onnx.checker rejects the pruned model: "
                                f"{str(exc).splitlines()[0][:300]}") from None


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, slices, runs: int = 2,
           seed: int = 0) -> float:
    """Checker + oracle; returns the relative error, raises VerificationError beyond tolerance."""
    check_model(pruned)
    err = max_error(pruned, reference_model(original, slices), runs, seed)
    if not err <= TOLERANCE:
        raise VerificationError(f"pruned model differs from the masked original: relative "
                                f"error {err:.3g} > {TOLERANCE:g}")
    return err
