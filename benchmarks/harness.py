"""Benchmark harness: clocks, latency statistics, memory probes, machine description, side-by-side runs.

A *system* is anything that turns a batch of decoded images into one ``Detections`` per image (this SDK's
``Predictor`` on some backend, or a baseline such as PyTorch eager). :func:`run_side_by_side` runs several
systems on the same images, alternating them iteration by iteration and rotating which goes first, so that a
noisy, shared machine slows every system alike and their ratios stay meaningful.

Clocks: on CPU a monotonic clock (``time.perf_counter_ns``); on a CUDA device, CUDA events recorded at each
stage boundary and one synchronization at the end of the iteration, so that asynchronous kernel launches are
charged to the stage that launched them rather than to whichever call happens to block.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence

import numpy as np

from deploy_sdk.progress import ProgressBar

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

# The stages every system reports; a system whose pieces cannot be separated charges the inseparable work to
# the stage where most of it happens and says so in its ``notes``.
STAGES = ("preprocess", "inference", "postprocess")


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
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
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


class BenchSystem(Protocol):
    """One benchmarked system. ``run`` must call ``clock.lap(stage)`` for the stages in :data:`STAGES`."""

    name: str
    device: str
    notes: str

    def run(self, images: Sequence[np.ndarray], clock: StageClock) -> list:
        """images: HxWx3 uint8 RGB arrays; returns one ``Detections`` per image, in order."""
        ...


@dataclass
class SystemResult:
    """Everything measured for one system at one batch size (see :meth:`to_json` for the recorded form)."""

    system: str
    device: str
    batch_size: int
    warmup: int
    latency: LatencyStats
    stages: Dict[str, LatencyStats]
    samples_ms: List[float]
    peak_rss_mb: Optional[float]
    peak_gpu_mem_mb: Optional[float]
    detections_per_image: float
    image_sizes: List[List[int]]
    notes: str = ""

    def to_json(self) -> Dict[str, Any]:
        lat = self.latency
        return {
            "system": self.system,
            "device": self.device,
            "batch_size": self.batch_size,
            "iterations": lat.count,
            "warmup": self.warmup,
            "p50_ms": lat.p50_ms,
            "p90_ms": lat.p90_ms,
            "p99_ms": lat.p99_ms,
            "mean_ms": lat.mean_ms,
            "std_ms": lat.std_ms,
            "min_ms": lat.min_ms,
            "max_ms": lat.max_ms,
            "throughput_ips": lat.throughput_ips(self.batch_size),
            "stages": {
                name: {"p50_ms": s.p50_ms, "mean_ms": s.mean_ms, "std_ms": s.std_ms}
                for name, s in self.stages.items()
            },
            "peak_rss_mb": self.peak_rss_mb,
            "peak_gpu_mem_mb": self.peak_gpu_mem_mb,
            "detections_per_image": self.detections_per_image,
            "image_sizes": self.image_sizes,
            "samples_ms": self.samples_ms,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------------- memory


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process in MiB (since the last :func:`reset_peak_rss`, where supported)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in KiB on Linux but in bytes on macOS.
        return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0
    except (ImportError, OSError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); returns False where that is not possible,
    in which case :func:`peak_rss_mb` keeps reporting the whole process's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _gpu_peak_reset(device: str) -> None:
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_mb(device: str) -> Optional[float]:
    # Only memory allocated through torch's caching allocator is visible here; ONNX Runtime's and TensorRT's own
    # allocations are not, which the report states next to the figure.
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


# ---------------------------------------------------------------------------------------------- side by side


def _batch_for(images: Sequence[np.ndarray], iteration: int, batch_size: int) -> List[np.ndarray]:
    n = len(images)
    start = (iteration * batch_size) % n
    return [images[(start + j) % n] for j in range(batch_size)]


def _make_clock(device: str) -> StageClock:
    return CudaClock(device) if device.startswith("cuda") else CpuClock()


def run_side_by_side(
    systems: Sequence[BenchSystem],
    images: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    warmup: int,
    iters: int,
    progress: bool = True,
    results: Optional[List[SystemResult]] = None,
) -> List[SystemResult]:
    """Time every system on the same batches, alternating systems within each iteration.

    images: a pool of HxWx3 uint8 RGB arrays; iteration ``i`` at batch size ``B`` uses images ``i*B .. i*B+B-1``
    (cyclically) for every system. The order of the systems rotates by one each iteration so that none always
    runs right after another's cache-thrashing or always first. Returns one :class:`SystemResult` per system and
    batch size, batch sizes in the given order. Each batch size's results are appended to ``results`` (when
    given) as soon as it is done, so a caller that catches an interruption keeps the finished batch sizes.
    """
    if not systems:
        raise ValueError("no systems to benchmark")
    if not images:
        raise ValueError("no images to benchmark on")
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    results = [] if results is None else results
    clocks = {s.name: _make_clock(s.device) for s in systems}
    for batch_size in batch_sizes:
        bar = ProgressBar((warmup + iters) * len(systems), f"batch {batch_size}", unit="runs", enabled=progress)
        for w in range(warmup):
            batch = _batch_for(images, w, batch_size)
            for system in systems:
                system.run(batch, clocks[system.name])
                bar.update()
        samples: Dict[str, List[Dict[str, float]]] = {s.name: [] for s in systems}
        peaks: Dict[str, List[float]] = {s.name: [] for s in systems}
        gpu_peaks: Dict[str, List[float]] = {s.name: [] for s in systems}
        dets: Dict[str, List[int]] = {s.name: [] for s in systems}
        for i in range(iters):
            batch = _batch_for(images, warmup + i, batch_size)
            k = i % len(systems)
            for system in list(systems[k:]) + list(systems[:k]):
                clock = clocks[system.name]
                reset_peak_rss()
                _gpu_peak_reset(system.device)
                clock.start()
                out = system.run(batch, clock)
                times = clock.stop()
                if len(out) != len(batch):
                    raise RuntimeError(f"{system.name} returned {len(out)} results for {len(batch)} images")
                samples[system.name].append(times)
                rss = peak_rss_mb()
                if rss is not None:
                    peaks[system.name].append(rss)
                gpu = _gpu_peak_mb(system.device)
                if gpu is not None:
                    gpu_peaks[system.name].append(gpu)
                dets[system.name].extend(len(d) for d in out)
                bar.update()
        bar.close()
        for system in systems:
            rows = samples[system.name]
            image_sizes = sorted({(int(im.shape[0]), int(im.shape[1])) for im in images})
            stage_names = [s for s in STAGES if any(s in r for r in rows)]
            stage_names += sorted({k for r in rows for k in r} - set(stage_names) - {"total"})
            results.append(
                SystemResult(
                    system=system.name,
                    device=system.device,
                    batch_size=batch_size,
                    warmup=warmup,
                    latency=LatencyStats.from_samples([r["total"] for r in rows]),
                    stages={s: LatencyStats.from_samples([r.get(s, 0.0) for r in rows]) for s in stage_names},
                    samples_ms=[round(r["total"], 4) for r in rows],
                    peak_rss_mb=max(peaks[system.name]) if peaks[system.name] else None,
                    peak_gpu_mem_mb=max(gpu_peaks[system.name]) if gpu_peaks[system.name] else None,
                    detections_per_image=float(np.mean(dets[system.name])) if dets[system.name] else 0.0,
                    image_sizes=[list(s) for s in image_sizes],
                    notes=getattr(system, "notes", ""),
                )
            )
    return results


# ---------------------------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> Optional[int]:
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
        return len(cores) or None
    except OSError:
        return None


def _memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in ("maskrcnn-deploy", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "torchvision",
                 "tensorrt", "pillow", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _gpus() -> List[Dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_gb": round(p.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
            })
        return gpus
    if shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            return [dict(zip(("name", "memory", "driver"), (c.strip() for c in line.split(","))))
                    for line in text.strip().splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not available on this platform
        return None


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """The machine the numbers were measured on: CPU, cores, memory, GPUs, library versions, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    providers: List[str] = []
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:  # pragma: no cover
        pass
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "threads": threads,
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "gpus": _gpus(),
        "onnxruntime_providers": providers,
        "versions": _versions(),
        # The load average when the run started: on a shared machine it says how much the others were using.
        "load_average": load_average(),
        "hostname": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
