"""Large weights of a model with external data stay on disk until something needs their values.

Why: a model over 2 GB must keep its weights in external files, and pruning it must not hold
several copies of them in memory (the goal is a peak of at most 2.5x the model's size). So
`resolve` turns every large external initializer into a *lazy stub*: the in-memory TensorProto
keeps `data_location = EXTERNAL`, and its `location` becomes the absolute path of the file
(checked to exist and to be long enough). Copying such a model copies only the stubs; `view`
maps one tensor without reading it (rules only look at shapes), `value` reads one tensor into
memory, and `write_external` streams stubs and in-memory tensors into a new data file, one
tensor at a time. Small external tensors (below `weights.LARGE` elements) are read at once,
as onnx.load would, so shape constants are always in memory.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import helper, numpy_helper

LAZY_MIN_ELEMENTS = 1 << 18  # equal to weights.LARGE: every lazy tensor is a detached one
_ALIGN = 4096  # data offsets: page-aligned, so onnxruntime can map large tensors
_CHUNK = 64 << 20


def is_lazy(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location == onnx.TensorProto.EXTERNAL
            and not tensor.HasField("raw_data"))


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in model.graph.initializer)


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _dtype(tensor: onnx.TensorProto) -> np.dtype | None:
    """The on-disk numpy dtype, or None where the layout is not one element per item."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    packed = {getattr(onnx.TensorProto, n, -1) for n in
              ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")}
    if tensor.data_type in packed:
        return None
    return dtype.newbyteorder("<") if dtype.kind in "biufc" else dtype


def _location(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    entries = _entries(tensor)
    return (Path(entries["location"]), int(entries.get("offset", 0) or 0),
            int(entries.get("length", -1) or -1))


def resolve(model: onnx.ModelProto, base_dir: str | os.PathLike) -> None:
    """Make `model` (loaded with load_external_data=False) self-contained: small external
    tensors read, large ones lazy stubs with absolute locations. ValueError says what is wrong.
    Tensors inside nodes (Constant values, subgraphs) are always read."""
    base = Path(base_dir).resolve()
    for tensor in model.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            _resolve(tensor, base, lazy_ok=True)
    for tensor in _nested_tensors(model.graph):
        if onnx.external_data_helper.uses_external_data(tensor):
            _resolve(tensor, base, lazy_ok=False)


def _resolve(tensor: onnx.TensorProto, base: Path, lazy_ok: bool) -> None:
    entries = _entries(tensor)
    where = entries.get("location", "")
    if not where or Path(where).is_absolute() or ".." in Path(where).parts:
        raise ValueError(f"initializer {tensor.name!r}: external data location {where!r} "
                         f"is not a path inside the model's folder")
    path = (base / where).resolve()
    if not path.is_file():
        raise ValueError(f"initializer {tensor.name!r}: external data file {where!r} is missing")
    size = path.stat().st_size
    offset = int(entries.get("offset", 0) or 0)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    dtype = _dtype(tensor)
    length = int(entries.get("length", 0) or 0) or (
        count * dtype.itemsize if dtype is not None else size - offset)
    if offset + length > size or (dtype is not None and length < count * dtype.itemsize):
        raise ValueError(f"initializer {tensor.name!r}: external data file {where!r} is "
                         f"shorter than the tensor")
    _set_location(tensor, str(path), offset, length)
    if not lazy_ok or dtype is None or count < LAZY_MIN_ELEMENTS:
        _load_into(tensor)


def _nested_tensors(graph: onnx.GraphProto):
    """Tensors held by node attributes, and the initializers of subgraphs, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from sub.initializer
                yield from _nested_tensors(sub)


def _set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=val)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _read_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _load_into(tensor: onnx.TensorProto) -> None:
    path, offset, length = _location(tensor)
    if length < 0:
        length = path.stat().st_size - offset
    tensor.raw_data = _read_bytes(path, offset, length)
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]


def view(tensor: onnx.TensorProto) -> np.ndarray:
    """Read-only values; a lazy tensor is memory-mapped, not read (its shape costs nothing)."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    path, offset, _ = _location(tensor)
    shape = tuple(tensor.dims)
    if not int(np.prod(shape, dtype=np.int64)):
        return np.zeros(shape, _dtype(tensor))
    return np.memmap(path, dtype=_dtype(tensor), mode="r", offset=offset, shape=shape)


def value(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values in memory (a lazy tensor is read from its file)."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    path, offset, _ = _location(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    dtype = _dtype(tensor)
    data = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    if dtype.kind in "biufc":
        data = data.astype(dtype.newbyteorder("="), copy=False)
    return data.reshape(tuple(tensor.dims))


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself if nothing is lazy, else a copy with every lazy tensor read in."""
    if not has_lazy(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if is_lazy(tensor):
            _load_into(tensor)
    return out


def sources(model: onnx.ModelProto) -> set[Path]:
    """The files lazy tensors read from (absolute once `resolve` has run)."""
    return {_location(t)[0] for t in model.graph.initializer if is_lazy(t)}


def write_external(model: onnx.ModelProto, model_path: str | os.PathLike,
                   data_path: str | os.PathLike, location: str, threshold: int = 1024) -> None:
    """Write `model` with every initializer of >= `threshold` bytes in `data_path` (named
    `location` in the model), one tensor at a time; `model` is not modified."""
    out = _copy_without_initializers(model)
    with open(data_path, "wb") as data:
        for tensor in model.graph.initializer:
            if not is_lazy(tensor) and _nbytes(tensor) < threshold:
                out.graph.initializer.append(tensor)
                continue
            offset = -data.tell() % _ALIGN + data.tell()
            data.seek(offset)
            length = _write_tensor(tensor, data)
            stub = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type,
                                             dims=tensor.dims)
            _set_location(stub, location, offset, length)
        data.truncate()
    with open(model_path, "wb") as f:
        f.write(out.SerializeToString())


def _nbytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return tensor.ByteSize()


def _write_tensor(tensor: onnx.TensorProto, data) -> int:
    if is_lazy(tensor):
        path, offset, length = _location(tensor)
        length = _nbytes_on_disk(tensor, length)
        with open(path, "rb") as src:
            src.seek(offset)
            left = length
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path}: ends inside initializer {tensor.name!r}")
                data.write(chunk)
                left -= len(chunk)
        return length
    payload = (tensor.raw_data if tensor.HasField("raw_data")
               else numpy_helper.to_array(tensor).astype(_dtype(tensor)).tobytes())
    data.write(payload)
    return len(payload)


def _nbytes_on_disk(tensor: onnx.TensorProto, length: int) -> int:
    dtype = _dtype(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    return count * dtype.itemsize if dtype is not None else length


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _copy_fields(src, dst, skip: str) -> None:
    for field, val in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(val)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(val)
        else:
            setattr(dst, field.name, val)
