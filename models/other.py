"""Test zoo, part two: real models from other frameworks and model libraries, as ONNX files.

Families (each needs an optional package; `build` raises ImportError without it):
- ``ocr``: the trained PaddleOCR det / cls / rec models shipped inside `rapidocr-onnxruntime`
  (Paddle2ONNX exports, weights in `Constant` nodes, dynamic H / W: analysed with the
  ``input_shape`` below). The files are used where the wheel put them; nothing is copied.
- ``mtcnn``: the trained MTCNN P-, R- and O-nets of `facenet-pytorch` (their weights ship inside
  the wheel; PReLU layers), ``torch.onnx.export(dynamo=False, opset_version=17)``. The P-net is
  fully convolutional and MTCNN runs it on an image pyramid, so it is exported with dynamic
  H / W and analysed at 1x3x48x48; R-net (24x24) and O-net (48x48) are exported static.
  facenet-pytorch pins torch<2.3: install it with ``pip install --no-deps facenet-pytorch``.
- ``yolo``: YOLOv8n and YOLOv8s-seg built from the yaml files inside `ultralytics` (random
  weights, nothing downloaded: ``YOLO_OFFLINE=1`` is set before ultralytics is imported),
  prepared the way ultralytics' own ONNX exporter does it (Conv+BN fused, detection head in
  export mode: one decoded [1, 4+80, anchors] tensor, plus the mask coefficients and prototypes
  for -seg; C2f split with ``Split``), exported at 1x3x320x320 with both torch exporters.
- ``timm``: a dozen timm architectures, built by ``tools/bench_unseen.py``'s ``export_timm``
  (pretrained=False, re-drawn constant-valued parameters, calibrated BatchNorm, 224x224, both
  torch exporters).

Random weights are made input-sensitive (an exactness oracle on a network whose output ignores
its input proves nothing): constant-valued parameters are re-drawn (ultralytics initialises
the class-score biases to -11, so every class score would be sigmoid(-11) ~ 2e-5 whatever the
input) and BatchNorm statistics calibrated on random images with ``models.zoo``'s
``calibrate_batchnorm``.

Exports are cached under ``$ONNXPRUNE_CACHE/other`` or ``~/.cache/onnxprune/other``, keyed on
the package versions and ``WEIGHTS_VERSION``, written atomically (``model.io.write_atomic``).
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxprune.model.io import cache_dir, write_atomic

SEED = 0
WEIGHTS_VERSION = 1  # bump when a builder changes the weights or the graph (cache key)
YOLO_IMAGE = 320

OCR_FILES = {  # name -> (file inside rapidocr_onnxruntime/models, --input-shape)
    "ocr_det": ("ch_PP-OCRv4_det_infer.onnx", "1x3x640x640"),
    "ocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "1x3x48x192"),
    "ocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", "1x3x48x320"),
}
MTCNN_NETS = {  # name -> (facenet_pytorch class, export input H = W, dynamic H / W, outputs)
    "mtcnn_pnet": ("PNet", 48, True, ("boxes", "probs")),
    "mtcnn_rnet": ("RNet", 24, False, ("boxes", "probs")),
    "mtcnn_onet": ("ONet", 48, False, ("boxes", "landmarks", "probs")),
}
YOLO_CONFIGS = {  # name -> (yaml inside ultralytics, outputs)
    "yolov8n": ("yolov8n.yaml", ("output",)),
    "yolov8s_seg": ("yolov8s-seg.yaml", ("output", "protos")),
}
# 12 of tools/bench_unseen.py's 16: the convolutional families torchvision lacks, and the
# attention / LayerNorm hybrids whose blocking the tests pin (res2net50_14w_8s, skresnet18,
# cspresnet50 and inception_v3 add little coverage and a lot of time).
TIMM_NAMES = ("dla34", "dpn68", "resnest14d", "repvgg_a0", "ghostnetv2_100", "hrnet_w18_small",
              "rexnet_100", "tf_efficientnet_lite0", "mobilevit_xxs", "efficientformerv2_s0",
              "efficientvit_b0", "convnext_atto", "deit_tiny_patch16_224", "vit_small_patch16_224",
              "swin_tiny_patch4_window7_224", "levit_128s")
TORCH_EXPORTERS = ("torchscript", "dynamo")
PACKAGES = {"ocr": "rapidocr_onnxruntime", "mtcnn": "facenet_pytorch", "yolo": "ultralytics",
            "timm": "timm"}
PIP_NAMES = {"ocr": "rapidocr-onnxruntime", "mtcnn": "facenet-pytorch (pip install --no-deps)",
             "yolo": "ultralytics", "timm": "timm"}


@dataclass(frozen=True)
class OtherModel:
    name: str
    family: str  # ocr | mtcnn | yolo | timm
    exporter: str  # paddle2onnx | torchscript | dynamo
    input_shape: str | None = None  # the CLI's --input-shape, for files with dynamic dims

    @property
    def id(self) -> str:
        return f"{self.name}-{self.exporter}"

    @property
    def package(self) -> str:
        """Import name of the optional package this model needs."""
        return PACKAGES[self.family]

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


MODELS: tuple[OtherModel, ...] = (
    *(OtherModel(name, "ocr", "paddle2onnx", shape) for name, (_, shape) in OCR_FILES.items()),
    *(OtherModel(name, "mtcnn", "torchscript", f"1x3x{size}x{size}" if dynamic else None)
      for name, (_, size, dynamic, _) in MTCNN_NETS.items()),
    *(OtherModel(name, "yolo", exporter) for name in YOLO_CONFIGS for exporter in TORCH_EXPORTERS),
    *(OtherModel(name, "timm", exporter) for name in TIMM_NAMES for exporter in TORCH_EXPORTERS),
)
BY_ID = {m.id: m for m in MODELS}


def build(model: OtherModel | str, cache: str | os.PathLike | None = None) -> Path:
    """Path to the model's ONNX file, exporting it into the cache on first use.

    Raises ImportError when the family's optional package is missing."""
    model = BY_ID[model] if isinstance(model, str) else model
    if importlib.util.find_spec(model.package) is None:
        raise ImportError(f"{model.id} needs the optional package {PIP_NAMES[model.family]}")
    if model.family == "ocr":
        return ocr_path(model.name)
    folder = Path(cache) if cache is not None else cache_dir("other")
    folder.mkdir(parents=True, exist_ok=True)
    if model.family == "timm":
        return _timm(model, folder)
    path = folder / f"{model.name}-{model.exporter}-{_tag(model.family)}.onnx"
    if not path.exists():
        if model.family == "mtcnn":
            _atomic(path, lambda tmp: _export_mtcnn(model.name, tmp))
        else:
            _atomic(path, lambda tmp: _export_yolo(model.name, model.exporter, tmp))
    return path


