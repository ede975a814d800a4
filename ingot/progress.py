"""A one-line progress display for long offline batches (no dependency on tqdm)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Writes `label: done/total requests, N output tok/s` to stderr, at most a few times a second."""

    def __init__(self, total: int, label: str = "generate", enabled: bool = True, stream=None) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.done = self.tokens = 0
        self.started = self._last = time.perf_counter()

    def update(self, finished: int, tokens: int) -> None:
        self.done += finished
        self.tokens += tokens
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.25 or self.done == self.total):
            self._last = now
            rate = self.tokens / max(now - self.started, 1e-9)
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} requests, {rate:,.0f} output tok/s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
