"""onnxprune: structured channel pruning of ONNX CNNs with an exactness proof.

`onnxprune.api` has the Python API (analyze, prune); `onnxprune.cli.main` the command line.
Only onnx, onnx-graphsurgeon, onnxruntime and numpy are needed here; data-driven criteria
import the `calibrate` package (PyTorch) lazily.
"""
__version__ = "0.1.0"