# ---------------------------------------------------------------------------------- helpers

def _tag(family: str) -> str:
    """Versions that change an export: torch, the family's package, our weights."""
    from importlib.metadata import version

    import torch

    dist = {"mtcnn": "facenet-pytorch", "yolo": "ultralytics", "timm": "timm"}[family]
    raw = f"w{WEIGHTS_VERSION}-s{SEED}-torch{torch.__version__}-{family}{version(dist)}"
    return re.sub(r"[^0-9A-Za-z.]+", "_", raw)


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    """`write(tmp)` into a temp file beside `path`, checked, then moved into place."""
    import onnx

    def checked(tmp: str) -> None:
        write(tmp)
        onnx.checker.check_model(tmp)

    return write_atomic(path, checked)


def _quiet():
    """models.zoo's quiet(), imported late: it needs torch, which the OCR models do not."""
    from onnxprune.models.zoo import quiet

    return quiet("ultralytics")


def _torch_export(net, x, path: str, exporter: str, outputs, dynamic_axes=None) -> None:
    import torch

    names = dict(input_names=["input"], output_names=list(outputs))
    with _quiet(), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17,
                              do_constant_folding=True, dynamic_axes=dynamic_axes, **names)
        else:
            torch.onnx.export(net, (x,), None, dynamo=True, **names).save(
                path, external_data=False)


