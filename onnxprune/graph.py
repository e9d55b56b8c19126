"""Load, validate and normalise an ONNX model before analysis.

Normalisation makes every exporter's output look alike: the input shape is fixed (a dynamic
batch becomes 1; other dynamic dims need `--input-shape`), `Constant` nodes become
initializers, constant sub-graphs (shape arithmetic) are folded, `Identity` nodes are dropped,
nodes are sorted topologically and every tensor gets a static shape.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .errors import UserError
from .external import has_lazy, resolve, sources, write_external

MIN_OPSET = 11
_TWO_GB = 2**31 - 1


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read a model (with its external data); every failure is a one-line UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not an ONNX model")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise UserError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise UserError(f"{p}: not an ONNX model (no graph nodes or no opset)")
    try:
        resolve(model, p.parent)  # large weights stay on disk until needed (external.py)
    except Exception as exc:
        raise UserError(f"{p}: cannot read its external data ({_first_line(exc)})") from None
    return model


def save_atomic(model: onnx.ModelProto, path: str | os.PathLike,
                external: bool = False) -> None:
    """Write to a temporary file in the target folder, then rename: never a partial file.

    With `external`, or when the model has lazy weights (external.py) or is over 2 GB, the
    initializers go to one external-data file beside it, streamed tensor by tensor. That file
    is renamed into place before the model; when overwriting an earlier output, it takes a name
    the earlier model does not use, so a kill at any point leaves the earlier model whole.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise UserError(f"{p.parent}: output folder does not exist")
    earlier = _data_names(p) & set(_data_candidates(p))
    if external or has_lazy(model) or model.ByteSize() > _TWO_GB:
        name = _save_external(model, p, earlier)
    else:
        name = None
        _replace_with(p, lambda tmp: onnx.save(model, tmp))
    for stale in earlier - {name}:  # data files of the model this one replaced
        if (p.parent / stale).resolve() not in sources(model):
            (p.parent / stale).unlink(missing_ok=True)


def _replace_with(p: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _data_candidates(p: Path) -> list[str]:
    return [f"{p.name}.data", f"{p.name}.2.data", f"{p.name}.3.data"]


def _save_external(model: onnx.ModelProto, p: Path, earlier: set[str]) -> str:
    """Write with a data file the earlier model at `p` and the input do not use; its name."""
    candidates = _data_candidates(p)
    busy = earlier | {c for c in candidates if (p.parent / c).resolve() in sources(model)}
    name = next((c for c in candidates if c not in busy), None)
    if name is None:
        raise UserError(f"{p}: its external-data names are all in use by the input")
    tmp_data = p.parent / f".{name}.tmp"

    def write(tmp: str) -> None:
        try:
            write_external(model, tmp, tmp_data, name)
            os.chmod(tmp_data, default_file_mode())
            os.replace(tmp_data, p.parent / name)
        finally:
            tmp_data.unlink(missing_ok=True)

    _replace_with(p, write)
    return name


def _data_names(p: Path) -> set[str]:
    """External-data file names the model now at `p` (if any) refers to."""
    try:
        old = onnx.load(str(p), load_external_data=False)
    except Exception:  # no earlier model, or not one we can read: nothing to protect
        return set()
    return {e.value for t in old.graph.initializer for e in t.external_data
            if e.key == "location"}


def default_file_mode() -> int:
    """What open() would give a new file (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UserError("model imports no default-domain opset")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (old exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def parse_input_shapes(text: str | None, input_names: list[str]) -> dict[str, tuple[int, ...]]:
    """`1x3x224x224` for a single input, `a:1x3x64x64,b:1x4` for several (trtexec style)."""
    if not text:
        return {}
    shapes = {}
    for part in text.split(","):
        name, _, dims = part.rpartition(":")
        if not name:
            if len(input_names) != 1:
                raise UserError(f"--input-shape {text!r}: name each input (name:1x3x224x224)")
            name = input_names[0]
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UserError(f"--input-shape {text!r}: dims must be integers like 1x3x224x224") from None
        if not shape or min(shape) <= 0:
            raise UserError(f"--input-shape {text!r}: dims must be positive")
        if name not in input_names:
            raise UserError(f"--input-shape names {name!r}, but the inputs are {input_names}")
        shapes[name] = shape
    return shapes


def static_shape(inp: onnx.ValueInfoProto) -> list[int]:
    """The input's dims with a dynamic batch (axis 0) as 1; any other dynamic dim is an error."""
    shape = []
    for axis, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        elif axis == 0:
            shape.append(1)
        else:
            raise UserError(f"input {inp.name!r} has a dynamic dimension {d.dim_param or '?'!r} "
                            f"at axis {axis}: pass --input-shape (e.g. 1x3x640x640)")
    return shape


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every graph input a static shape, in place."""
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if inp.name in shapes:
            new = shapes[inp.name]
            if len(new) != len(dims):
                raise UserError(f"--input-shape for {inp.name!r} has rank {len(new)}, "
                                f"the model's input has rank {len(dims)}")
        else:
            new = static_shape(inp)
        for d, v in zip(dims, new):
            d.Clear()
            d.dim_value = int(v)
    for out in model.graph.output:  # e.g. Paddle2ONNX stores -1: let inference decide
        tt = out.type.tensor_type
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in tt.shape.dim):
            tt.ClearField("shape")
