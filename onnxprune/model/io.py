"""Files in and out: model load / save, the one atomic writer, the cache folders.

Every file the project writes goes through `write_atomic`: a temporary file in the target
folder, renamed into place, so a kill leaves either the earlier file or the new one, never a
partial one. Models over 2 GB or with lazy weights are streamed to external data.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from onnxprune.errors import UserError, first_line
from onnxprune.model.external import has_lazy, resolve, sources, write_external

_TWO_GB = 2**31 - 1


def write_atomic(path: str | os.PathLike, write: Callable[[str], None],
                 suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    The file gets the mode open() would give it (mkstemp makes 0600). A missing folder is a
    UserError; on any failure the temporary file is removed and nothing at `path` changes."""
    p = Path(path)
    if not p.parent.resolve().is_dir():
        raise UserError(f"{p.parent}: output folder does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json_atomic(record: dict, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, json.dumps(record, indent=1))


def cache_dir(kind: str) -> Path:
    """Where cached artefacts of one kind live: $ONNXPRUNE_CACHE/<kind>, else
    ~/.cache/onnxprune/<kind> (kinds: latency tables, TensorRT engines, zoo and Fashion-MNIST
    models)."""
    root = os.environ.get("ONNXPRUNE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "onnxprune"
    return base / kind


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
        raise UserError(f"{p}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise UserError(f"{p}: not an ONNX model (no graph nodes or no opset)")
    try:
        resolve(model, p.parent)  # large weights stay on disk until needed (external.py)
    except Exception as exc:
        raise UserError(f"{p}: cannot read its external data ({first_line(exc)})") from None
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
        write_atomic(p, lambda tmp: onnx.save(model, tmp))
    for stale in earlier - {name}:  # data files of the model this one replaced
        if (p.parent / stale).resolve() not in sources(model):
            (p.parent / stale).unlink(missing_ok=True)


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

    write_atomic(p, write)
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
