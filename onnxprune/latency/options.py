"""Running a LatencyConfig (the dataclass lives in onnxprune.config): its bench backend and
the checks made before any work."""
from __future__ import annotations

from onnxprune.bench.backends import get_backend
from onnxprune.bench.base import Backend, BackendOptions
from onnxprune.config import LatencyConfig
from onnxprune.errors import UserError

__all__ = ["LatencyConfig", "backend_runner", "check"]


def backend_runner(config: LatencyConfig) -> Backend:
    """The bench backend (onnxprune.bench.backends) `config` measures on."""
    return get_backend(config.backend, BackendOptions(threads=config.threads,
                                                      spinning=config.spinning))


def check(config: LatencyConfig) -> None:
    """One-line BackendUnavailable (a UserError) if the backend cannot run here, or a
    UserError for a count out of range."""
    backend_runner(config).check()
    for name, value, low in (("runs", config.runs, 1), ("table_runs", config.table_runs, 1),
                             ("warmup", config.warmup, 0), ("retries", config.retries, 0)):
        if value < low:
            raise UserError(f"latency {name} {value}: must be >= {low}")
