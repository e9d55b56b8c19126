"""Build or load the per-layer latency table of a normalised model (see layers.py), cached as
JSON per (model hash, backend, threads). Layers with the same op, attributes and shapes (the
repeated blocks of a ResNet) are timed once.

Each layer's grid is timed at its own moment, and a loaded machine drifts between moments; a
final anchor pass times the whole model and every layer at full width interleaved, and every
grid is scaled to its anchor, so the layers and the whole model (`model_ms`, which sets the
share of the time spent outside the tabled layers) are measured under the same conditions."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis.context import static_shapes
from onnxprune.config import LatencyConfig
from onnxprune.latency.layers import (
    GRID,
    Layer,
    LayerSpec,
    LayerTable,
    layer_model,
    layer_spec,
    time_layer,
    time_models,
)
from onnxprune.latency.options import backend_runner
from onnxprune.model.graph import opset

CACHE_VERSION = 2
Prunable = Callable[[str, int], bool]
_LOG = logging.getLogger(__name__)


def model_hash(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def cache_path(model: onnx.ModelProto, config: LatencyConfig) -> Path:
    threads = f"t{config.threads or 'auto'}" + ("-spin" if config.spinning else "")
    return config.cache / f"{model_hash(model)[:32]}-{config.backend.value}-{threads}.json"


def layer_specs(model: onnx.ModelProto, prunable: Prunable | None = None) -> list[LayerSpec]:
    """Every tabled layer; `prunable(weight, axis)` says which weight axes can lose channels
    (default: all), the others are not varied."""
    shapes = static_shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    specs = (layer_spec(node, shapes, inits, opset(model), prunable or (lambda w, a: True))
             for node in model.graph.node)
    return [s for s in specs if s is not None]


def _signature(spec: LayerSpec) -> tuple:
    attrs = tuple(sorted((a.name, a.SerializeToString()) for a in spec.node.attribute))
    return (spec.layer.op, attrs, spec.x_shape, spec.w_shape, spec.bias_shape, spec.dtype,
            spec.layer.in_axis, spec.layer.out_axis)


def latency_table(model: onnx.ModelProto, config: LatencyConfig, seed: int = 0,
                  prunable: Prunable | None = None) -> LayerTable:
    """The cached table if it matches the model's layers, else time every layer (slow: seconds
    to a minute) and cache the result."""
    specs = layer_specs(model, prunable)
    path = cache_path(model, config)
    table = _load(path, [s.layer for s in specs])
    if table is not None:
        return table
    tick = time.perf_counter()
    backend = backend_runner(config)
    unique: dict[tuple, LayerSpec] = {}
    for spec in specs:
        unique.setdefault(_signature(spec), spec)
    grids = {key: time_layer(backend, spec, config, seed) for key, spec in unique.items()}
    anchor = time_models(backend, [model, *(layer_model(s, 1.0, 1.0) for s in unique.values())],
                         config, seed)
    for key, full in zip(unique, anchor[1:-1]):
        if grids[key][-1, -1] > 0:
            grids[key] *= full / grids[key][-1, -1]
    values = np.array([grids[_signature(s)] for s in specs]).reshape(-1, len(GRID), len(GRID))
    table = LayerTable([s.layer for s in specs], values, float(anchor[0]), float(anchor[-1]),
                       False, path, time.perf_counter() - tick)
    _store(path, table, config)
    return table


def _store(path: Path, table: LayerTable, config: LatencyConfig) -> None:
    from onnxprune.model.io import write_json_atomic

    record = {"version": CACHE_VERSION, "grid": list(GRID), "backend": config.backend.value,
              "threads": config.threads, "model_ms": table.model_ms,
              "overhead_ms": table.overhead_ms,
              "layers": [{**asdict(layer), "values": v.tolist()}
                         for layer, v in zip(table.layers, table.values)]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, path)
    except OSError as exc:  # an unwritable cache costs time, never the prune
        _LOG.warning("latency table not cached at %s: %s", path, exc)


def _load(path: Path, layers: list[Layer]) -> LayerTable | None:
    try:
        record = json.loads(path.read_text())
        if record["version"] != CACHE_VERSION or tuple(record["grid"]) != GRID:
            return None
        cached = [Layer(**{k: v for k, v in r.items() if k != "values"})
                  for r in record["layers"]]
        if cached != layers:
            return None
        values = np.array([r["values"] for r in record["layers"]], dtype=np.float64)
        return LayerTable(cached, values.reshape(-1, len(GRID), len(GRID)),
                          float(record["model_ms"]), float(record["overhead_ms"]), True, path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
