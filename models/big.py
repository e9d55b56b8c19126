"""A widened VGG of any size, written straight to ONNX with external data (for big-model tests).

    python -m models.big OUT.onnx [--gigabytes 2.2]

The network is VGG-like at a tiny spatial size, so that it is huge in weights but cheap to run:
Conv 3x3 (stem, 3 -> C) -> BN -> ReLU, then `depth` blocks Conv 3x3 (C -> C) -> BN -> ReLU, with
a residual Add every second block, then GlobalAveragePool -> Flatten -> Gemm (C -> 10). The
width C is chosen so that the weights come to `gigabytes`. The weights are drawn and written
one tensor at a time into `OUT.onnx.data`, so building a 2.2 GB model needs only one layer's
weights in memory.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _stub(name: str, shape: tuple[int, ...], location: str, offset: int, length: int):
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=val)
    return tensor


class _Writer:
    """Initializers of >= 1 MB go to the data file as they are drawn; small ones stay inline."""

    def __init__(self, data_path: Path, seed: int):
        self.file = open(data_path, "wb")  # noqa: SIM115 (closed by close())
        self.location = data_path.name
        self.rng = np.random.default_rng(seed)
        self.initializers: list[TensorProto] = []

    def add(self, name: str, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if value.nbytes < 1 << 20:
            self.initializers.append(numpy_helper.from_array(value, name))
            return name
        offset = self.file.tell()
        self.file.write(value.tobytes())
        self.initializers.append(_stub(name, value.shape, self.location, offset, value.nbytes))
        return name

    def conv_weight(self, name: str, c_out: int, c_in: int) -> str:
        scale = math.sqrt(2.0 / (c_in * 9))
        return self.add(name, self.rng.standard_normal((c_out, c_in, 3, 3),
                                                       dtype=np.float32) * scale)

    def close(self) -> None:
        self.file.close()


def width_for(gigabytes: float, depth: int) -> int:
    """The width C (a multiple of 64) whose depth C x C x 3 x 3 convolutions hold `gigabytes`."""
    per_layer = gigabytes * 1e9 / (depth - 1) / (9 * 4)
    return max(64, int(math.sqrt(per_layer)) // 64 * 64 + 64)


def build(path: str | os.PathLike, gigabytes: float = 2.2, depth: int = 16,
          spatial: int = 4, seed: int = 0) -> Path:
    """Write the model to `path` (weights in `path`.data); returns the path."""
    path = Path(path)
    width = width_for(gigabytes, depth)
    w = _Writer(path.parent / (path.name + ".data"), seed)
    nodes, x = [], "input"

    def conv_bn_relu(i: int, src: str, c_in: int) -> str:
        weight = w.conv_weight(f"conv{i}.weight", width, c_in)
        bias = w.add(f"conv{i}.bias", np.zeros(width))
        bn = [w.add(f"bn{i}.{k}", v) for k, v in (
            ("scale", 1 + 0.1 * w.rng.standard_normal(width)),
            ("bias", 0.1 * w.rng.standard_normal(width)),
            ("mean", 0.1 * w.rng.standard_normal(width)), ("var", 1 + w.rng.random(width)))]
        nodes.append(helper.make_node("Conv", [src, weight, bias], [f"c{i}"], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"b{i}"],
                                      name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    try:
        x = conv_bn_relu(0, x, 3)
        for i in range(1, depth):
            y = conv_bn_relu(i, x, width)
            if i % 2 == 0:
                nodes.append(helper.make_node("Add", [x, y], [f"sum{i}"], name=f"add{i}"))
                y = f"sum{i}"
            x = y
        fc = w.add("fc.weight", w.rng.standard_normal((10, width)) / math.sqrt(width))
        fc_bias = w.add("fc.bias", np.zeros(10))
        nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
                  helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", fc, fc_bias], ["logits"], name="fc",
                                   transB=1)]
    finally:
        w.close()
    graph = helper.make_graph(
        nodes, "wide_vgg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, spatial, spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=w.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of all initializers: the external data plus the inline ones."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        lengths = [int(e.value) for e in t.external_data if e.key == "length"]
        total += lengths[0] if lengths else len(t.raw_data) or t.ByteSize()
    return total


_PEAK = ("import resource, subprocess, sys\n"
         "code = subprocess.run(sys.argv[1:]).returncode\n"
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
         "raise SystemExit(code)")


def peak_rss(command: list[str]) -> tuple[int, int]:
    """(exit status, peak resident bytes) of `command`, run as the only child of a fresh
    Python so that no earlier child's peak is counted. Its own output passes through."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *command], stderr=subprocess.PIPE,
                          text=True, check=False)
    lines = proc.stderr.strip().splitlines()
    sys.stderr.write("\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""))
    return proc.returncode, int(lines[-1]) * 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output")
    p.add_argument("--gigabytes", type=float, default=2.2)
    p.add_argument("--depth", type=int, default=16)
    args = p.parse_args()
    path = build(args.output, args.gigabytes, args.depth)
    print(f"{path}: {weight_bytes(path) / 1e9:.2f} GB of weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
