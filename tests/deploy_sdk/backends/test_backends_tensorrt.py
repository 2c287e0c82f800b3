"""TensorRT backend: every TensorRT call of the SDK (backend and engine builder) type-checked against tensorrt-stubs,
argument checks and error messages here; the full path (engine build + inference compared with ONNX Runtime) only on
a GPU machine with TensorRT."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from repo_paths import REPO_ROOT

from deploy_sdk import DeploySdkError, EngineError, MissingDependencyError, PluginError, Predictor
from deploy_sdk.backends.tensorrt import PLUGIN_CREATOR, TensorRTBackend, import_tensorrt, load_plugin_library

ROOT = REPO_ROOT
STUBS_VERSION = "10.13.0.35.1"
STUBS_DIR = ROOT / "build" / "typestubs"
# Every module that calls TensorRT: the backend (import, plugin library, deserialize, execute) and the engine builder.
TENSORRT_MODULES = (
    "deploy_sdk/backends/tensorrt.py",
    "deploy_sdk/conversion/tensorrt_build.py",
    "deploy_sdk/conversion/commands/build.py",
    "deploy_sdk/engine_file.py",
)
# Two misuses mypy must report, so that the stubs are known to be in use: were they not found, tensorrt would be
# typed as Any and every call would pass. One through the TYPE_CHECKING import the backend's annotations use, one
# through a plain import as the builder's.
CANARY = """from typing import TYPE_CHECKING
import tensorrt
if TYPE_CHECKING:
    import tensorrt as trt
def misuse(engine: "trt.ICudaEngine") -> None:
    engine.get_tensor_name("images")
