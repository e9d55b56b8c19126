"""The PyTorch side of onnxprune: the ONNX graph executed as a torch module (executor.py),
channel masks and activation recorders, Group Fisher / HRank / Taylor statistics, fine-tuning
and distillation. Imported lazily: `onnxprune` itself never needs torch."""
