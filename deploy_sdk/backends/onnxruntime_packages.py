"""Which ONNX Runtime package is installed, and the one-package rule for its GPU build.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA) install the same Python package, ``onnxruntime``: with both
installed, each overwrites the other's files, and the one installed (or upgraded) last decides whether the CUDA
provider exists, sometimes leaving a mix of the two. pip extras can add packages but never remove one, so the
SDK's ``gpu`` extra does not pull ``onnxruntime-gpu`` in next to the base install's ``onnxruntime``; the GPU
build is a replacement, made by hand (:data:`GPU_REPLACEMENT`, in the README), and this module warns once per
process when it finds both.
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import List

from deploy_sdk.errors import MissingDependencyError

__all__ = [
    "GPU_REPLACEMENT",
    "ONNXRUNTIME_DISTRIBUTIONS",
    "installed_onnxruntime_distributions",
    "warn_if_several_installed",
    "cuda_provider_missing",
]

# Distributions that each provide the `onnxruntime` import package.
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
)
GPU_REPLACEMENT = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"

_warned = False


def installed_onnxruntime_distributions() -> List[str]:
    """The installed distributions among :data:`ONNXRUNTIME_DISTRIBUTIONS`, as ``name==version``."""
    found = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def warn_if_several_installed() -> bool:
    """Warn (once per process) when more than one ONNX Runtime distribution is installed; True when it did."""
    global _warned
    found = installed_onnxruntime_distributions()
    if len(found) < 2 or _warned:
        return len(found) >= 2
    _warned = True
    warnings.warn(
        f"{' and '.join(found)} are installed together; they write the same 'onnxruntime' package, so whichever "
        f"was installed last decides which execution providers work. Keep one; for the GPU build: {GPU_REPLACEMENT}",
        RuntimeWarning,
        stacklevel=3,
    )
    return True


def cuda_provider_missing(purpose: str, available: List[str]) -> MissingDependencyError:
    """The error for ``device='cuda'`` when ONNX Runtime has no CUDA provider: install the GPU build instead."""
    error = MissingDependencyError("onnxruntime-gpu", "gpu", purpose)
    found = installed_onnxruntime_distributions() or ["no onnxruntime distribution"]
    error.args = (
        f"{purpose} needs ONNX Runtime's CUDA provider; the installed ONNX Runtime ({', '.join(found)}) has "
        f"{', '.join(available) or 'no providers'}. Replace the CPU package with the 'onnxruntime-gpu' package: "
        f"{GPU_REPLACEMENT} (the maskrcnn-deploy[gpu] extra adds TensorRT only, because an extra cannot remove "
        "the base install's onnxruntime)",
    )
    return error
