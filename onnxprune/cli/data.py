"""Command-line options for data criteria and recovery: --data and its preprocessing,
--finetune-epochs / --finetune-steps and the schedule (see docs/calibration.md, docs/recovery.md).
"""
from __future__ import annotations

import argparse

from onnxprune.config import (
    DEFAULT_ROUNDS,
    CalibrationConfig,
    Criterion,
    FinetuneConfig,
    Optimizer,
    Schedule,
)
from onnxprune.errors import UserError


def add_data(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("calibration data (fisher, hrank, taylor)")
    d.add_argument("--data", metavar="PATH", help="a folder of images (sub-folders per class "
                   "give labels), an .npz with arrays named after the inputs (+ labels), or an "
                   ".npy of inputs")
    d.add_argument("--batch-size", type=int, default=32, metavar="N")
    d.add_argument("--calib-batches", type=int, default=32, metavar="N",
                   help="batches to score on (default 32; 0: the whole data set)")
    d.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="fisher / taylor: remove in N rounds, re-scoring before each the "
                        "refit slice so far, its removed channels masked (default "
                        f"{DEFAULT_ROUNDS}, or 1 with --no-reconstruct; N scoring passes)")
    d.add_argument("--no-labels", action="store_true",
                   help="ignore labels: Fisher samples them from the model's predictions")
    d.add_argument("--resize", metavar="H[xW]", help="images: resize the shorter side to H "
                   "(or to HxW) before the centre crop (default: the input size)")
    d.add_argument("--mean", metavar="M,M,M", help="images: per-channel mean on the [0, 1] "
                   "scale (default ImageNet for 3 channels, 0 for 1)")
    d.add_argument("--std", metavar="S,S,S", help="images: per-channel std (default ImageNet "
                   "for 3 channels, 1 for 1)")
    d.add_argument("--channel-order", choices=["rgb", "bgr"], default="rgb")
    d.add_argument("--recalibrate-bn", action="store_true",
                   help="after slicing, re-estimate BatchNormalization statistics on --data "
                        "(AdaBN; no training; the oracle still checks the slice before it)")
    d.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="torch device for calibration (default: cuda when available)")


def add_finetune(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("recovery on --data: least-squares refit, fine-tuning after (or "
                             "while) pruning, judged on held-out samples")
    f.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="refit the layers that lost input channels by least squares against "
                        "the original's outputs (default: on with --data, except --schedule gfp)")
    f.add_argument("--min-agreement", type=float, default=None, metavar="F",
                   help="exit 2 and write nothing when the held-out top-1 agreement with the "
                        "original is below F (0..1)")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--finetune-epochs", type=float, metavar="E",
                        help="fine-tune for E passes over the data (fractions allowed)")
    budget.add_argument("--finetune-steps", type=int, metavar="N", help="fine-tune for N steps")
    f.add_argument("--schedule", choices=[s.value for s in Schedule], default="oneshot",
                   help="oneshot: score, prune, fine-tune; gfp: prune while fine-tuning "
                        "(Group Fisher, Algorithm 2)")
    f.add_argument("--lr", type=float, default=0.01, help="peak learning rate (cosine decay)")
    f.add_argument("--optimizer", choices=[o.value for o in Optimizer], default="sgd")
    f.add_argument("--weight-decay", type=float, default=5e-4)
    f.add_argument("--temperature", type=float, default=4.0,
                   help="distillation temperature of the KD term (with or without labels)")
    f.add_argument("--prune-every", type=int, default=25, metavar="D",
                   help="gfp: steps between removals (paper: 25 for classification)")
    f.add_argument("--prune-count", type=int, default=1, metavar="K",
                   help="gfp: chunks removed each time (a chunk: --round-to channels of one "
                        "layer group, or one unit where the group's width is not a multiple)")
    f.add_argument("--holdout", type=int, default=500, metavar="N",
                   help="samples kept out of the refit and of training, to judge them "
                        "(default 500, at most half the data)")


def criterion(args) -> Criterion:
    if args.criterion is None:
        return Criterion.FISHER if args.data else Criterion.L1
    criterion = Criterion(args.criterion)
    if criterion.needs_data and not args.data:
        raise UserError(f"--criterion {criterion.value} needs calibration data: --data PATH")
    return criterion


def image_options(args):
    if not any((args.resize, args.mean, args.std, args.channel_order != "rgb")):
        return None
    from calibrate.data import ChannelOrder, ImageOptions, parse_floats, parse_hw

    def parsed(flag: str, parse, text):
        try:
            return parse(text) if text else None
        except UserError as exc:
            raise UserError(f"{flag} {exc}") from None

    return ImageOptions(resize=parsed("--resize", parse_hw, args.resize),
                        mean=parsed("--mean", parse_floats, args.mean),
                        std=parsed("--std", parse_floats, args.std),
                        channel_order=ChannelOrder(args.channel_order))


def calibration(args) -> CalibrationConfig:
    if args.recalibrate_bn and not args.data:
        raise UserError("--recalibrate-bn needs data: --data PATH")
    _positive("--batch-size", args.batch_size)
    _positive("--calib-batches", args.calib_batches, 0)
    _positive("--rounds", args.rounds)  # None: the default
    return CalibrationConfig(batch_size=args.batch_size,
                             max_batches=args.calib_batches or None, no_labels=args.no_labels,
                             progress=True, device=args.device, image=image_options(args),
                             recalibrate_bn=args.recalibrate_bn, rounds=args.rounds)


def _positive(flag: str, value, minimum=1):
    if value is not None and value < minimum:
        raise UserError(f"{flag} {value}: must be >= {minimum}")


def recovery(args) -> dict:
    """PruneConfig's recovery fields from --reconstruct, --holdout and --min-agreement."""
    _positive("--holdout", args.holdout, 0)
    if args.reconstruct and not args.data:
        raise UserError("--reconstruct refits on data: give --data PATH")
    if args.min_agreement is not None:
        if not 0 <= args.min_agreement <= 1:
            raise UserError(f"--min-agreement {args.min_agreement}: must be in [0, 1]")
        if not args.data:
            raise UserError("--min-agreement judges on held-out data: give --data PATH")
    return {"reconstruct": args.reconstruct, "holdout": args.holdout,
            "min_agreement": args.min_agreement}


def finetune(args) -> FinetuneConfig | None:
    """None unless a fine-tuning budget is given."""
    if args.finetune_epochs is None and args.finetune_steps is None:
        if args.schedule != "oneshot":
            raise UserError("--schedule gfp prunes while fine-tuning: give --finetune-epochs "
                            "or --finetune-steps")
        return None
    if not args.data:
        raise UserError("fine-tuning needs data: --data PATH")
    if args.finetune_epochs is not None and not args.finetune_epochs > 0:
        raise UserError(f"--finetune-epochs {args.finetune_epochs}: must be > 0")
    for flag, value in (("--finetune-steps", args.finetune_steps),
                        ("--prune-every", args.prune_every), ("--prune-count", args.prune_count)):
        _positive(flag, value)
    if not (args.lr > 0 and args.temperature > 0 and args.weight_decay >= 0):
        raise UserError("--lr and --temperature must be > 0, --weight-decay >= 0")
    return FinetuneConfig(epochs=args.finetune_epochs, steps=args.finetune_steps, lr=args.lr,
                          optimizer=Optimizer(args.optimizer), weight_decay=args.weight_decay,
                          batch_size=args.batch_size, temperature=args.temperature,
                          schedule=Schedule(args.schedule), prune_every=args.prune_every,
                          prune_count=args.prune_count)
