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


def test_readme_demo_runs():
    pytest.importorskip("torch")
    from onnxprune.models.fashion_data import available

    if not available():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    demo = _setup_commands()[0].split(" && ")[-1]
    argv = shlex.split(demo)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for shown in ("max relative error", "fine-tuned (oneshot)", "top-1", "speed-up"):
        assert shown in proc.stdout, shown
