"""Re-estimate BatchNormalization statistics of a pruned model on calibration data (AdaBN,
Li et al. 2016; EagleEye, Li et al. ECCV 2020 use it to judge pruned sub-nets without training).

Removing channels shifts the distribution every later BatchNormalization sees, while its
running mean / variance still describe the unpruned network. Here the pruned model runs in
train mode (each BN normalises with its batch's statistics, so every layer sees inputs as the
re-estimated network would produce them), the input of every BN is recorded, and the pooled
statistics over all calibration samples and positions become the new running statistics:
    mean_c = E[x_c],  var_c = E[x_c²] − mean_c²   (biased, as ONNX inference uses it).
No weight changes and no gradients: the model stays the sliced one, with new BN buffers.
"""
from __future__ import annotations

import onnx
import torch

from calibrate.data import calibration_batches
from calibrate.datatypes import CalibrationData
from calibrate.distributed import all_reduce_sum, to_device, world
from onnxprune.config import CalibrationConfig
from onnxprune.errors import UserError
from onnxprune.model.batch import make_batch_free


def _recorders(module, model: onnx.ModelProto, sums: dict):
    for index, node in enumerate(model.graph.node):
        if node.op_type != "BatchNormalization":
            continue

        def record(x, name=node.input[3], axis=1):
            dims = [d for d in range(x.dim()) if d != axis]
            x64 = x.detach().double()
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + x64.sum(dims)
            s[1] = s[1] + (x64 * x64).sum(dims)
            s[2] += x.numel() // x.shape[axis]
            return x
        module.input_transforms[(index, 0)] = record


def recalibrate_bn(model: onnx.ModelProto, data: CalibrationData, config: CalibrationConfig,
                   seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """(model with re-estimated BN statistics, samples used: `max_batches` batches drawn with
    `seed`). The model must be batch-free."""
    from calibrate.executor import OnnxModule

    free, why = make_batch_free(model)
    if why is not None:
        raise UserError(f"--recalibrate-bn runs batches, but {why}")
    w = world(config.device)
    module = OnnxModule(free).to(w.device).train()
    sums: dict = {}
    _recorders(module, free, sums)
    seen = 0
    with torch.no_grad():
        for batch in calibration_batches(data, config, seed, w.rank, w.size):
            module(**to_device(batch.inputs, w.device))
            seen += len(next(iter(batch.inputs.values())))
    buffers = module.buffers_by_name
    names = {n.input[3]: n.input[4] for n in free.graph.node if n.op_type == "BatchNormalization"}
    for mean_name, (s1, s2, count) in sums.items():
        total = all_reduce_sum(torch.cat([s1.cpu(), s2.cpu(), torch.tensor([float(count)],
                                                                        dtype=torch.float64)]), w)
        c = len(s1)
        mean = total[:c] / total[-1]
        var = (total[c:2 * c] / total[-1] - mean * mean).clamp_min(0)
        buffers[mean_name].copy_(mean.to(buffers[mean_name].dtype))
        buffers[names[mean_name]].copy_(var.to(buffers[names[mean_name]].dtype))
    module.eval()
    seen = int(all_reduce_sum(torch.tensor([float(seen)], dtype=torch.float64), w)[0])
    return module.write_back(model), seen
