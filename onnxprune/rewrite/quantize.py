"""INT8 out (`--quantize int8`): the pruned float file through onnxruntime's static quantizer.

`quantize_static` in QDQ format, int8 activations and weights, weights per channel; otherwise
onnxruntime's defaults (MinMax calibration, symmetric weights, asymmetric activations).
Calibration reads at most `calibration_samples` samples of the calibration data, drawn at random
from what `split` does not hold out: the held-out share is for the fidelity the report states
(`onnxprune.verify.fidelity`), and calibration never sees it.

Pre-processing: `quant_pre_process` with `skip_optimization=True`, i.e. symbolic and ONNX shape
inference only. The quantizer decides which tensors it can quantize, and on which axis, from
their inferred shapes; a file that keeps dynamic dimensions has few of them without it. The
optimisation pass is skipped: the graph is already normalised (constants folded, Identity
dropped) and proven by the oracle, and the optimiser would rewrite the float graph the fidelity
compares with and add onnxruntime's private opset imports to the file. (On the test CNN the INT8
outputs are bit-identical with and without pre-processing.) Where shape inference fails (an op
it does not know) the model is quantized as it is, and the record says so.

The file is written atomically (`onnxprune.model.io.write_atomic`): `quantize_static` writes a
temporary file beside the target, renamed into place only when it has finished; a failure
leaves no file. Calibration batches have the model's static batch size where it has one.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxprune.errors import UserError, first_line
from onnxprune.model.graph import graph_inputs
from onnxprune.model.io import write_atomic

CALIBRATION_SAMPLES = 256  # MinMax ranges settle after ~100 samples; more costs time only


@dataclass(frozen=True)
class QuantizeOptions:
    calibration_samples: int = CALIBRATION_SAMPLES
    holdout: int = 500        # samples kept out of calibration for fidelity (at most half)
    batch_size: int = 32      # calibration batch of a model without a static batch
    seed: int = 0             # which samples are held out and which calibrate


@dataclass(frozen=True)
class Quantized:
    path: Path
    samples: int              # calibration samples read
    data: str                 # their description
    preprocessed: str         # what pre-processing did, or why it did not
    seconds: float

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": "QDQ", "activations": "int8",
                "weights": "int8 per channel", "calibration": {
                    "method": "MinMax", "samples": self.samples, "data": self.data},
                "preprocessed": self.preprocessed, "seconds": round(self.seconds, 3)}


def int8_path(float_path: str | os.PathLike) -> Path:
    """`<stem>.int8.onnx` beside the float file."""
    p = Path(float_path)
    return p.with_name(p.stem + ".int8.onnx")


def split(data, options: QuantizeOptions):
    """(calibration share, held-out share): at most half of the samples are held out."""
    rest, held = data.split(min(options.holdout, data.num_samples // 2), seed=options.seed)
    rest.description = f"{data.description}, {held.num_samples} held out for fidelity"
    return rest, held


def _static_batch(model: onnx.ModelProto) -> int | None:
    dims = {vi.type.tensor_type.shape.dim[0].dim_value for vi in graph_inputs(model)
            if len(vi.type.tensor_type.shape.dim)}
    return dims.pop() if len(dims) == 1 and 0 not in dims else None


def _reader(model: onnx.ModelProto, data, options: QuantizeOptions):
    """A CalibrationDataReader over at most `calibration_samples` random samples of `data`."""
    from onnxruntime.quantization import CalibrationDataReader

    batch = _static_batch(model) or options.batch_size
    count = min(options.calibration_samples, data.num_samples) // batch  # whole batches only
    if count == 0:
        raise UserError(f"--quantize int8: {data.description} has fewer calibration samples "
                        f"than the model's batch size {batch}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = data.batches(batch, max_batches=count, shuffle=True,
                                        seed=options.seed)
            self.samples = 0

        def get_next(self):
            nxt = next(self.batches, None)
            if nxt is None:
                return None
            self.samples += len(next(iter(nxt.inputs.values())))
            return nxt.inputs
    return Reader()


def _preprocess(source: Path, folder: str) -> tuple[Path, str]:
    """(the model to quantize, what pre-processing did): shape inference only."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = Path(folder) / "inferred.onnx"
    try:
        quant_pre_process(str(source), str(target), skip_optimization=True)
    except Exception as exc:  # noqa: BLE001  symbolic shape inference of an unknown op
        return source, f"none: shape inference failed ({first_line(exc)})"
    return target, "shape inference (symbolic and ONNX), no graph optimisation"


def quantize_int8(float_path: str | os.PathLike, data, options: QuantizeOptions | None = None
                  ) -> Quantized:
    """Quantize the float file at `float_path` on `data` (a calibrate.data.CalibrationData: its
    calibration share, see `split`) into `int8_path(float_path)`, atomically. Any failure of
    the quantizer is a one-line UserError; nothing is written then."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    options = options or QuantizeOptions()
    start, source, target = time.perf_counter(), Path(float_path), int8_path(float_path)
    reader = _reader(onnx.load(str(source), load_external_data=False), data, options)
    with tempfile.TemporaryDirectory(prefix="onnxprune-int8-") as folder:
        model, preprocessed = _preprocess(source, folder)

        def write(tmp: str) -> None:
            quantize_static(str(model), tmp, reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8)
        try:
            write_atomic(target, write, suffix=".onnx")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  onnxruntime's quantizer: one line
            raise UserError(f"--quantize int8: onnxruntime's quantizer failed on {source} "
                            f"({first_line(exc)}); no INT8 file written") from None
    return Quantized(target, reader.samples, data.description, preprocessed,
                     time.perf_counter() - start)
