"""Running several benchmarked systems side by side on the same images.

A *system* is anything that turns a batch of decoded images into one ``Detections`` per image (this SDK's
``Predictor`` on some backend, or a baseline such as PyTorch eager). :func:`run_side_by_side` runs several
systems on the same images, alternating them iteration by iteration and rotating which goes first, so that a
noisy, shared machine slows every system alike and their ratios stay meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence

import numpy as np

from deploy_sdk.benchmarks.memory import current_rss_mb, gpu_peak_mb, gpu_peak_reset, peak_rss_mb, reset_peak_rss
from deploy_sdk.benchmarks.timing import LatencyStats, StageClock, make_clock
from deploy_sdk.progress import ProgressBar

__all__ = ["STAGES", "BenchSystem", "SystemResult", "run_side_by_side"]

# The stages every system reports; a system whose pieces cannot be separated charges the inseparable work to
# the stage where most of it happens and says so in its ``notes``.
STAGES = ("preprocess", "inference", "postprocess")


class BenchSystem(Protocol):
    """One benchmarked system. ``run`` must call ``clock.lap(stage)`` for the stages in :data:`STAGES`."""

    name: str
    device: str
    notes: str
    # Resident memory (MB) the system's construction took, set by whoever built it; None when not measured. A
    # system without the attribute counts as not measured.
    load_rss_mb: Optional[float]

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
    memory_mb: Optional[float] = None
    run_peak_mb: Optional[float] = None

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
                name: {"p50_ms": s.p50_ms, "mean_ms": s.mean_ms, "std_ms": s.std_ms} for name, s in self.stages.items()
            },
            "rsd": lat.std_ms / lat.mean_ms if lat.mean_ms > 0 else 0.0,
            "peak_rss_mb": self.peak_rss_mb,
            "memory_mb": self.memory_mb,
            "run_peak_mb": self.run_peak_mb,
            "peak_gpu_mem_mb": self.peak_gpu_mem_mb,
            "detections_per_image": self.detections_per_image,
            "image_sizes": self.image_sizes,
            "samples_ms": self.samples_ms,
            "notes": self.notes,
        }


def _batch_for(images: Sequence[np.ndarray], iteration: int, batch_size: int) -> List[np.ndarray]:
    n = len(images)
    start = (iteration * batch_size) % n
    return [images[(start + j) % n] for j in range(batch_size)]


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
    clocks = {s.name: make_clock(s.device) for s in systems}
    # Resident memory each system brought (construction, measured by the caller as ``load_rss_mb``, and warm-up).
    resident: Dict[str, Optional[float]] = {s.name: getattr(s, "load_rss_mb", None) for s in systems}
    for batch_size in batch_sizes:
        bar = ProgressBar((warmup + iters) * len(systems), f"batch {batch_size}", unit="runs", enabled=progress)
        for w in range(warmup):
            batch = _batch_for(images, w, batch_size)
            for system in systems:
                before = current_rss_mb()
                system.run(batch, clocks[system.name])
                after = current_rss_mb()
                brought = resident[system.name]
                if before is not None and after is not None and brought is not None:
                    resident[system.name] = brought + max(0.0, after - before)
                bar.update()
        samples: Dict[str, List[Dict[str, float]]] = {s.name: [] for s in systems}
        peaks: Dict[str, List[float]] = {s.name: [] for s in systems}
        rises: Dict[str, List[float]] = {s.name: [] for s in systems}
        gpu_peaks: Dict[str, List[float]] = {s.name: [] for s in systems}
        dets: Dict[str, List[int]] = {s.name: [] for s in systems}
        for i in range(iters):
            batch = _batch_for(images, warmup + i, batch_size)
            k = i % len(systems)
            for system in list(systems[k:]) + list(systems[:k]):
                clock = clocks[system.name]
                base = current_rss_mb()
                reset_ok = reset_peak_rss()
                gpu_peak_reset(system.device)
                clock.start()
                out = system.run(batch, clock)
                times = clock.stop()
                if len(out) != len(batch):
                    raise RuntimeError(f"{system.name} returned {len(out)} results for {len(batch)} images")
                samples[system.name].append(times)
                rss = peak_rss_mb()
                if rss is not None:
                    peaks[system.name].append(rss)
                    if reset_ok and base is not None:
                        rises[system.name].append(max(0.0, rss - base))
                gpu = gpu_peak_mb(system.device)
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
                    run_peak_mb=max(rises[system.name]) if rises[system.name] else None,
                    memory_mb=_memory_mb(resident[system.name], rises[system.name]),
                )
            )
    return results


def _memory_mb(resident: Optional[float], rises: List[float]) -> Optional[float]:
    """What a system needs in memory: what it brought plus its largest rise during one run (None if unknown)."""
    return resident + max(rises) if rises and resident is not None else None
