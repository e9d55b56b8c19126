"""Fixtures shared by the latency and sweep tests."""
import onnx
import pytest

from tiny import small_resnet


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Latency tables (and any other cache) go to a fresh folder, never to ~/.cache."""
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def latency_net(tmp_path):
    """A small residual net whose layers outweigh per-call overheads when timed."""
    path = tmp_path / "net.onnx"
    onnx.save(small_resnet(width=64, size=32, batch=1), path)
    return path
