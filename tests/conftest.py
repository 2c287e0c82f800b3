"""Shared fixtures and skip markers. GPU- and TensorRT-only tests skip with a stated reason.

The shared fixtures are defined here, session-scoped: the shipped model (its checkpoint, its exported graph, the
loaded model, one ``convert`` run) and the toy deployment graph; a test names them as parameters. The plain
helpers they are built on live in tests/fixtures_models.py, tests/shipped_conversion.py and
tests/toy_deployment_graph.py and are imported by name where needed (tests/ is on the import path through
``pythonpath`` in pyproject.toml's pytest options).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures_models import shipped_checkpoint, shipped_onnx_path
from repo_paths import REPO_ROOT
from shipped_conversion import ConversionRun, run_shipped_conversion
from toy_deployment_graph import write_toy_graph

ROOT = REPO_ROOT

# Bounded intra-op threads: one test does not take every core, so that timing noise from other work on the machine
# does not turn into test timeouts.
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


@pytest.fixture(scope="session")
def shipped_model_file() -> Path:
    """The shipped checkpoint (or a training snapshot standing in for it; skips when neither exists)."""
    return shipped_checkpoint()


@pytest.fixture(scope="session")
def shipped_onnx(shipped_model_file) -> Path:
    """The shipped checkpoint exported to ONNX (cached under build/test_models/)."""
    return shipped_onnx_path(shipped_model_file)


@pytest.fixture(scope="session")
def shipped_loaded(shipped_model_file):
    """The shipped checkpoint loaded: a ``LoadedModel``."""
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    return load_checkpoint(shipped_model_file)


@pytest.fixture(scope="session")
def shipped_conversion(shipped_model_file, tmp_path_factory) -> ConversionRun:
    """One ``maskrcnn-deploy convert --to all`` run on the shipped model, shared by the whole session."""
    return run_shipped_conversion(shipped_model_file, tmp_path_factory.mktemp("convert"))


@pytest.fixture(scope="session")
def toy_graph(tmp_path_factory) -> Path:
    """The toy deployment graph (tests/toy_deployment_graph.py) with its defaults, for the tests that only read it."""
    return write_toy_graph(tmp_path_factory.mktemp("toy") / "toy.onnx")


class Device:
    """Where a test's arrays go: numpy arrays for the CPU (the plugin entries' own type), torch tensors on CUDA.

    ``put`` places an input, ``get`` brings a result back as numpy; the plugin's ``roi_align`` and
    ``multilevel_roi_align`` take either and answer in kind."""

    def __init__(self, name: str) -> None:
        self.name = name

    def put(self, array):
        if self.name == "cpu":
            return array
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.name)

    def get(self, result):
        return result if self.name == "cpu" else result.cpu().numpy()

    def __str__(self) -> str:
        return self.name


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
def device(request) -> Device:
    """The same test on the CPU and, where there is an NVIDIA GPU, on CUDA (skipped with the reason otherwise)."""
    return Device(request.param)
