"""Real trained models worth pruning: ResNet-20 / -56, a small MobileNetV2 and a small ViT on
Fashion-MNIST.

The zoo's random-weight models prove a pruner correct; these prove it useful (accuracy before
and after pruning / fine-tuning). Data comes from :mod:`models.fashion_data`, the network
definitions from :mod:`models.fashion_nets`.

- ``resnet20``: CIFAR ResNet-20 (He et al. 2016): 3x3 conv 16 + 3 stages x 3 basic blocks
  with 16 / 32 / 64 channels, option-B shortcuts (1x1 conv + BN) where the shape changes,
  global average pool, linear 10. On 1x28x28 the stages run at 28, 14 and 7 pixels.
- ``resnet56``: the same with 9 basic blocks per stage (ResNet-56, 55 convs + linear).
- ``mobilenetv2_small``: MobileNetV2 (Sandler et al. 2018) for 28x28: stem 3x3 conv 16
  stride 1, inverted residuals (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,2,2)
  (6,96,1,1), 1x1 conv to 256, global average pool, linear 10; ReLU6, depthwise 3x3.
- ``vit_p4``: a ViT with 4x4 patches, 4 blocks of width 64, 4 heads, MLP 128
  (:mod:`models.fashion_vit`); trained with AdamW (weight decay 0.05) instead of SGD.

Training (:func:`train`): SGD, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter,
one-cycle LR (peak ``lr``, no momentum cycling), batch 128, augmentation = random 28x28 crop
of the image zero-padded by 2 + horizontal flip. Deterministic for a seed: the model is built
after ``torch.manual_seed(seed)``, shuffling and augmentation draw from their own
``torch.Generator``, and ``torch.use_deterministic_algorithms(True)`` during training (results
may still differ across thread counts / CPUs). Training runs in channels_last (2x faster
on CPU).

Export (:func:`export_onnx`): batch-1 static input ``input`` [1,1,28,28], output ``logits``,
eval mode, with every BatchNormalization kept as its own node (a pruner must handle BN):
- TORCHSCRIPT (default, opset 17): ``training=TrainingMode.PRESERVE`` on the eval-mode model.
  With the default ``TrainingMode.EVAL`` the exporter's eval peephole fuses BN into Conv; with
  PRESERVE it skips that pass but still constant-folds, and BN is exported in inference form
  (``training_mode=0``, running statistics) because the module is in eval mode.
- DYNAMO (opset 18, its minimum): the default onnxscript optimizer also fuses BN into Conv,
  so export with ``optimize=False``, then only fold constants, remove unused nodes and lift
  constants to initializers.

Cache (:func:`cached_fashion_model`, :func:`load_torch_model`): ``$ONNXPRUNE_CACHE/fashion``
or ``~/.cache/onnxprune/fashion``; per (name, epochs, seed, WEIGHTS_VERSION, torch version) a
``.pt`` state_dict, a ``.json`` with the training record and one ``.onnx`` per exporter, all
written atomically (`onnxprune.model.io.write_atomic`), training serialised by a lock file.

CLI: ``python -m onnxprune.models.fashion train resnet20 [--epochs E] [--seed S] [--exporter X]
[--fold-bn]``,
``python -m onnxprune.models.fashion npz out.npz --split test --n 1000``,
``python -m onnxprune.models.fashion eval model.onnx [--n N]``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.errors import UserError
from onnxprune.model.io import cache_dir as project_cache_dir
from onnxprune.model.io import write_atomic, write_json_atomic
from onnxprune.models.fashion_data import MEAN, STD, load_fashion, to_input, write_npz
from onnxprune.models.fashion_nets import MODELS, build_model
from onnxprune.models.zoo import Exporter, quiet

DEFAULT_EPOCHS = {"resnet20": 6, "resnet56": 4, "mobilenetv2_small": 4, "vit_p4": 10}
DEFAULT_LR = {"resnet20": 0.1, "resnet56": 0.1, "mobilenetv2_small": 0.1, "vit_p4": 2e-3}
ADAMW = frozenset({"vit_p4"})  # transformers train with AdamW (decoupled weight decay 0.05)
WEIGHTS_VERSION = 1  # bump when a model, the data pipeline or the training recipe changes
INPUT_NAME, OUTPUT_NAME = "input", "logits"
TORCHSCRIPT_OPSET, DYNAMO_OPSET = 17, 18
INPUT_SHAPE = (1, 1, 28, 28)
MOMENTUM, WEIGHT_DECAY, PAD = 0.9, 5e-4, 2


# -------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: nn.Module  # eval mode, contiguous memory format
    test_top1: float | None  # torch, on the 10k test images (None if evaluate=False)
    epoch_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean over each epoch

    def record(self) -> dict[str, object]:
        out = asdict(self)
        del out["model"]
        return out


@contextlib.contextmanager
def _deterministic(threads: int | None = None) -> Iterator[None]:
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.set_num_threads(old_threads)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W] -> float32 [B, 1, H, W], the same formula as fashion_data.to_input."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def _augment(padded: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 28x28 crops of uint8 images zero-padded by PAD, each flipped with p = 1/2."""
    b, size = padded.shape[0], padded.shape[-1] - 2 * PAD
    offsets = torch.randint(0, 2 * PAD + 1, (b, 2), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    ar = torch.arange(size)
    rows = (offsets[:, 0, None] + ar)[:, :, None]
    cols = offsets[:, 1, None] + torch.where(flip[:, None], ar.flip(0), ar)
    return padded[torch.arange(b)[:, None, None], rows, cols[:, None, :]]


def evaluate_torch(model: nn.Module, split: str = "test", batch_size: int = 1000) -> float:
    """Top-1 accuracy of a torch model on a whole split."""
    images, labels = load_fashion(split)
    images_t, correct = torch.from_numpy(images), 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            x = _normalise(images_t[i:i + batch_size]).contiguous(
                memory_format=torch.channels_last)
            correct += int((model(x).argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return correct / len(labels)


def _optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name in ADAMW:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True,
                           weight_decay=WEIGHT_DECAY)


def train(name: str, epochs: int | None = None, seed: int = 0, batch_size: int = 128,
          lr: float | None = None, *, max_steps: int | None = None, evaluate: bool = True,
          threads: int | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train `name` from scratch on the 60k training images (see the module docstring).

    `max_steps` stops each epoch after that many batches (tests); `threads` sets torch's
    intra-op threads while training (default: leave as is; on a CPU shared with other jobs,
    threads=1 avoids OpenMP oversubscription, which slowed 2-thread training 4-7x here);
    `log` receives one line per epoch. Returns the model in eval mode with its torch test
    top-1 and per-epoch seconds.
    """
    epochs = DEFAULT_EPOCHS[name] if epochs is None else epochs
    lr = DEFAULT_LR[name] if lr is None else lr
    images, labels = load_fashion("train")
    padded = torch.nn.functional.pad(torch.from_numpy(images), (PAD,) * 4)
    labels_t = torch.from_numpy(labels)
    steps = -(-len(labels) // batch_size)
    steps = steps if max_steps is None else min(steps, max_steps)
    with _deterministic(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = build_model(name).to(memory_format=torch.channels_last)
        opt = _optimizer(name, model, lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                    cycle_momentum=False)
        result = TrainResult(model, None)
        for epoch in range(epochs):
            model.train()
            start, total = time.perf_counter(), 0.0
            order = torch.randperm(len(labels), generator=gen)
            for step in range(steps):
                index = order[step * batch_size:(step + 1) * batch_size]
                x = _normalise(_augment(padded[index], gen)).contiguous(
                    memory_format=torch.channels_last)
                loss = nn.functional.cross_entropy(model(x), labels_t[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
            result.epoch_seconds.append(round(time.perf_counter() - start, 2))
            result.train_loss.append(round(total / steps, 5))
            if log:
                log(f"{name} epoch {epoch + 1}/{epochs}: loss {result.train_loss[-1]:.4f}, "
                    f"{result.epoch_seconds[-1]:.1f} s")
    model.to(memory_format=torch.contiguous_format).eval()
    if evaluate:
        result.test_top1 = evaluate_torch(model)
        if log:
            log(f"{name} test top-1 (torch): {result.test_top1:.4f}")
    return result


# ------------------------------------------------------------------- export + cache


def export_onnx(model: nn.Module, path: str | os.PathLike[str],
                exporter: Exporter | str = Exporter.TORCHSCRIPT,
                fold_bn: bool = False) -> pathlib.Path:
    """Export `model` (switched to eval mode) to `path`, not atomically, BatchNormalization kept,
    or with `fold_bn` folded into the convolutions as each exporter does by default (the form
    most ONNX files in the wild have)."""
    exporter, path = Exporter(exporter), pathlib.Path(path)
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.zeros(INPUT_SHAPE)
    with quiet(), torch.no_grad():
        if exporter is Exporter.TORCHSCRIPT:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              training=torch.onnx.TrainingMode.EVAL if fold_bn
                              else torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
        else:
            import onnxscript.optimizer
            from onnxscript import ir

            program = torch.onnx.export(model, (x,), None, dynamo=True, optimize=fold_bn,
                                        opset_version=DYNAMO_OPSET, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME])
            onnxscript.optimizer.fold_constants(program.model)
            onnxscript.optimizer.remove_unused_nodes(program.model)
            ir.passes.common.LiftConstantsToInitializersPass(
                lift_all_constants=True, size_limit=0)(program.model)
            program.save(str(path), external_data=False)
    return path


# $ONNXPRUNE_CACHE/fashion, else ~/.cache/onnxprune/fashion
default_cache_dir = functools.partial(project_cache_dir, "fashion")


def _stem(name: str, epochs: int, seed: int, max_steps: int | None = None) -> str:
    torch_version = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    steps = "" if max_steps is None else f"-m{max_steps}"
    return f"{name}-e{epochs}{steps}-s{seed}-w{WEIGHTS_VERSION}-torch{torch_version}"


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """Serialise producers of `path` across processes (one training, not two)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes alone
        yield
        return
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def weights_path(name: str, epochs: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike[str] | None = None,
                 log: Callable[[str], None] | None = None,
                 threads: int | None = None, max_steps: int | None = None) -> pathlib.Path:
    """The cached ``.pt`` state_dict, training it (once) when missing; a ``.json`` beside it
    holds the training record (test top-1, seconds per epoch, losses, threads). `max_steps`
    caps each epoch's batches (the demo's --quick run), cached apart."""
    build_model(name)  # validate the name before any work
    epochs = DEFAULT_EPOCHS[name] if epochs is None else epochs
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{_stem(name, epochs, seed, max_steps)}.pt"
    if path.exists():
        return path
    with _locked(path):
        if not path.exists():
            result = train(name, epochs, seed, threads=threads, log=log, max_steps=max_steps)
            record = {"name": name, "epochs": epochs, "seed": seed, "torch": torch.__version__,
                      "threads": threads or torch.get_num_threads(), **result.record()}
            write_json_atomic(record, path.with_suffix(".json"))
            write_atomic(path, lambda tmp: torch.save(result.model.state_dict(), tmp))
    return path


def training_record(name: str, epochs: int | None = None, seed: int = 0,
                    cache_dir: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """The ``.json`` training record of a cached model (trains it when missing)."""
    return json.loads(weights_path(name, epochs, seed, cache_dir).with_suffix(".json").read_text())


def load_torch_model(name: str, epochs: int | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike[str] | None = None,
                     max_steps: int | None = None) -> nn.Module:
    """The trained torch model (eval mode), training it (once) when not cached."""
    path = weights_path(name, epochs, seed, cache_dir, max_steps=max_steps)
    model = build_model(name)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def cached_fashion_model(name: str, epochs: int | None = None, seed: int = 0,
                         exporter: Exporter | str = Exporter.TORCHSCRIPT,
                         cache_dir: str | os.PathLike[str] | None = None,
                         log: Callable[[str], None] | None = None,
                         threads: int | None = None,
                         max_steps: int | None = None, fold_bn: bool = False) -> pathlib.Path:
    """Path to the trained model's ONNX file, training and exporting it on first use;
    `fold_bn` exports it with BatchNormalization folded into the convolutions."""
    exporter = Exporter(exporter)
    pt = weights_path(name, epochs, seed, cache_dir, log=log, threads=threads,
                      max_steps=max_steps)
    path = pt.with_name(f"{pt.stem}-{exporter.value}{'-folded' if fold_bn else ''}.onnx")
    if not path.exists():
        with _locked(path):
            if not path.exists():
                model = load_torch_model(name, epochs, seed, cache_dir, max_steps)
                write_atomic(path, lambda tmp: export_onnx(model, tmp, exporter, fold_bn))
    return path


# ------------------------------------------------------------------------ evaluation


def evaluate_onnx(path: str | os.PathLike[str] | onnx.ModelProto, split: str = "test",
                  n: int | None = None, batch_size: int = 500) -> float:
    """Top-1 accuracy in onnxruntime (CPU) on the first `n` images of `split` (all if None).

    The exported models are batch-1 static: `onnxprune.model.batch.make_batch_free` gives a copy
    that runs `batch_size` images at a time (proven against batch-1 runs); where no such copy
    exists the images run one by one."""
    from onnxprune.model.batch import make_batch_free
    from onnxprune.model.runtime import session

    model = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))
    images, labels = load_fashion(split)
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = to_input(images)
    free, why = make_batch_free(model)
    sess = session(free)
    name = sess.get_inputs()[0].name
    step = batch_size if why is None else 1
    predictions = np.concatenate([sess.run(None, {name: x[i:i + step]})[0].argmax(1)
                                  for i in range(0, len(x), step)])
    return float((predictions == labels).mean())


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxprune.models.fashion", description=__doc__
                                     .split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (once, cached), export, print test top-1 + path")
    p.add_argument("name", choices=MODELS)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exporter", choices=[e.value for e in Exporter],
                   default=Exporter.TORCHSCRIPT.value)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads while training (1 on a busy shared CPU)")
    p.add_argument("--fold-bn", action="store_true",
                   help="export with BatchNormalization folded into the convolutions")
    p = sub.add_parser("npz", help="write preprocessed images + labels for --data")
    p.add_argument("out")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("eval", help="top-1 of an ONNX model in onnxruntime")
    p.add_argument("model")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            def log(line: str) -> None:
                print(line, file=sys.stderr, flush=True)
            path = cached_fashion_model(args.name, args.epochs, args.seed, args.exporter, log=log,
                                        threads=args.threads, fold_bn=args.fold_bn)
            record = training_record(args.name, args.epochs, args.seed)
            seconds = record["epoch_seconds"]
            print(f"train: {len(seconds)} epochs, {sum(seconds) / len(seconds):.1f} s/epoch")
            print(f"test top-1 (onnxruntime): {evaluate_onnx(path):.4f}")
            print(path)
        elif args.command == "npz":
            out = write_npz(args.out, args.split, args.n, args.seed)
            print(out)
        else:
            print(f"{args.split} top-1: {evaluate_onnx(args.model, args.split, args.n):.4f}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
