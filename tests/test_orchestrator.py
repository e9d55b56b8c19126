"""Issue 11: `api.prune` is the one orchestrator, and the calibrate side never calls back.

Static checks on the import graph of tests/test_layout.py (lazy imports included), plus Pillow
staying unloaded unless an image folder is read."""
from __future__ import annotations

import subprocess
import sys

from test_layout import import_graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_calibrate_never_reaches_the_api():
    graph = import_graph()
    for name in graph:
        if name.startswith("calibrate."):
            assert "onnxprune.api" not in _reachable(graph, name), name


def test_data_and_images_import_one_way():
    graph = import_graph()
    assert "calibrate.images" in graph["calibrate.data"]  # lazily, for image folders
    assert "calibrate.data" not in _reachable(graph, "calibrate.images")


def test_arrays_do_not_load_pillow():
    code = ("import sys, numpy as np\n"
            "from calibrate.data import open_data\n"
            "from onnxprune.model.graph import InputSpec\n"
            "open_data(np.zeros((2, 3)), [InputSpec('x', (1, 3), np.dtype('float32'))])\n"
            "assert 'PIL' not in sys.modules and 'calibrate.images' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
