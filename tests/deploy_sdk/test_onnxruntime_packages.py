"""The GPU build of ONNX Runtime is a replacement, not an addition: the [gpu] extra does not add onnxruntime-gpu
next to the base install's onnxruntime, and the SDK warns once when it finds both installed."""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest
import tomllib
from repo_paths import REPO_ROOT

import deploy_sdk.backends.onnxruntime_packages as packages

ROOT = REPO_ROOT


def test_no_extra_installs_a_second_onnxruntime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "onnxruntime" in base
    for extra, deps in project["optional-dependencies"].items():
        names = {d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
        assert not names & {"onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"}, extra
    assert any(d.startswith("tensorrt") for d in project["optional-dependencies"]["gpu"])
    readme = (ROOT / "README.md").read_text()
    assert packages.GPU_REPLACEMENT in readme  # the README says how to switch


def _installed(monkeypatch, versions):
    def version(name):
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packages.metadata, "version", version)
    monkeypatch.setattr(packages, "_warned", False)


def test_warns_once_when_both_builds_are_installed(monkeypatch):
    _installed(monkeypatch, {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"})
    with pytest.warns(RuntimeWarning) as caught:
        assert packages.warn_if_several_installed()
    (w,) = caught
    text = str(w.message)
    assert "onnxruntime==1.22.0 and onnxruntime-gpu==1.22.0 are installed together" in text
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert packages.warn_if_several_installed()  # still true, but no second warning


def test_one_build_is_quiet_and_cuda_error_says_how_to_replace(monkeypatch):
    _installed(monkeypatch, {"onnxruntime": "1.22.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not packages.warn_if_several_installed()
    error = packages.cuda_provider_missing("device='cuda'", ["CPUExecutionProvider"])
    text = str(error)
    assert "installed ONNX Runtime (onnxruntime==1.22.0) has CPUExecutionProvider" in text
    assert packages.GPU_REPLACEMENT in text and "\n" not in text
