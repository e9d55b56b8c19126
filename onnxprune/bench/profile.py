"""TensorRT optimization profiles for `onnxprune bench --backend tensorrt | ort-trt`.

An engine whose inputs have dynamic dimensions is built for a profile: per input a min, opt
and max shape; it runs at any shape between min and max and is tuned for opt. The flags are
trtexec's `--minShapes / --optShapes / --maxShapes`, spelled the project's way:

    --min-shapes input:1x3x224x224 --opt-shapes input:8x3x224x224 --max-shapes input:32x3x224x224

several inputs comma-separated (`a:1x3x64x64,b:1x4`), the name optional for a single-input
model (as `--input-shape`); all three or none. Without them, when a model file has a dynamic
input dimension, the profile spans the benchmarked batches: min at the smallest `--batch`,
opt at the first, max at the largest, the other dimensions the model's. One engine then
serves every batch size, as in a deployment that sets a batch profile; both ways, every
`--batch` must lie inside the profile (one line otherwise, before any work). Without a
profile (every model static) each batch size gets a fixed engine, built from a re-batched copy.

`engine_ranges` is what a backend builds with: per input of the model it prepares, the
profile's range where the input has a dynamic dimension, else its run shape three times.
TensorRT takes them with `IOptimizationProfile.set_shape` (`apply`); onnxruntime's TensorRT EP
as the `trt_profile_{min,opt,max}_shapes` provider options (`provider_options`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from onnxprune.errors import UserError

if TYPE_CHECKING:
    import onnx

    from onnxprune.model.graph import InputSpec

Shape = tuple[int, ...]
FLAGS = ("--min-shapes", "--opt-shapes", "--max-shapes")


class Range(NamedTuple):
    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a Range per input name."""

    ranges: tuple[tuple[str, Range], ...]

    def get(self, name: str) -> Range | None:
        return dict(self.ranges).get(name)

    def as_dict(self) -> dict[str, dict[str, list[int]]]:
        return {name: {k: list(v) for k, v in r._asdict().items()} for name, r in self.ranges}

    def describe(self) -> str:
        return "; ".join(f"{name} {_dims(r.min)} to {_dims(r.max)}, opt {_dims(r.opt)}"
                         for name, r in self.ranges)


def _dims(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _parse(flag: str, text: str, names: list[str]) -> dict[str, Shape]:
    from onnxprune.model.graph import parse_input_shapes  # the one shape-list parser

    try:
        return parse_input_shapes(text, names)
    except UserError as exc:
        raise UserError(str(exc).replace("--input-shape", flag)) from None


def parse_profile(texts: tuple[str | None, str | None, str | None], names: list[str]
                  ) -> Profile | None:
    """The three flags' texts against the model's input names; None when none is given."""
    if not any(texts):
        return None
    if not all(texts):
        raise UserError(f"{', '.join(FLAGS)}: give all three or none (trtexec's min, opt, max)")
    low, opt, high = (_parse(flag, text, names) for flag, text in zip(FLAGS, texts))
    if not set(low) == set(opt) == set(high):
        raise UserError(f"{', '.join(FLAGS)} must name the same inputs")
    ranges = []
    for name in low:
        r = Range(low[name], opt[name], high[name])
        if not len(r.min) == len(r.opt) == len(r.max):
            raise UserError(f"{', '.join(FLAGS)}: input {name!r} has different ranks")
        if not all(a <= b <= c for a, b, c in zip(*r)):
            raise UserError(f"{', '.join(FLAGS)}: input {name!r} needs min <= opt <= max in "
                            f"every dimension, got {_dims(r.min)}, {_dims(r.opt)}, {_dims(r.max)}")
        ranges.append((name, r))
    return Profile(tuple(ranges))


def batch_span(low: list[InputSpec], opt: list[InputSpec], high: list[InputSpec]) -> Profile:
    """The default profile: the model's input specs at the smallest, first and largest batch."""
    return Profile(tuple((a.name, Range(a.shape, b.shape, c.shape))
                         for a, b, c in zip(low, opt, high)))


def dynamic_inputs(model: onnx.ModelProto) -> set[str]:
    """Names of the real inputs with a symbolic or unknown dimension."""
    from onnxprune.model.graph import graph_inputs

    return {vi.name for vi in graph_inputs(model)
            if any(not d.HasField("dim_value") or d.dim_value <= 0
                   for d in vi.type.tensor_type.shape.dim)}


def check_within(profile: Profile, specs: list[InputSpec], label: str) -> None:
    """The run shapes `specs` (one model at one batch) must lie inside the profile."""
    for spec in specs:
        r = profile.get(spec.name)
        if r is None:
            continue
        if len(r.min) != len(spec.shape) or not all(
                a <= s <= c for a, s, c in zip(r.min, spec.shape, r.max)):
            raise UserError(f"{label}: input {spec.name!r} at shape {_dims(spec.shape)} is "
                            f"outside the optimization profile ({_dims(r.min)} to "
                            f"{_dims(r.max)}); widen {FLAGS[0]} / {FLAGS[2]} or change --batch")


def engine_ranges(model: onnx.ModelProto, specs: list[InputSpec], profile: Profile | None
                  ) -> dict[str, Range]:
    """Per input of `model` run at `specs`: the profile's range where the input is dynamic
    and the profile names it, else the run shape (a fixed profile)."""
    dynamic = dynamic_inputs(model)
    ranges = {}
    for spec in specs:
        r = profile.get(spec.name) if profile is not None and spec.name in dynamic else None
        ranges[spec.name] = r or Range(spec.shape, spec.shape, spec.shape)
    return ranges


def is_fixed(ranges: dict[str, Range]) -> bool:
    return all(r.min == r.opt == r.max for r in ranges.values())


def tag(ranges: dict[str, Range]) -> str:
    """A short stable name of the ranges, for engine cache keys."""
    text = ";".join(f"{n}:{_dims(r.min)},{_dims(r.opt)},{_dims(r.max)}"
                    for n, r in sorted(ranges.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def provider_options(ranges: dict[str, Range]) -> dict[str, str]:
    """onnxruntime TensorRT EP options: `input:1x3x224x224,other:1x4` per kind, every input
    named (the EP wants all dynamic inputs in an explicit profile); {} when all are fixed,
    which leaves the EP to build for the shapes it is run at."""
    if is_fixed(ranges):
        return {}
    return {f"trt_profile_{kind}_shapes": ",".join(f"{n}:{_dims(getattr(r, kind))}"
                                                   for n, r in ranges.items())
            for kind in ("min", "opt", "max")}


def apply(trt_profile: Any, ranges: dict[str, Range], names: list[str]) -> None:
    """`set_shape` on a TensorRT IOptimizationProfile for every network input in `names`."""
    for name in names:
        r = ranges[name]
        trt_profile.set_shape(name, r.min, r.opt, r.max)
