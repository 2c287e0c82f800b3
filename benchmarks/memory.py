"""Memory probes: the process's resident set size (now and its peak) and the peak memory torch allocated on a GPU.

Every system of a benchmark lives in the same process, so the process's peak says little about one system. What
is attributed to a system (``deploy_sdk.benchmarks.side_by_side``): the resident memory that appeared while it
was constructed (weights, sessions) and while it ran its warm-up iterations (arenas, caches), plus the highest
transient rise above the resident set while one of its timed iterations ran (the peak-RSS mark is reset before
each, Linux ``clear_refs``).
"""

from __future__ import annotations

import sys
from typing import Optional

__all__ = ["peak_rss_mb", "current_rss_mb", "reset_peak_rss", "gpu_peak_reset", "gpu_peak_mb"]


def current_rss_mb() -> Optional[float]:
    """Resident set size of this process now, in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


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


def gpu_peak_reset(device: str) -> None:
    """Reset torch's peak-allocation mark on a CUDA ``device`` (nothing elsewhere, or when torch is not loaded)."""
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mb(device: str) -> Optional[float]:
    """Peak memory torch allocated on a CUDA ``device`` since :func:`gpu_peak_reset`, in MiB; None elsewhere."""
    # Only memory allocated through torch's caching allocator is visible here; ONNX Runtime's and TensorRT's own
    # allocations are not, which the report states next to the figure.
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None
