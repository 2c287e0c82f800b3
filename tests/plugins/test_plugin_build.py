"""The developer build of the plugin library (deploy_sdk.plugin_build): cache, lock, missing compiler, the CUDA
build and the TensorRT part.

These tests drive the builder explicitly (``plugin_build.jit_library_path``), never through
``plugins.library_path``, which prefers the library the install compiled into the package; the lookup order itself
is tested in tests/deploy_sdk/test_plugin_lookup.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from repo_paths import REPO_ROOT

from deploy_sdk import PluginError, plugin_build, plugins

ROOT = REPO_ROOT
#: The architectures plugins/CMakeLists.txt builds by default (SASS for each, PTX for the last).
CUDA_ARCHS = ("75", "80", "86", "89", "90")


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """One real CPU build of the library in a private temporary cache (the user's cache is not touched), shared by
    the cache tests of this module: they copy it instead of compiling again."""
    root = tmp_path_factory.mktemp("plugin_cache")
    os.chmod(root, 0o700)
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKRCNN_DEPLOY_CACHE", str(root))
    mp.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    try:
        path = plugin_build.jit_library_path(cuda=False)
    finally:
        mp.undo()
    return path


@pytest.fixture
def cache(built_library, tmp_path, monkeypatch):
    """A fresh private cache holding a copy of the built library (and its .sha256), as $MASKRCNN_DEPLOY_CACHE.

    ``plugin_build._build`` is replaced by a stand-in that counts its calls and returns the pristine build, so a
    test sees whether a rebuild was decided without compiling again. ``plugins`` loads what the builder hands out
    (the bundled library is hidden), so a test sees what would be loaded.
    """
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    key_dir = root / built_library.parent.name
    key_dir.mkdir(mode=0o700)
    for name in (built_library.name, built_library.name + ".sha256"):
        shutil.copy2(built_library.parent / name, key_dir / name)
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(root))
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "bundled_library", lambda: None)
    builds = []

    def fake_build(out_dir, cuda, trt_include):
        builds.append(out_dir)
        return built_library

    monkeypatch.setattr(plugin_build, "_build", fake_build)
    return SimpleNamespace(root=root, dir=key_dir, lib=key_dir / built_library.name, builds=builds,
                           pristine=built_library.read_bytes())  # fmt: skip


def _sha_file(lib: Path) -> Path:
    return lib.parent / (lib.name + ".sha256")


def test_library_path_is_cached_and_loadable(built_library, monkeypatch):
    import ctypes

    assert built_library.is_file() and built_library.name == "libmaskrcnn_roi_align.so"
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(built_library.parent.parent))
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.setattr(plugin_build, "_build", lambda *a: pytest.fail("a verified cached library must not be rebuilt"))
    assert plugin_build.jit_library_path() == built_library  # second call: no rebuild, same file
    lib = ctypes.CDLL(str(built_library))
    assert lib.mrd_abi_version() == 2  # MRD_ABI_VERSION: the MrdRoiAlignArgs entries
    assert lib.mrd_has_cuda() == 0  # the default build is the fast CPU-only one


def test_build_records_the_library_sha256_in_private_folders(built_library):
    line = _sha_file(built_library).read_text()
    assert line == f"{hashlib.sha256(built_library.read_bytes()).hexdigest()}  {built_library.name}\n"
    for path in (built_library.parent, built_library.parent.parent, built_library):
        assert os.stat(path).st_mode & 0o022 == 0, f"{path} is writable by group or others"


def _fixture_so(tmp_path: Path, source: str, name: str) -> Path:
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on this machine")
    src = tmp_path / f"{name}.cpp"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([cxx, "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


@pytest.mark.parametrize("tamper", ["append_bytes", "replace_with_other_library", "truncate", "garbage_sha",
                                    "missing_sha"])  # fmt: skip
def test_changed_cached_library_is_rebuilt_not_loaded(cache, tamper, tmp_path):
    if tamper == "append_bytes":
        with open(cache.lib, "ab") as f:
            f.write(b"\x00evil")
    elif tamper == "replace_with_other_library":
        other = _fixture_so(tmp_path, 'extern "C" int mrd_abi_version() { return 1; }\n', "other")
        shutil.copyfile(other, cache.lib)
    elif tamper == "truncate":
        cache.lib.write_bytes(cache.pristine[:1000])
    elif tamper == "garbage_sha":
        _sha_file(cache.lib).write_text("not a hash\n")
    else:
        _sha_file(cache.lib).unlink()
    path = plugin_build.jit_library_path(cuda=False)
    assert path == cache.lib
    assert cache.builds == [cache.dir], "the changed library must be rebuilt"
    assert path.read_bytes() == cache.pristine
    assert _sha_file(path).read_text().split()[0] == hashlib.sha256(cache.pristine).hexdigest()
    # What gets loaded is the rebuilt library: it pools (the hand-worked max-mode bin of test_plugin_roi_align).
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert plugins.roi_align(features, [[0, 0, 3, 3]], [0], 3, 1.0, 2, False, "max")[0, 0, 0, 0] == 3.75


def test_unchanged_cached_library_is_used_as_is(cache):
    assert plugin_build.jit_library_path(cuda=False) == cache.lib
    assert cache.builds == []


@pytest.mark.parametrize("which", ["key_folder", "cache_root"])
@pytest.mark.parametrize("bits", [0o002, 0o020], ids=["o+w", "g+w"])
def test_cache_folder_writable_by_others_is_refused(cache, which, bits):
    folder = cache.dir if which == "key_folder" else cache.root
    os.chmod(folder, 0o700 | bits)
    with pytest.raises(PluginError, match=r"writable by group or others.*delete .*MASKRCNN_DEPLOY_CACHE") as info:
        plugins._library(cuda=False)
    assert str(folder) in str(info.value)
    assert cache.builds == [] and plugins._loaded == {}


def test_cached_library_writable_by_others_is_refused(cache):
    os.chmod(cache.lib, 0o666)
    with pytest.raises(PluginError, match=r"library .* is writable by group or others"):
        plugin_build.jit_library_path(cuda=False)
    assert cache.builds == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown to another user")
@pytest.mark.parametrize("which", ["key_folder", "library"])
def test_cache_of_another_user_is_refused(cache, which):
    os.chown(cache.dir if which == "key_folder" else cache.lib, 65534, -1)  # nobody
    with pytest.raises(PluginError, match=r"is owned by uid 65534, not by the current user"):
        plugin_build.jit_library_path(cuda=False)
    assert cache.builds == []


def test_new_cache_folders_are_private_under_a_group_writable_umask(cache, tmp_path, monkeypatch):
    root = tmp_path / "fresh" / "cache"
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(root))
    old = os.umask(0o002)
    try:
        path = plugin_build.jit_library_path(cuda=False)
    finally:
        os.umask(old)
    assert cache.builds == [path.parent]
    for p in (root, path.parent, path, _sha_file(path)):
        assert os.stat(p).st_mode & 0o022 == 0, f"{p} is writable by group or others"
    assert plugin_build.jit_library_path(cuda=False) == path and len(cache.builds) == 1


@pytest.mark.parametrize(
    "source, missing",
    [
        ('extern "C" int unrelated_function() { return 0; }\n', "mrd_abi_version"),
        ('extern "C" int mrd_abi_version() { return 2; }\n', "mrd_has_cuda"),
    ],
)
def test_library_missing_a_symbol_raises_plugin_error(tmp_path, monkeypatch, source, missing):
    lib = _fixture_so(tmp_path, source, "fake_plugin")
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(lib))
    monkeypatch.setattr(plugins, "_loaded", {})
    with pytest.raises(PluginError, match=f"no symbol {missing}.*MASKRCNN_DEPLOY_PLUGIN_LIBRARY"):
        plugins.roi_align(np.zeros((1, 1, 4, 4), np.float32), [[0, 0, 2, 2]], [0], 2)
    assert plugins._loaded == {}
    assert plugins.has_cuda_kernels() is False  # catches PluginError; an AttributeError would escape
    with pytest.raises(PluginError, match="no symbol"):
        plugins.tensorrt_plugin_library()


def test_no_compiler_gives_a_clear_plugin_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: None)
    with pytest.raises(PluginError, match="no C\\+\\+ compiler"):
        plugin_build.jit_library_path(cuda=False)
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
        "import os, numpy as np; from deploy_sdk import plugin_build, plugins; p = plugin_build.jit_library_path(); "
        "os.environ['MASKRCNN_DEPLOY_PLUGIN_LIBRARY'] = str(p); "
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
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {stdout.splitlines()[0] for stdout, _ in results}
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
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    monkeypatch.setattr(plugins, "_loaded", {})
    path = plugin_build.jit_library_path(cuda=False)
    assert path.is_file() and str(path).startswith(str(tmp_path))
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(path))  # load exactly that build
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = plugins.roi_align(features, [[0, 0, 3, 3]], [0], 3, 1.0, 2, False, "max")
    assert out[0, 0, 0, 0] == pytest.approx(3.75)


def _nvcc():
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


@pytest.mark.slow
def test_cuda_build_compiles_the_kernel_for_sm75_to_sm90():
    # CI has nvcc but no GPU: this proves the kernel (and the C ABI's CUDA entry) compile for every target
    # architecture. The library is cached, so only the first run pays the build.
    if _nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot compile the CUDA kernel here")
    path = plugin_build.jit_library_path(cuda=True)
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
    lib = plugin_build.jit_library_path(cuda=True, tensorrt_include_dir=include)
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


_CREATOR_LIMITS_SOURCE = r"""
// createPlugin() of the RoIAlign creator must refuse (return nullptr, log an error) attribute values past the
// limits, and accept those at the limit.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

using namespace nvinfer1;

class QuietLogger : public ILogger
{
public:
    void log(Severity, AsciiChar const*) noexcept override {}
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &logger; }
    QuietLogger logger;
};

