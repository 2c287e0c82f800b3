"""Compatibility module: the benchmark harness, split by job, re-exported under its former name.

- ``timing``: :class:`LatencyStats` and the stage clocks (:class:`CpuClock`, :class:`CudaClock`);
- ``side_by_side``: :func:`run_side_by_side`, the systems' protocol and :class:`SystemResult`;
- ``memory``: peak RSS of the process and peak GPU memory allocated through torch;
- ``machine``: :func:`machine_info` and :func:`load_average`.
"""

from __future__ import annotations

from deploy_sdk.benchmarks.machine import load_average, machine_info
from deploy_sdk.benchmarks.memory import peak_rss_mb, reset_peak_rss
from deploy_sdk.benchmarks.side_by_side import STAGES, BenchSystem, SystemResult, run_side_by_side
from deploy_sdk.benchmarks.timing import CpuClock, CudaClock, LatencyStats, StageClock

__all__ = [
    "STAGES",
    "LatencyStats",
    "StageClock",
    "CpuClock",
    "CudaClock",
    "BenchSystem",
    "SystemResult",
    "run_side_by_side",
    "machine_info",
    "load_average",
    "peak_rss_mb",
    "reset_peak_rss",
]
