"""Normalisations and train-mode ops: BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization, LpNormalization, Dropout.

BatchNormalization follows the module's train() state: batch statistics in training, with the
running buffers updated in place by ONNX's convention (running = momentum * running +
(1 - momentum) * batch, batch variance without Bessel's correction, as onnx's reference and
onnxruntime compute it); running statistics in eval. Dropout is the identity in eval.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from calibrate.ops.registry import Spec, Unsupported, op, wants_run


@op("BatchNormalization")
def batch_norm(spec: Spec):
    if spec.since < 7 or not spec.attrs.get("spatial", 1):
        raise Unsupported("only spatial BatchNormalization (opset >= 7) is implemented")
    spec.only_first_output(" (saved / running statistics outputs)")
    eps, momentum = spec.attrs["epsilon"], spec.attrs["momentum"]
    node_trains = bool(spec.attrs.get("training_mode", 0))
    updatable = {3, 4} <= spec.buffer_slots

    @wants_run
    def run(ctx, x, scale, bias, mean, var):
        if not (ctx.training or node_trains):
            return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
        if not (ctx.training and updatable):
            return F.batch_norm(x, None, None, scale, bias, True, 0.0, eps)
        # torch updates the running variance with the unbiased batch variance (n / (n - 1));
        # ONNX uses the biased one: undo the factor on the (C,) buffer, no extra pass over x
        # autograd saves the running variance it is given: hand it a copy, so that the
        # correction below (an in-place write to the buffer) cannot invalidate the backward
        with torch.no_grad():
            previous = var * momentum
        updated = var.clone()
        y = F.batch_norm(x, mean, updated, scale, bias, True, 1.0 - momentum, eps)
        with torch.no_grad():
            n = x.numel() // x.shape[1]
            var.copy_((updated - previous) * ((n - 1) / n) + previous)
        return y
    return run


@op("InstanceNormalization")
def instance_norm(spec: Spec):
    eps = spec.attrs["epsilon"]
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@op("LayerNormalization")
def layer_norm(spec: Spec):
    spec.only_first_output(" (Mean, InvStdDev)")
    axis, eps = spec.attrs["axis"], spec.attrs["epsilon"]

    def run(x, scale, bias=None):
        shape = x.shape[axis + x.dim() if axis < 0 else axis:]
        if scale.shape == shape and (bias is None or bias.shape == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        y = F.layer_norm(x, shape, None, None, eps) * scale
        return y if bias is None else y + bias
    return run


@op("GroupNormalization")
def group_norm(spec: Spec):
    groups, eps = spec.attrs["num_groups"], spec.attrs["epsilon"]
    if spec.since >= 21:
        return lambda x, scale, bias: F.group_norm(x, groups, scale, bias, eps)

    def per_group(x, scale, bias):  # opset 18: scale and bias hold one value per group
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        per_channel = x.shape[1] // groups
        y = F.group_norm(x, groups, None, None, eps)
        return y * scale.repeat_interleave(per_channel).reshape(shape) + \
            bias.repeat_interleave(per_channel).reshape(shape)
    return per_group


@op("LpNormalization")
def lp_normalization(spec: Spec):
    axis, p = spec.attrs["axis"], spec.attrs["p"]
    if p not in (1, 2):
        raise Unsupported(f"p={p} (ONNX allows 1 or 2)")
    return lambda x: x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True)


@op("Dropout")
def dropout(spec: Spec):
    spec.only_first_output(" (no mask)")
    if spec.since < 12:
        static = spec.attrs["ratio"]
    elif spec.has(1):
        static = spec.floats(1)[0] if spec.const(1) is not None else None
    else:
        static = 0.5

    @wants_run
    def run(ctx, x, ratio=None, training_mode=None):
        if not ctx.training:
            return x
        return F.dropout(x, static if static is not None else float(ratio), True)
    return run
