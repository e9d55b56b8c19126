"""README's two set-up commands stay true: the demo runs, and the test command is what CI runs."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert all("pip install -e " in c and " && " in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, "CI must run README's test command"


def test_readme_demo_runs(tmp_path):
    """README's demo command, end to end, with `--quick` (every step on a budget of seconds;
    the full demo trains for minutes). No wall-clock limit: a slow machine is not a failure."""
    pytest.importorskip("torch")
    from onnxprune.models.fashion_data import available

    if not available():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    demo = _setup_commands()[0].split(" && ")[-1]
    argv = shlex.split(demo)
    assert argv[:2] == ["python", "tools/demo.py"], demo
    argv = [sys.executable, *argv[1:], "--quick", "--out", str(tmp_path / "demo")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for shown in ("max relative error", "fine-tuned (oneshot)", "top-1", "speed-up"):
        assert shown in proc.stdout, shown


def test_readme_python_section_runs(tmp_path, monkeypatch):
    """README's Python example, run as written on a small residual CNN saved as model.onnx
    with a node named head.conv."""
    import onnx

    from tiny import small_resnet

    model = small_resnet(width=32)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    model.graph.node[8].name = "head.conv"  # the last block's first conv
    onnx.save(model, tmp_path / "model.onnx")
    code = re.search(r"## Python\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(),
                     re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert onnx.load(tmp_path / "model.pruned.onnx").graph.node
