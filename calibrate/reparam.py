"""BatchNorm re-parametrisation: fine-tune BN-folded convolutions as if their BN were still there.

Why: `torch.onnx.export` in eval mode (and most converters) folds every BatchNormalization
into the convolution before it, W_f = W·γ/σ and b_f = (b − μ)·γ/σ + β, so most ONNX files
have no BN left. Training the folded weights directly is badly conditioned: each layer's
output spread is no longer normalised, so one learning rate is far too large for some layers
and the loss climbs or turns NaN within a few steps (issue 13: a BN-folded ResNet-20 fell to
chance or diverged where the BN-kept export of the same network recovered).

What: for training only, every eligible Conv y = conv(x, W) + b gets a BatchNorm on its
output, z = γ · (y − μ_B) / sqrt(σ²_B + ε) + β (batch statistics in train mode), registered
as a submodule of the OnnxModule (`module.reparam_bn`, so `state_dict()` covers it) and applied
through `module.output_transforms`. It is initialised from an eval-mode pass over a few
training batches, per output channel c of the conv:

    running_mean = μ_c,  running_var = σ²_c,  γ_c = sqrt(σ²_c + ε),  β_c = μ_c

so that in eval mode z = y (the identity, up to rounding) and training starts from the
original function. After training the eval-mode BN, an affine map, is folded back:

    s = γ / sqrt(running_var + ε),  W' = W · s (per output channel),
    b' = (b − running_mean) · s + β

and removed, so `module.write_back(model)` writes the original's ops and initializers.

A slice of a model is not the model: removing channels shifts the output distribution of
every conv after them, which a kept BatchNormalization undoes as soon as it trains on batch
statistics (γ, β still describe the unpruned network: the AdaBN effect). To give a sliced
BN-folded model the same start, `slice_targets` measures each conv's output channels in the
model the slice was cut from (after GFP: the full model GFP trained) and keeps the ones the
slice kept; with these targets the inserted BN is

    γ_c = sqrt(σ²_t,c + ε),  β_c = μ_t,c   (running statistics still the slice's own)

so each channel gets the mean and variance it had before pruning. (Measured on BN-folded
Fashion-MNIST models at --target-mem 0.5, 5 epochs, test top-1 without / with the targets:
ResNet-20 75.3 / 88.0 % with labels, 79.9 / 90.0 % distilled, 55.1 / 81.1 % with GFP;
MobileNetV2 88.6 / 90.1 %, 89.8 / 91.1 %, 73.3 / 86.3 %. The BN-kept exports give 88.1, 90.3,
83.6 % and 90.3, 90.8, 86.3 %.) The statistics pass feeds each conv its predecessors' outputs
normalised to their targets, as training will.

Left without BN (listed in `BnReparam.skipped` with the reason): a Conv whose output a
BatchNormalization already reads; a Conv without a bias input (folding needs a bias to write
into); a Conv whose weight or bias is not a plain float32/float64 initializer of its own
(shared with another reader, computed by a node such as a QDQ DequantizeLinear, frozen). Only
default-domain `Conv` nodes of the top graph are considered (not ConvTranspose, Gemm, nor
nodes inside If branches).

Under torchrun (DistributedDataParallel) it works as DDP training without SyncBatchNorm does:
each rank normalises with its own batch statistics (SyncBatchNorm needs CUDA), the initial
statistics are all-reduced over ranks, DDP broadcasts rank 0's running statistics at every
forward, and `fold` averages them over ranks first so every rank folds the same values.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from calibrate.datatypes import CalibrationData
from calibrate.distributed import World, all_reduce_sum, to_device
from calibrate.executor import OnnxModule
from onnxprune.analysis.flow import Role

SUBMODULE = "reparam_bn"
EPS = 1e-5
MOMENTUM = 0.1          # torch's default: running statistics follow the last ~10 steps
INIT_BATCHES = 8        # global batches of the eval-mode pass that sets μ and σ²
_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOATS = (torch.float32, torch.float64)
_NORMS = {3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}


@dataclass(frozen=True)
class ReparamConv:
    node: int        # index of the Conv in the top graph
    weight: str      # ONNX initializer names
    bias: str


@dataclass
class BnReparam:
    """The BatchNorms inserted into one module; `fold()` writes them into the convs."""
    module: OnnxModule
    convs: list[ReparamConv]
    skipped: dict[str, str] = field(default_factory=dict)  # conv output -> why no BN

    def norm(self, conv: ReparamConv) -> torch.nn.Module:
        return getattr(self.module, SUBMODULE)[_key(conv)]

    @torch.no_grad()
    def fold(self, world: World | None = None) -> None:
        """W' = W·s, b' = (b − mean)·s + β (module docstring); the BNs are removed."""
        if not self.convs:
            return
        if world is not None and world.size > 1:
            _average_running_stats([self.norm(c) for c in self.convs], world)
        params = self.module.params
        for conv in self.convs:
            norm = self.norm(conv)
            weight, bias = params[conv.weight], params[conv.bias]
            scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
            new_bias = (bias.double() - norm.running_mean.double()) * scale + norm.bias.double()
            bias.copy_(new_bias.to(bias.dtype))
            weight.mul_(scale.to(weight.dtype).reshape(-1, *[1] * (weight.dim() - 1)))
        self.discard()

    def discard(self) -> None:
        """Remove the BNs without folding them (training failed: nothing worth keeping)."""
        for conv in self.convs:
            self.module.output_transforms.pop((conv.node, 0), None)
        if hasattr(self.module, SUBMODULE):
            delattr(self.module, SUBMODULE)
        self.convs = []


def insert_bn(module: OnnxModule, data: CalibrationData, batch_size: int, world: World,
              init_batches: int = INIT_BATCHES, targets: dict | None = None) -> BnReparam:
    """Give every eligible Conv of `module` a BatchNorm that is the identity in eval mode, or,
    for a conv whose weight name `targets` lists, one that gives its output channels the
    target (mean, variance): γ = sqrt(var_t + ε), β = mean_t."""
    if hasattr(module, SUBMODULE):
        raise ValueError(f"the module already has its {SUBMODULE!r} BatchNorms")
    convs, skipped = eligible_convs(module)
    reparam = BnReparam(module, convs, skipped)
    if not convs:
        return reparam
    goals = _goals(module, convs, targets or {})
    stats = _output_statistics(module, convs, data, batch_size, world, init_batches, goals)
    norms = torch.nn.ModuleDict()
    params = module.params
    for conv in convs:
        weight = params[conv.weight]
        norm = _NORMS[weight.dim()](weight.shape[0], eps=EPS, momentum=MOMENTUM,
                                    device=weight.device, dtype=weight.dtype)
        mean, var = stats[conv.node]
        goal_mean, goal_var = goals.get(conv.node, (mean, var))
        with torch.no_grad():
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(goal_var + EPS))
            norm.bias.copy_(goal_mean)
        norms[_key(conv)] = norm
    module.add_module(SUBMODULE, norms.train(module.training))
    for conv in convs:
        module.output_transforms[(conv.node, 0)] = partial(_normalise, reparam.norm(conv))
    return reparam


def slice_targets(original: OnnxModule, slices, data: CalibrationData, batch_size: int,
                  world: World, init_batches: int = INIT_BATCHES) -> dict[str, tuple]:
    """Weight name -> the (mean, variance) that the kept output channels of each eligible Conv
    had in `original`, the module of the (batch-free) model that `slices` (surgery's) sliced:
    the `targets` that make the BNs of the slice restore the original's channel statistics."""
    module = original
    convs, _ = eligible_convs(module)
    stats = _output_statistics(module, convs, data, batch_size, world, init_batches)
    removed = {s.initializer: s.removed for s in slices
               if s.role in (Role.PRODUCER, Role.MASK) and s.axis == 0}
    targets = {}
    for conv in convs:
        mean, var = stats[conv.node]
        keep = torch.ones(len(mean), dtype=torch.bool)
        keep[list(removed.get(conv.weight, []))] = False
        targets[conv.weight] = (mean[keep], var[keep])
    return targets


def eligible_convs(module: OnnxModule) -> tuple[list[ReparamConv], dict[str, str]]:
    """(Convs that get a BN, {conv output: why not} for the Convs that do not)."""
    readers = Counter(name for io in module.node_io for name in io.reads if name)
    readers.update(module.output_names)
    normalised = {io.reads[0] for io in module.node_io
                  if io.op_type == "BatchNormalization" and io.domain in _DEFAULT_DOMAINS}
    params = module.params
    convs, skipped = [], {}
    for index, io in enumerate(module.node_io):
        if io.op_type != "Conv" or io.domain not in _DEFAULT_DOMAINS:
            continue
        if io.writes[0] in normalised:
            continue
        reason = _not_eligible(io.reads, readers, params)
        if reason is None:
            convs.append(ReparamConv(index, io.reads[1], io.reads[2]))
        else:
            skipped[io.writes[0]] = reason
    return convs, skipped


def _not_eligible(reads: tuple[str, ...], readers: Counter, params: dict) -> str | None:
    if len(reads) < 3 or not reads[2]:
        return "no bias to fold a BatchNorm into"
    for role, name in (("weight", reads[1]), ("bias", reads[2])):
        value = params.get(name)
        if value is None or value.dtype not in _FLOATS:
            return f"{role} {name!r} is not a float initializer"
        if readers[name] > 1:
            return f"{role} {name!r} has {readers[name]} readers"
        if not value.requires_grad:
            return f"{role} {name!r} is frozen"
    return None


def _key(conv: ReparamConv) -> str:
    return f"node{conv.node}"


def _normalise(norm: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The BN; with a single value per channel (batch 1 on a 1×1 map) batch statistics do not
    exist, so that batch is normalised with the running ones."""
    if norm.training and y.numel() <= y.shape[1]:
        return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)
    return norm(y)


def _goals(module: OnnxModule, convs: list[ReparamConv], targets: dict) -> dict:
    """node -> target (mean, variance), checked against the conv's output channels."""
    goals = {}
    for conv in convs:
        if conv.weight not in targets:
            continue
        mean, var = (torch.as_tensor(t, dtype=torch.float64) for t in targets[conv.weight])
        channels = module.params[conv.weight].shape[0]
        if mean.shape != (channels,) or var.shape != (channels,):
            raise ValueError(f"conv weight {conv.weight!r}: targets of shape "
                             f"{tuple(mean.shape)} for {channels} output channels")
        goals[conv.node] = (mean, var)
    return goals


def _output_statistics(module: OnnxModule, convs: list[ReparamConv], data: CalibrationData,
                       batch_size: int, world: World, init_batches: int,
                       goals: dict | None = None) -> dict:
    """node -> (mean, biased variance) of the conv's output channels over `init_batches`
    global batches, in eval mode, all-reduced over ranks. A conv with a goal passes its output
    on normalised to it with the batch's statistics, as in training, so that the convs after
    it are measured as they will be fed."""
    sums: dict[int, list] = {}
    goals = goals or {}

    def record(y, node):
        dims = [d for d in range(y.dim()) if d != 1]
        y64 = y.detach().double()
        s1, s2, count = sums.get(node, (0.0, 0.0, 0))
        sums[node] = (s1 + y64.sum(dims), s2 + (y64 * y64).sum(dims),
                      count + y.numel() // y.shape[1])
        if node not in goals or y.numel() <= y.shape[1]:
            return y
        mean, var = (t.to(y.device, y.dtype) for t in goals[node])
        return F.batch_norm(y, None, None, torch.sqrt(var + EPS), mean, training=True, eps=EPS)

    was_training = module.training
    module.eval()
    for conv in convs:
        module.output_transforms[(conv.node, 0)] = partial(record, node=conv.node)
    try:
        with torch.no_grad():
            for batch in data.batches(batch_size, init_batches, rank=world.rank,
                                      world_size=world.size):
                module(**to_device(batch.inputs, world.device))
    finally:
        for conv in convs:
            module.output_transforms.pop((conv.node, 0), None)
        module.train(was_training)
    channels = [module.params[conv.weight].shape[0] for conv in convs]
    return _reduce(sums, convs, channels, world)


def _reduce(sums: dict, convs: list[ReparamConv], channels: list[int], world: World) -> dict:
    """node -> (mean, biased variance), float64, from this rank's sums and the other ranks'."""
    if not convs:
        return {}
    parts = []
    for conv, c in zip(convs, channels):
        s1, s2, count = sums.get(conv.node, (torch.zeros(c), torch.zeros(c), 0))
        parts += [s1.double().cpu(), s2.double().cpu(), torch.tensor([float(count)]).double()]
    total = all_reduce_sum(torch.cat(parts), world)
    stats, offset = {}, 0
    for conv, c in zip(convs, channels):
        s1, s2 = total[offset:offset + c], total[offset + c:offset + 2 * c]
        n = max(float(total[offset + 2 * c]), 1.0)
        mean = s1 / n
        stats[conv.node] = (mean, (s2 / n - mean * mean).clamp_min(0))
        offset += 2 * c + 1
    return stats


def _average_running_stats(norms: list[torch.nn.Module], world: World) -> None:
    stats = [t for norm in norms for t in (norm.running_mean, norm.running_var)]
    vector = torch.cat([t.detach().double().cpu().reshape(-1) for t in stats])
    vector = all_reduce_sum(vector, world) / world.size
    offset = 0
    for t in stats:
        t.copy_(vector[offset:offset + t.numel()].reshape(t.shape).to(t.dtype))
        offset += t.numel()
