"""A one-line progress display on stderr: batches done, images/s, and an optional loss."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None, enabled: bool = True, stream=None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.done = self.images = 0
        self.shown = False

    def update(self, images: int, loss: float | None = None) -> None:
        self.done += 1
        self.images += images
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            self._show(now, loss)

    def _show(self, now: float, loss: float | None) -> None:
        of = f"/{self.total}" if self.total else ""
        rate = self.images / max(now - self.start, 1e-9)
        tail = f"  loss {loss:.4f}" if loss is not None else ""
        self.stream.write(f"\r{self.label}: batch {self.done}{of}  {rate:.1f} img/s{tail}   ")
        self.stream.flush()
        self.shown = True

    def close(self) -> float:
        """End the line; returns the elapsed seconds."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
        return time.perf_counter() - self.start
