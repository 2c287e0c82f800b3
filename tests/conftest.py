"""Shared fixtures and skip markers. GPU- and TensorRT-only tests skip with a stated reason."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# The shared fixtures (the shipped model, its export, one `convert` run): registered as plugins here rather than
# imported by each test module, so a test names the fixture as a parameter and nothing else.
pytest_plugins = ["fixtures_models", "shipped_conversion"]

# CI machines are small and shared: bounded intra-op threads keep one test from taking every core, so that timing
# noise does not turn into test timeouts.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return _has_cuda()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none is visible to torch on this machine")
    skip_trt = pytest.mark.skip(
        reason="needs TensorRT (the 'tensorrt' Python package) and a GPU; one of them is missing"
    )
    has_cuda = _has_cuda()
    has_trt = _has_tensorrt()
    for item in items:
        if "needs_cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "needs_tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
