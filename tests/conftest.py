"""Fixtures shared by the tests."""
import onnx
import pytest

from tiny import small_resnet


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Latency tables, TensorRT engines (any `model.io.cache_dir` kind) go to a fresh folder,
    never to ~/.cache."""
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def latency_net(tmp_path):
    """A small residual net whose layers outweigh per-call overheads when timed."""
    path = tmp_path / "net.onnx"
    onnx.save(small_resnet(width=64, size=32, batch=1), path)
    return path


@pytest.fixture(autouse=True)
def strict_rules(monkeypatch):
    """A rule that raises is a bug: under tests it raises instead of blocking its channels
    (units._run_rule); users get a block listed as a rule error."""
    monkeypatch.setenv("ONNXPRUNE_DEBUG", "1")
