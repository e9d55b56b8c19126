"""Plumbing shared by every stage: model I/O, external data, weights, onnxruntime sessions,
batch-free copies."""