int main(int argc, char** argv)
{
    void* lib = argc == 2 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : nullptr;
    if (lib == nullptr)
    {
        std::printf("dlopen failed\n");
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    Finder finder;
    reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"))(&finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"))(n);
    IPluginCreatorV3One* single = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), "RoIAlign") == 0)
        {
            single = c;
        }
    }
    if (single == nullptr)
    {
        std::printf("no RoIAlign creator\n");
        return 2;
    }
    int failures = 0;
    auto attempt = [&](char const* what, PluginField const& varied, bool expectPlugin) {
        float scale = 1.0f;
        PluginField fields[2] = {{"spatial_scale", &scale, PluginFieldType::kFLOAT32, 1}, varied};
        PluginFieldCollection fc{2, fields};
        IPluginV3* plugin = single->createPlugin("roi", &fc, TensorRTPhase::kBUILD);
        bool const ok = (plugin != nullptr) == expectPlugin;
        std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
        failures += ok ? 0 : 1;
        delete plugin;
    };
    int32_t atLimit = 1024, overLimit = 1025, wraps = 65536, negative = -1;
    int64_t wide = (int64_t{1} << 32) + 2; // would truncate to 2 through a plain int32 cast
    double fraction = 2.5;
    float nanScale = __builtin_nanf("");
    attempt("sampling_ratio 1024 accepted", {"sampling_ratio", &atLimit, PluginFieldType::kINT32, 1}, true);
    attempt("sampling_ratio 1025 refused", {"sampling_ratio", &overLimit, PluginFieldType::kINT32, 1}, false);
    attempt("sampling_ratio 65536 refused", {"sampling_ratio", &wraps, PluginFieldType::kINT32, 1}, false);
    attempt("sampling_ratio 2^32+2 (int64) refused", {"sampling_ratio", &wide, PluginFieldType::kINT64, 1}, false);
    attempt("sampling_ratio 2.5 (float64) refused", {"sampling_ratio", &fraction, PluginFieldType::kFLOAT64, 1}, false);
    attempt("output_height -1 refused", {"output_height", &negative, PluginFieldType::kINT32, 1}, false);
    attempt("spatial_scale NaN refused", {"spatial_scale", &nanScale, PluginFieldType::kFLOAT32, 1}, false);
    std::printf(failures == 0 ? "ALL CHECKS PASSED\n" : "%d FAILED\n", failures);
    return failures == 0 ? 0 : 1;
}
"""


@pytest.mark.slow
def test_tensorrt_creator_refuses_attributes_past_the_limits(tmp_path, monkeypatch):
    """The TensorRT plugin shares the attribute checks of the C ABI (roiAlignChecks.h): sampling_ratio above
    MAX_SAMPLING_RATIO and integer fields outside int32 are refused when the engine is built, not computed wrongly."""
    dirs = _tensorrt_include_dirs()
    if not dirs:
        pytest.skip("TensorRT headers not available: set TENSORRT_INCLUDE_DIR to a TensorRT include/ directory")
    if _nvcc() is None:
        pytest.skip("nvcc not found: the TensorRT plugin is built together with the CUDA kernel")
    lib = plugin_build.jit_library_path(cuda=True, tensorrt_include_dir=dirs[0])
    harness = tmp_path / "creator_limits"
    source = tmp_path / "creator_limits.cpp"
    source.write_text(_CREATOR_LIMITS_SOURCE)
    cxx = shutil.which("c++") or shutil.which("g++")
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-isystem", dirs[0], "-I/usr/local/cuda/include", str(source), "-o", str(harness),
         "-ldl"],
        check=True,
    )  # fmt: skip
    result = subprocess.run([str(harness), str(lib)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ALL CHECKS PASSED" in result.stdout, result.stdout + result.stderr