def redraw_constant_parameters(net, generator) -> None:
    """Re-draw every parameter whose values are all equal (fresh BatchNorm gammas and betas,
    detection-head bias priors; tools/bench_unseen.py uses it for timm): weights ~ N(0, 1/fan_in)
    (Kaiming), biases ~ N(0, 0.1), scales ~ U(0.5, 1.5)."""
    import torch

    with torch.no_grad():
        for name, p in net.named_parameters():
            flat = p.reshape(-1)
            if flat.numel() > 1 and not bool((flat == flat[0]).all()) and p.abs().max() > 0:
                continue
            if p.ndim >= 2:
                torch.nn.init.kaiming_normal_(p, generator=generator)
            elif name.endswith("bias") or "beta" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            else:
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)


# ---------------------------------------------------------------------------------- families

def ocr_path(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise ImportError("the PaddleOCR models need rapidocr-onnxruntime")
    return Path(spec.origin).parent / "models" / OCR_FILES[name][0]


def _export_mtcnn(name: str, path: str) -> None:
    """The pretrained net from the wheel's data/ folder, eval mode, opset 17."""
    import torch
    from facenet_pytorch.models import mtcnn

    cls, size, dynamic, outputs = MTCNN_NETS[name]
    torch.manual_seed(SEED)
    net = getattr(mtcnn, cls)(pretrained=True).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(SEED))
    axes = None
    if dynamic:  # the image pyramid: any H, W (and batch)
        axes = {"input": {0: "batch", 2: "height", 3: "width"}}
        axes.update({o: {0: "batch", 2: "out_height", 3: "out_width"} for o in outputs})
    _torch_export(net, x, path, "torchscript", outputs, axes)


def build_yolo(name: str):
    """The ultralytics nn.Module from the package's yaml, random input-sensitive weights,
    prepared for export the way ultralytics' exporter does it; eval mode."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # before the import: no online check
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.modules import C2f, Detect

    from onnxprune.models.zoo import calibrate_batchnorm

    torch.manual_seed(SEED)
    with _quiet():
        net = YOLO(YOLO_CONFIGS[name][0]).model  # built from the yaml; no weights file
    gen = torch.Generator().manual_seed(SEED + 1)
    redraw_constant_parameters(net, gen)
    for p in net.parameters():
        p.requires_grad_(False)
    calibrate_batchnorm(net, gen, batches=2, image_size=YOLO_IMAGE)
    net.eval().float()
    with _quiet():
        net = net.fuse(verbose=False)
    for m in net.modules():
        if isinstance(m, Detect):  # Segment too: decoded outputs, no training-time dict
            m.export, m.format, m.dynamic, m.shape = True, "onnx", False, None
        elif isinstance(m, C2f):
            m.forward = m.forward_split
    return net.eval()


def _export_yolo(name: str, exporter: str, path: str) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical re-exports
    try:
        net = build_yolo(name)
        x = torch.randn(1, 3, YOLO_IMAGE, YOLO_IMAGE,
                        generator=torch.Generator().manual_seed(SEED))
        _torch_export(net, x, path, exporter, YOLO_CONFIGS[name][1])
    finally:
        torch.set_num_threads(threads)


def load_bench_unseen():
    """tools/bench_unseen.py as a module (tools/ is not a package; importing it sets
    HF_HUB_OFFLINE=1)."""
    if "bench_unseen" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "tools" / "bench_unseen.py"
        spec = importlib.util.spec_from_file_location("bench_unseen", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_unseen"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["bench_unseen"]
            raise
    return sys.modules["bench_unseen"]


def _timm(model: OtherModel, folder: Path) -> Path:
    """tools/bench_unseen.py's export_timm (its weights and file naming), in our cache."""
    bench_unseen = load_bench_unseen()
    import timm
    import torch

    tag = re.sub(r"[^0-9A-Za-z.]+", "_", f"torch{torch.__version__}-timm{timm.__version__}")
    path = folder / (f"timm-{model.name}-{model.exporter}-{bench_unseen.IMAGE}-cal-"
                     f"s{bench_unseen.SEED}-{tag}.onnx")
    if not path.exists():
        threads = torch.get_num_threads()
        try:
            bench_unseen.export_timm(model.name, model.exporter, path)  # atomic itself
        finally:
            torch.set_num_threads(threads)
    return path