tensorrt.Builder(tensorrt.Logger()).create_netwrk(0)
"""


def _patched_stubs(into: Path) -> Path:
    """tensorrt-stubs, installed once into build/typestubs and patched in a copy under ``into``.

    Installed with --no-deps into a folder of its own, not the venv: its empty ``tensorrt`` directory would make
    ``import tensorrt`` succeed without TensorRT, and it depends on the real package, which does not install
    without a GPU. The patches fix stubgen defects that stop mypy from parsing the stubs: parameters named ``in``
    (a keyword), a non-default parameter after defaults, and an import of a module the stubs do not ship.
    """
    if not (STUBS_DIR / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(STUBS_DIR),
             f"tensorrt-stubs=={STUBS_VERSION}"],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        if proc.returncode != 0 or not (STUBS_DIR / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            pytest.skip(
                f"could not install tensorrt-stubs=={STUBS_VERSION} from the package index: "
                f"{proc.stderr.strip()[-300:]}"
            )
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(STUBS_DIR / package, into / package)
    for pyi in into.rglob("*.pyi"):
        text = pyi.read_text()
        text = re.sub(r", in: ", ", in_: ", text)
        text = text.replace("import tensorrt_libs as tensorrt_libs\n", "")
        text = text.replace(
            "power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)"
        )
        pyi.write_text(text)
    return into


@pytest.mark.slow
def test_tensorrt_calls_type_check_against_stubs(tmp_path):
    """mypy checks every TensorRT call of the SDK (TENSORRT_MODULES) against the published stubs."""
    stubs = _patched_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    # Only the TensorRT calls are the point here: other imports are skipped (typed Any), which keeps this fast; the
    # stubs' own stubgen defects are not this check's business.
    config.write_text(
        f"[mypy]\nmypy_path = {stubs}\nignore_missing_imports = True\nfollow_imports = skip\n"
        "warn_unused_ignores = False\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nfollow_imports = silent\n"
        "ignore_errors = True\n"
    )
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         *TENSORRT_MODULES, str(canary)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if "canary.py" not in e] == [], proc.stdout + proc.stderr
    assert len(errors) == 2, proc.stdout + proc.stderr
    assert '"get_tensor_name" of "ICudaEngine"' in errors[0] and "create_netwrk" in errors[1], proc.stdout


def test_missing_tensorrt_names_the_purpose_and_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError) as missing:
        import_tensorrt("running engines")
    text = str(missing.value)
    assert text.startswith("running engines needs TensorRT and an NVIDIA GPU; TensorRT (the 'tensorrt' package) is ")
    assert "pip install 'maskrcnn-deploy[gpu]'" in text and "developer.nvidia.com/tensorrt" in text
    assert "\n" not in text and missing.value.extra == "gpu"
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # stubs-only namespace package
    with pytest.raises(MissingDependencyError, match=r"^running engines needs .* \(only its type stubs were found\)"):
        import_tensorrt("running engines")
    real = types.ModuleType("tensorrt")
    real.__version__ = "10.13.0.35"
    monkeypatch.setitem(sys.modules, "tensorrt", real)
    assert import_tensorrt("running engines") is real


_A_HANDLE = object()  # what a successful load_library returns (None is the failure the tests ask for)


class _FakeRegistry:
    """Stands in for trt.IPluginRegistry: what load_library returns and which creators exist."""

    def __init__(self, handle=_A_HANDLE, creators=(PLUGIN_CREATOR,), raises=None):
        self.handle, self.creators, self.raises, self.loaded = handle, set(creators), raises, []

    def load_library(self, path):
        self.loaded.append(path)
        if self.raises:
            raise self.raises
        return self.handle

    def get_creator(self, name, version, namespace=""):
        return object() if (name, version) in self.creators else None


def test_plugin_library_errors_name_plugin_path_and_fix(tmp_path):
    lib = tmp_path / "libroi.so"
    with pytest.raises(PluginError, match=r"'MultiLevelRoIAlign' was not found at .*libroi\.so.*MASKRCNN_DEPLOY"):
        load_plugin_library(_FakeRegistry(), lib)
    lib.write_bytes(b"\x7fELF")
    with pytest.raises(PluginError, match=r"could not load the plugin library .*libroi\.so.*another TensorRT version"):
        load_plugin_library(_FakeRegistry(handle=None), lib)
    with pytest.raises(PluginError, match=r"undefined symbol.*another TensorRT"):
        load_plugin_library(_FakeRegistry(raises=RuntimeError("undefined symbol: _ZN8nvinfer1")), lib)
    with pytest.raises(PluginError, match=r"registered no 'MultiLevelRoIAlign' version 1 creator.*headers"):
        load_plugin_library(_FakeRegistry(creators=()), lib)
    registry = _FakeRegistry()
    assert load_plugin_library(registry, lib) == str(lib) and registry.loaded == [str(lib)]


def test_plugin_library_that_cannot_be_built(monkeypatch):
    from deploy_sdk import plugins

    def fail(cuda=None, tensorrt_include_dir=None):
        raise PluginError("nvcc not found on PATH")

    monkeypatch.setattr(plugins, "library_path", fail)
    with pytest.raises(PluginError, match=r"'MultiLevelRoIAlign' \(version 1\) is not available: nvcc not found"):
        load_plugin_library(_FakeRegistry())


def test_backend_argument_checks(tmp_path):
    with pytest.raises(DeploySdkError, match="runs on a CUDA GPU"):
        TensorRTBackend(tmp_path / "x.engine", device="cpu")
    with pytest.raises(EngineError, match="does not exist.*maskrcnn-deploy build"):
        TensorRTBackend(tmp_path / "missing.engine")
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(b"a bare TensorRT plan from trtexec")
    with pytest.raises(EngineError, match="not a maskrcnn-deploy engine file"):
        TensorRTBackend(foreign)
    with pytest.raises(DeploySdkError, match="device must be"):
        TensorRTBackend(foreign, device="tpu")


def test_engine_file_without_tensorrt_is_a_clear_error(tmp_path, monkeypatch):
    from toy_deployment_graph import toy_metadata

    from deploy_sdk.engine_file import EngineHeader, GpuIdentity, write_engine_file

    path = tmp_path / "model.engine"
    write_engine_file(path, b"plan bytes", EngineHeader(toy_metadata(), "10.13.0", GpuIdentity("NVIDIA H200", "9.0")))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"tensorrt backend.*maskrcnn-deploy\[gpu\]"):
        Predictor(path, device="cuda")  # backend "auto" picks tensorrt from the suffix


@pytest.mark.needs_tensorrt
@pytest.mark.slow
def test_tensorrt_engine_matches_onnxruntime(tmp_path):
    """Full path on a GPU machine: build the shipped model's engine, run it, compare with ONNX Runtime on CPU."""
    from fixtures_models import held_out_images, parity_failures, shipped_onnx_path

    from deploy_sdk.conversion.tensorrt_build import BuildOptions, ProfileSpec, build_engine

    onnx_path = shipped_onnx_path(tmp_path)
    engine = tmp_path / "model.engine"
    build_engine(onnx_path, engine, BuildOptions(ProfileSpec(min_batch=1, opt_batch=4, max_batch=4)))
    images = held_out_images(7)
    expected = Predictor(onnx_path, batch_size=4).predict(images)
    for graphs in (False, True):
        backend = TensorRTBackend(engine, cuda_graphs=graphs)
        got = Predictor(backend, batch_size=4).predict(images)
        assert not parity_failures(expected, got, score_diff=0.02), parity_failures(expected, got, score_diff=0.02)
        got_again = Predictor(backend, batch_size=4).predict(images)  # reused buffers (and replayed graphs)
        for a, b in zip(got, got_again):
            np.testing.assert_array_equal(a.boxes, b.boxes)
