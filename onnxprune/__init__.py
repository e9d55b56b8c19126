"""onnxprune: structured channel pruning of ONNX CNNs with an exactness proof.

The public API (README, "Python"):

    import onnxprune as op
    result = op.prune("model.onnx", op.PruneConfig(op.Target(op.TargetKind.MEM, 0.5)))
    op.save(result.model, "model.pruned.onnx")

`analyze` shows channel units and layer groups, `prune` runs the whole pipeline (analysis,
scores, plan, surgery, the exactness oracle; optionally calibration and fine-tuning) and
returns a `PruneResult`. Only onnx, onnx-graphsurgeon, onnxruntime and numpy are needed here;
data-driven criteria import the `calibrate` package (PyTorch) lazily.
"""
__version__ = "0.1.0"

# name -> module; imported on first use (PEP 562), so that `import onnxprune.config` or the
# bench front-end stay light and the CLI starts fast
_PUBLIC = {
    **dict.fromkeys(["Analysis", "PruneResult", "analyze", "prune"], "onnxprune.api"),
    **dict.fromkeys(["CalibrationConfig", "Criterion", "FinetuneConfig", "LatencyConfig",
                     "Normalize", "Optimizer", "PruneConfig", "Schedule", "Target",
                     "TargetKind"], "onnxprune.config"),
    **dict.fromkeys(["UserError", "VerificationError"], "onnxprune.errors"),
    "load": "onnxprune.model.io",
    "save": "onnxprune.model.io",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_PUBLIC[name])
    value = getattr(module, "save_atomic" if name == "save" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
