"""How latency is measured: backend, runs, cache (one frozen dataclass)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from onnxprune.bench.backends import BackendKind, BackendOptions, get_backend
from onnxprune.errors import UserError


def default_cache_dir() -> Path:
    """$ONNXPRUNE_CACHE/latency, else ~/.cache/onnxprune/latency."""
    root = os.environ.get("ONNXPRUNE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "onnxprune"
    return base / "latency"


@dataclass(frozen=True)
class LatencyConfig:
    backend: BackendKind = BackendKind.ORT_CPU
    runs: int = 20                  # end-to-end: interleaved rounds of original and pruned
    warmup: int = 3
    table_runs: int = 10            # per-layer table: interleaved rounds of a layer's widths
    threads: int | None = None      # onnxruntime intra-op threads (None: its default)
    cache_dir: Path | None = None   # None: default_cache_dir()
    retries: int = 2                # --target-latency: re-plans when the measured ratio misses
    spinning: bool = False          # onnxruntime idle-worker spinning (make_session: off, so
                                    # interleaved sessions do not steal each other's cores)

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def backend_runner(self):
        """The bench backend (onnxprune.bench.backends) this config measures on."""
        return get_backend(self.backend, BackendOptions(threads=self.threads,
                                                        spinning=self.spinning))

    def check(self) -> None:
        """One-line BackendUnavailable (a UserError) if the backend cannot run here."""
        self.backend_runner().check()
        for name, value, low in (("runs", self.runs, 1), ("table_runs", self.table_runs, 1),
                                 ("warmup", self.warmup, 0), ("retries", self.retries, 0)):
            if value < low:
                raise UserError(f"latency {name} {value}: must be >= {low}")
