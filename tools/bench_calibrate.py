"""Calibration cost: the ONNX-in-torch module against native torchvision, and Fisher pass memory.

    python tools/bench_calibrate.py [--models resnet50,mobilenet_v2] [--batch 32] [--runs 5]
    python tools/bench_calibrate.py --memory [--batch 32]

Throughput: forward + backward (loss = sum of the logits, gradients for every parameter and
the input) of `calibrate.executor.OnnxModule` running the zoo's TorchScript export, and of the
same torchvision architecture natively, both in eval mode, interleaved run by run; medians.
The export folds BatchNorm into the convs, so the native model does slightly more work.

Memory (`--memory`): peak RSS of a child process that runs the Fisher pass on ResNet-50 for
1 and for 4 batches. If no per-sample activations are kept beyond the current batch, the two
peaks are the same; a native forward + backward at the same batch is the reference.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _modules(name: str, image: int):
    import torchvision

    from calibrate.executor import OnnxModule
    from onnxprune.analysis.normalize import normalize
    from onnxprune.model.batch import make_batch_free
    from onnxprune.model.io import load
    from onnxprune.models.zoo import Exporter, cached_model, quiet

    with quiet():
        path = cached_model(name, Exporter.TORCHSCRIPT, image_size=image)
    free, why = make_batch_free(normalize(load(path), {}))
    if why:
        raise SystemExit(f"{name}: not batch-free ({why})")
    return getattr(torchvision.models, name)().eval(), OnnxModule(free).eval()


def _step_timer(module, x):
    def step() -> float:
        inp = x.clone().requires_grad_(True)
        start = time.perf_counter()
        out = module(inp)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
        elapsed = time.perf_counter() - start
        module.zero_grad(set_to_none=True)
        return elapsed
    return step


def throughput(args) -> None:
    import torch

    print("| model | batch | native fwd+bwd s | ONNX module fwd+bwd s | ratio |\n"
          "|---|---|---|---|---|")
    for name in args.models.split(","):
        native, onnx_module = _modules(name, args.image)
        x = torch.randn(args.batch, 3, args.image, args.image)
        timers = [_step_timer(native, x), _step_timer(onnx_module, x)]
        for t in timers:
            t()  # warm-up
        times = [[], []]
        for _ in range(args.runs):
            for k, t in enumerate(timers):
                times[k].append(t())
        med = [statistics.median(t) for t in times]
        print(f"| {name} | {args.batch} | {med[0]:.3f} | {med[1]:.3f} | {med[1] / med[0]:.3f} |",
              flush=True)


_CHILD = """
import sys, resource, numpy as np
mode, batch, batches, image = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if mode == "native":
    import torch, torchvision
    net = torchvision.models.resnet50().eval()
    x = torch.randn(batch, 3, image, image, requires_grad=True)
    for _ in range(batches):
        net(x).sum().backward()
else:
    from calibrate.data import open_data
    from onnxprune.model.graph import input_specs
    from calibrate.scoring import data_scores
    from onnxprune.models.zoo import Exporter, cached_model
    from onnxprune.api import analyze
    from onnxprune.config import CalibrationConfig, Criterion
    analysis = analyze(cached_model("resnet50", Exporter.TORCHSCRIPT, image_size=image))
    x = np.random.default_rng(0).standard_normal((batch * batches, 3, image, image)).astype("f")
    data = open_data([{"input": x}], input_specs(analysis.model))
    data_scores(analysis.channels, Criterion.FISHER, data, CalibrationConfig(batch_size=batch))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(args) -> None:
    print("| run | batch | batches | peak RSS GiB |\n|---|---|---|---|")
    for mode, batches in (("native", 1), ("fisher", 1), ("fisher", 4)):
        code = _CHILD
        out = subprocess.run([sys.executable, "-c", code, mode, str(args.batch), str(batches),
                              str(args.image)], capture_output=True, text=True, check=True)
        kib = int(out.stdout.strip().splitlines()[-1])
        label = "native ResNet-50 fwd+bwd" if mode == "native" else "Fisher pass, ResNet-50"
        print(f"| {label} | {args.batch} | {batches} | {kib / 2**20:.2f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", action="store_true", help="measure peak memory instead")
    args = p.parse_args()
    memory(args) if args.memory else throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
