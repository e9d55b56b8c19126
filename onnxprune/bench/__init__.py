"""Latency benchmarking helpers (onnxruntime; TensorRT may follow)."""
