"""A dependency-free progress bar on stderr for long commands (data generation, evaluation, calibration).

On a terminal it redraws one line; in a log (CI, redirected output) it prints a line at most every few seconds
so logs stay short but still show that work is moving.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``with ProgressBar(total, "eval") as bar: ... bar.update()``; prints count, rate and time left."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "img",
        stream: Optional[TextIO] = None,
        enabled: bool = True,
        log_interval_s: float = 5.0,
    ):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self._start = time.monotonic()
        self._last_print = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._log_interval = log_interval_s

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        # Redraw a terminal at most 10 times a second; a log only every few seconds (and at the end).
        interval = 0.1 if self._tty else self._log_interval
        if self.enabled and (now - self._last_print >= interval or self.done >= self.total):
            self._last_print = now
            self._print()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def _print(self) -> None:
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        text = (
            f"{self.label} [{bar}] {self.done}/{self.total} {self.unit}  {rate:.2f} {self.unit}/s  "
            f"elapsed {_fmt(elapsed)}  left {_fmt(left)}"
        )
        if self._tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
