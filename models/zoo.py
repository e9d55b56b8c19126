"""Test/benchmark zoo: torchvision CNNs with random weights, exported to ONNX.

There are no pretrained weights offline, so every model is built with seeded
random weights. BatchNorm statistics and affine params are randomised too:
with the default init (mean 0, var 1, gamma 1, beta 0) BN is an identity and
a pruner could get away with bugs in BN handling that real models expose.

Both torch ONNX exporters are supported because they emit quite different
graphs (op set, opset version, constant handling, BN folding) and the pruning
rules must cope with both.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import logging
import os
import pathlib
import re
import warnings
from collections.abc import Iterator

import onnx
import torch
import torchvision

from onnxprune.model.io import cache_dir as project_cache_dir
from onnxprune.model.io import write_atomic

INPUT_NAME = "input"
OUTPUT_NAME = "output"
TORCHSCRIPT_OPSET = 17
WEIGHTS_VERSION = 2  # bump when build_torch_model changes the weights (cache key)


class Exporter(enum.Enum):
    """Which torch ONNX exporter produced a model."""

    TORCHSCRIPT = "torchscript"  # legacy tracer, torch.onnx.export(dynamo=False)
    DYNAMO = "dynamo"  # torch.export based, torch.onnx.export(dynamo=True)


ZOO: tuple[str, ...] = (
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "densenet121",
    "googlenet",
    "shufflenet_v2_x1_0",
    "squeezenet1_0",
    "vgg11_bn",
    "convnext_tiny",
    "mnasnet0_5",
)

# Quick models that still cover the interesting coupling patterns: residual
# adds (resnet18), depthwise convs + residuals (mobilenet_v2), channel
# split/shuffle (shufflenet), and concat of parallel branches (squeezenet).
SMALL_ZOO: tuple[str, ...] = (
    "resnet18",
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "squeezenet1_0",
)

# Constructor kwargs that avoid warnings / extra outputs.
_BUILD_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _check_name(name: str) -> None:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model: {name!r}")


def randomize_norm_layers(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial running stats and affine params.

    Values are chosen so activations keep roughly unit scale (var and gamma
    near 1) while still making BN a genuine per-channel affine transform.
    Affine LayerNorm/GroupNorm params are perturbed the same way.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                _randomize_bn(module, generator)
            elif isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                _randomize_affine(module, generator)


def _uniform(shape: torch.Size, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _randomize_bn(bn: torch.nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    if bn.running_mean is not None and bn.running_var is not None:
        n = bn.running_mean.shape
        bn.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        bn.running_var.copy_(_uniform(n, 0.5, 1.5, gen))
    _randomize_affine(bn, gen)


def _randomize_affine(module: torch.nn.Module, gen: torch.Generator) -> None:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if isinstance(weight, torch.Tensor):
        weight.copy_(_uniform(weight.shape, 0.5, 1.5, gen))
    if isinstance(bias, torch.Tensor):
        bias.copy_(0.1 * torch.randn(bias.shape, generator=gen))


def build_torch_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Build torchvision model `name` with seeded random weights, in eval mode."""
    _check_name(name)
    torch.manual_seed(seed)
    kwargs = _BUILD_KWARGS.get(name, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    randomize_norm_layers(model, gen)
    calibrate_batchnorm(model, gen)
    return model.eval()


def calibrate_batchnorm(model: torch.nn.Module, generator: torch.Generator,
                        batches: int = 2, image_size: int = 224) -> None:
    """Set BatchNorm running statistics to the layer's real statistics on random images.

    With arbitrary statistics, activations of a deep random net shrink or blow up layer by
    layer until the output barely depends on the input, and then an exactness check proves
    nothing (a 0.1 % change of the first conv moved MobileNetV2's output by 4e-8). Calibrated
    statistics keep every layer near unit scale, so every weight matters to the output.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        _unit_scale_layers(model, generator, image_size)
        return
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, image_size, image_size, generator=generator))
    model.eval()


def _unit_scale_layers(model: torch.nn.Module, generator: torch.Generator,
                       image_size: int) -> None:
    """Without BatchNorm (SqueezeNet), rescale each Conv / Linear in turn so that its output
    has unit standard deviation on random images (LSUV-style), for the same reason."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    images = torch.randn(4, 3, image_size, image_size, generator=generator)
    model.eval()
    for layer in layers:
        seen = []
        hook = layer.register_forward_hook(lambda mod, inp, out, seen=seen:
                                           seen.append(out.std()))
        with torch.no_grad():
            model(images)
            hook.remove()
            scale = float(seen[0]) if seen and float(seen[0]) > 0 else 1.0
            layer.weight.div_(scale)
            if layer.bias is not None:
                layer.bias.div_(scale)


def example_input(image_size: int = 224, seed: int = 0) -> torch.Tensor:
    """A seeded (1, 3, H, W) float32 image batch."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, image_size, image_size, generator=gen)


@contextlib.contextmanager
def quiet(*extra_loggers: str) -> Iterator[None]:
    """Silence Python-level warnings, prints and torch.onnx/onnxscript (+ extra) logging."""
    names = ("torch.onnx", "torch.export", "onnxscript") + extra_loggers
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: str) -> None:
    torch.onnx.export(
        model, (x,), path,
        dynamo=False,
        opset_version=TORCHSCRIPT_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        do_constant_folding=True,
    )


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: str) -> None:
    program = torch.onnx.export(
        model, (x,), None,
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )
    # external_data=False inlines all weights: one self-contained .onnx file.
    program.save(path, external_data=False)


def _assert_self_contained(path: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"{path}: initializer {init.name!r} uses external data")


def export(
    name: str,
    exporter: Exporter,
    path: str | os.PathLike[str],
    image_size: int = 224,
    seed: int = 0,
) -> pathlib.Path:
    """Export model `name` to `path` (atomically) and return the path.

    The file is written to a temp file in the same directory and moved into place
    (`onnxprune.model.io.write_atomic`), so concurrent readers never see a partial model.
    """
    exporter = Exporter(exporter)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_torch_model(name, seed)
    x = example_input(image_size, seed)

    def write(tmp: str) -> None:
        with quiet(), torch.no_grad():
            if exporter is Exporter.TORCHSCRIPT:
                _export_torchscript(model, x, tmp)
            else:
                _export_dynamo(model, x, tmp)
        _assert_self_contained(tmp)

    write_atomic(path, write)
    return path


# $ONNXPRUNE_CACHE/zoo, else ~/.cache/onnxprune/zoo (the name is kept for tools/export_zoo.py)
default_cache_dir = functools.partial(project_cache_dir, "zoo")


def cache_file_name(name: str, exporter: Exporter, image_size: int, seed: int = 0) -> str:
    """File name keyed on everything that changes the exported graph."""
    torch_version = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    seed_part = "" if seed == 0 else f"-s{seed}"
    return (f"{name}-{Exporter(exporter).value}-{image_size}{seed_part}-w{WEIGHTS_VERSION}"
            f"-torch{torch_version}.onnx")


def cached_model(
    name: str,
    exporter: Exporter,
    image_size: int = 224,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
) -> pathlib.Path:
    """Path to the exported model, exporting it on first use."""
    _check_name(name)
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / cache_file_name(name, exporter, image_size, seed)
    if not path.exists():
        export(name, exporter, path, image_size=image_size, seed=seed)
    return path
