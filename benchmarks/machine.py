"""The machine the numbers were measured on: CPU, cores, memory, GPUs, library versions, load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

__all__ = ["machine_info", "load_average"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector extensions that decide which kernels oneDNN, OpenVINO, ONNX Runtime and torch pick (as /proc/cpuinfo
# names them): AVX2 only (e.g. AMD Zen 2), AVX-512 with VNNI (int8), with BF16/FP16, and AMX (Sapphire Rapids on).
ISA_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Environment variables that cap the instruction set those libraries use: oneDNN's (torch's convolutions and
# OpenVINO's CPU plugin honour it) and torch's own kernels' (ATen). ONNX Runtime's MLAS has no such cap.
ISA_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def cpu_isa_flags() -> List[str]:
    """Which of :data:`ISA_FLAGS` the CPU has, from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return []


def isa_limits() -> Dict[str, str]:
    """The instruction-set caps set in the environment (:data:`ISA_LIMIT_VARIABLES`), by variable."""
    return {name: os.environ[name] for name in ISA_LIMIT_VARIABLES if os.environ.get(name)}


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
    for dist in (
        "maskrcnn-deploy",
        "numpy",
        "onnxruntime",
        "onnxruntime-gpu",
        "onnx",
        "openvino",
        "torch",
        "torchvision",
        "tensorrt",
        "pillow",
        "matplotlib",
    ):
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
            gpus.append(
                {
                    "name": p.name,
                    "compute_capability": f"{p.major}.{p.minor}",
                    "memory_gb": round(p.total_memory / 2**30, 1),
                    "cuda": torch.version.cuda,
                }
            )
        return gpus
    if shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            return [
                dict(zip(("name", "memory", "driver"), (c.strip() for c in line.split(","))))
                for line in text.strip().splitlines()
                if line.strip()
            ]
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
    usable: Optional[int]
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
        "cpu_isa": cpu_isa_flags(),
        # Set when the run capped the instruction set (e.g. ONEDNN_MAX_CPU_ISA=AVX2 to stand in for an AVX2-only CPU).
        "isa_limits": isa_limits(),
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
