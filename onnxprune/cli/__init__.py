"""The `onnxprune` command: prune, analyze, sweep, bench."""
