"""Timing one iteration stage by stage, and summarizing latency samples.

Clocks: on CPU a monotonic clock (``time.perf_counter_ns``); on a CUDA device, CUDA events recorded at each
stage boundary and one synchronization at the end of the iteration, so that asynchronous kernel launches are
charged to the stage that launched them rather than to whichever call happens to block.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Protocol, Sequence

import numpy as np

__all__ = ["LatencyStats", "StageClock", "CpuClock", "CudaClock", "make_clock"]


@dataclass
class LatencyStats:
    """Summary of latency samples in milliseconds (linear-interpolated percentiles, population std)."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0:
            raise ValueError("no latency samples to summarize")
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return cls(
            count=int(x.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(x.mean()),
            std_ms=float(x.std()),
            min_ms=float(x.min()),
            max_ms=float(x.max()),
        )

    def throughput_ips(self, batch_size: int) -> float:
        """Images per second: ``batch_size`` images per batch at the mean batch latency."""
        return 1000.0 * batch_size / self.mean_ms if self.mean_ms > 0 else math.inf


class StageClock(Protocol):
    """Times one iteration: ``start()``, then ``lap(stage)`` at the end of each stage, then ``stop()``."""

    def start(self) -> None: ...

    def lap(self, stage: str) -> None: ...

    def record(self, stage: str, ms: float) -> None:
        """Add a stage time measured by the system itself (e.g. reported by a ``Predictor``)."""
        ...

    def stop(self) -> Dict[str, float]:
        """Milliseconds per stage (a stage lapped twice accumulates) plus ``"total"``."""
        ...


class CpuClock:
    """Monotonic wall clock for CPU systems."""

    def __init__(self) -> None:
        self._t0 = 0
        self._last = 0
        self._stages: Dict[str, float] = {}

    def start(self) -> None:
        self._stages = {}
        self._t0 = self._last = time.perf_counter_ns()

    def lap(self, stage: str) -> None:
        now = time.perf_counter_ns()
        self._stages[stage] = self._stages.get(stage, 0.0) + (now - self._last) / 1e6
        self._last = now

    def record(self, stage: str, ms: float) -> None:
        self._stages[stage] = self._stages.get(stage, 0.0) + float(ms)

    def stop(self) -> Dict[str, float]:
        end = time.perf_counter_ns()
        out = dict(self._stages)
        out["total"] = (end - self._t0) / 1e6
        return out


class CudaClock:
    """CUDA events on the current stream at every stage boundary; synchronizes once, in :meth:`stop`.

    Event-to-event time includes host work done between the records (the stream sits idle meanwhile), so a
    CPU pre-processing stage is still charged correctly.
    """

    def __init__(self, device: str = "cuda") -> None:
        from deploy_sdk.errors import require

        self._torch = require("torch", "convert", "timing on a CUDA device")
        self._device = device
        self._events: List[Any] = []
        self._names: List[str] = []
        self._recorded: Dict[str, float] = {}

    def _record(self):
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record(self._torch.cuda.current_stream(self._device))
        return ev

    def start(self) -> None:
        self._torch.cuda.synchronize(self._device)
        self._events = [self._record()]
        self._names = []
        self._recorded = {}

    def lap(self, stage: str) -> None:
        self._events.append(self._record())
        self._names.append(stage)

    def record(self, stage: str, ms: float) -> None:
        self._recorded[stage] = self._recorded.get(stage, 0.0) + float(ms)

    def stop(self) -> Dict[str, float]:
        end = self._record()
        self._torch.cuda.synchronize(self._device)
        out: Dict[str, float] = dict(self._recorded)
        for name, a, b in zip(self._names, self._events, self._events[1:]):
            out[name] = out.get(name, 0.0) + float(a.elapsed_time(b))
        out["total"] = float(self._events[0].elapsed_time(end))
        return out


def make_clock(device: str) -> StageClock:
    """The clock for a system on ``device``: CUDA events on a CUDA device, else the CPU clock."""
    return CudaClock(device) if device.startswith("cuda") else CpuClock()
