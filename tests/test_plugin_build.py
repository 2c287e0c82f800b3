"""Finding and building the plugin library: cache, lock, missing compiler, the CUDA build and the TensorRT part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy_sdk import PluginError
from deploy_sdk import plugins

ROOT = Path(__file__).resolve().parents[1]
#: The architectures plugins/CMakeLists.txt builds by default (SASS for each, PTX for the last).
CUDA_ARCHS = ("75", "80", "86", "89", "90")


def test_library_path_is_cached_and_loadable():
    first = plugins.library_path()
    assert first.is_file() and first.name == "libmaskrcnn_roi_align.so"
    assert plugins.library_path() == first  # second call: no rebuild, same file
    import ctypes

    lib = ctypes.CDLL(str(first))
    assert lib.mrd_abi_version() == 1
    assert lib.mrd_has_cuda() == 0  # the default build is the fast CPU-only one


def test_no_compiler_gives_a_clear_plugin_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.setattr(plugins.shutil, "which", lambda name: None)
    with pytest.raises(PluginError, match="no C\\+\\+ compiler"):
        plugins.library_path(cuda=False)
    assert not list(tmp_path.rglob("*.so")), "a failed build must not leave a library behind"


def test_explicit_library_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(PluginError, match="does not exist"):
        plugins.library_path()


@pytest.mark.slow
def test_concurrent_first_use_builds_once(tmp_path):
    # Two processes ask for the library in an empty cache at the same moment (parallel test workers do this):
    # the file lock makes one build and the other wait and reuse it.
    code = (
        "import numpy as np; from deploy_sdk import plugins; p = plugins.library_path(); "
        "print(p); print(plugins.roi_align(np.ones((1,1,4,4),np.float32), [[0,0,2,2]], [0], 2).sum())"
    )
    env = dict(os.environ, MASKRCNN_DEPLOY_CACHE=str(tmp_path))
    env.pop("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.splitlines()[0] for out, _ in results}
    assert len(paths) == 1
    assert [out.splitlines()[1] for out, _ in results] == ["4.0", "4.0"]
    builds = sum(err.count("building the RoIAlign plugin library") for _, err in results)
    assert builds == 1, f"expected one build, saw {builds}"


@pytest.mark.slow
def test_direct_compile_without_cmake(tmp_path, monkeypatch):
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(tmp_path))
    real_which = shutil.which
    monkeypatch.setattr(plugins.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    monkeypatch.setattr(plugins, "_loaded", {})
    path = plugins.library_path(cuda=False)
    assert path.is_file() and str(path).startswith(str(tmp_path))
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = plugins.roi_align(features, [[0, 0, 3, 3]], [0], 3, 1.0, 2, False, "max")
    assert out[0, 0, 0, 0] == pytest.approx(3.75)


def _nvcc():
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


@pytest.mark.slow
def test_cuda_build_compiles_the_kernel_for_sm75_to_sm90():
    # CI has nvcc but no GPU: this proves the kernel (and the C ABI's CUDA entry) compile for every target
    # architecture. The library is cached, so only the first run pays the ~2-4 minutes.
    if _nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot compile the CUDA kernel here")
    path = plugins.library_path(cuda=True)
    import ctypes

    assert ctypes.CDLL(str(path)).mrd_has_cuda() == 1
    log = (path.parent / "build.log").read_text()
    for arch in CUDA_ARCHS:
        assert f"sm_{arch}" in log, f"sm_{arch} missing from the nvcc command lines in {path.parent / 'build.log'}"
    assert "compute_90" in log, "no PTX for forward compatibility"


def _tensorrt_include_dirs():
    dirs = [d for d in os.environ.get("TENSORRT_INCLUDE_DIR", "").split(os.pathsep) if d]
    return [d for d in dirs if (Path(d) / "NvInferRuntime.h").is_file()]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_tensorrt_plugin_compiles_and_its_creators_work_without_a_gpu(tmp_path, index, monkeypatch):
    """Compile the IPluginV3 classes against the TensorRT headers named in $TENSORRT_INCLUDE_DIR (one or two
    directories separated by ':', e.g. TensorRT 10.x and 11.x include/), then drive the creators and the
    host-side plugin methods from a small C++ harness: no GPU and no libnvinfer are needed for that."""
    dirs = _tensorrt_include_dirs()
    if index >= len(dirs):
        pytest.skip(
            "TensorRT headers not available: set TENSORRT_INCLUDE_DIR to a TensorRT include/ directory "
            "(':'-separated for several versions) to compile and exercise the plugin"
        )
    if _nvcc() is None:
        pytest.skip("nvcc not found: the TensorRT plugin is built together with the CUDA kernel")
    include = dirs[index]
    monkeypatch.setattr(plugins, "_loaded", {})
    lib = plugins.library_path(cuda=True, tensorrt_include_dir=include)
    import ctypes

    assert ctypes.CDLL(str(lib)).mrd_has_tensorrt() == 1
    harness = tmp_path / "harness"
    cxx = shutil.which("c++") or shutil.which("g++")
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-isystem", include, "-I/usr/local/cuda/include",
         str(ROOT / "tests" / "plugin_harness" / "trt_plugin_harness.cpp"), "-o", str(harness), "-ldl"],
        check=True,
    )  # fmt: skip
    result = subprocess.run([str(harness), str(lib)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL CHECKS PASSED" in result.stdout
