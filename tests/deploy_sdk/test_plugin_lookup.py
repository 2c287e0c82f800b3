"""Which plugin library deploy_sdk.plugins loads: $MASKRCNN_DEPLOY_PLUGIN_LIBRARY, then the library the install
compiled into the package (deploy_sdk/_lib/) when it serves the request, then, in a source checkout only, the
developer build of deploy_sdk.plugin_build.

The unit tests stand in small fake libraries (only the capability queries of the C ABI) and a fake package folder;
the developer build is replaced by a recorder, so nothing is compiled but the fakes. The last tests look at this
installation itself and at the top-level folders linked into deploy_sdk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from repo_paths import REPO_ROOT

from deploy_sdk import PluginError, plugin_build, plugins

ROOT = REPO_ROOT

_FAKE_SOURCE = """
extern "C" int mrd_has_cuda() { return HAS_CUDA; }
extern "C" int mrd_has_tensorrt() { return HAS_TRT; }
#ifdef ABI
extern "C" int mrd_abi_version() { return ABI; }
#endif
"""


@pytest.fixture(scope="module")
def fake_libs(tmp_path_factory):
    """{(has_cuda, has_trt): path} of libraries that answer the C ABI's capability queries only, and under "abi1"
    one that also says it speaks C ABI version 1 (the version before MrdRoiAlignArgs)."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on this machine")
    folder = tmp_path_factory.mktemp("fake_libs")
    src = folder / "fake.cpp"
    src.write_text(_FAKE_SOURCE)
    libs = {}
    for cuda, trt in ((0, 0), (1, 0), (1, 1)):
        out = folder / f"fake_cuda{cuda}_trt{trt}.so"
        subprocess.run([cxx, "-shared", "-fPIC", f"-DHAS_CUDA={cuda}", f"-DHAS_TRT={trt}", str(src), "-o", str(out)],
                       check=True)  # fmt: skip
        libs[(bool(cuda), bool(trt))] = out
    out = folder / "fake_abi1.so"
    subprocess.run([cxx, "-shared", "-fPIC", "-DHAS_CUDA=1", "-DHAS_TRT=0", "-DABI=1", str(src), "-o", str(out)],
                   check=True)  # fmt: skip
    libs["abi1"] = out
    return libs


@pytest.fixture
def lookup(fake_libs, tmp_path, monkeypatch):
    """A fake package folder whose _lib/ holds the bundled library (``install``), the checkout's presence
    (``checkout``), TensorRT headers found or not (``trt_headers``) and a recorder in place of the developer build
    (``builds``: the (cuda, tensorrt_include_dir) of each call)."""
    package = tmp_path / "site-packages" / "deploy_sdk"
    lib_dir = package / "_lib"
    lib_dir.mkdir(parents=True)
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.delenv("MASKRCNN_DEPLOY_BUILD_CUDA", raising=False)
    monkeypatch.setattr(plugins, "_package_dirs", lambda: [str(tmp_path / "checkout" / "deploy_sdk"), str(package)])
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_capabilities_of", {})
    monkeypatch.setattr(plugins, "_noted", set())
    state = SimpleNamespace(
        checkout=True, trt_headers="", builds=[], jit=tmp_path / "cache" / "jit.so",
        lib=lib_dir / plugin_build.LIBRARY_NAME, manifest=lib_dir / plugin_build.MANIFEST_NAME,
    )  # fmt: skip
    monkeypatch.setattr(plugin_build, "has_sources", lambda: state.checkout)
    monkeypatch.setattr(plugin_build, "find_tensorrt_headers", lambda explicit=None: state.trt_headers)

    def jit(cuda=False, tensorrt_include_dir=None):
        state.builds.append((cuda, tensorrt_include_dir))
        return state.jit

    monkeypatch.setattr(plugin_build, "jit_library_path", jit)

    def install(cuda=False, trt=False, manifest="fresh", abi1=False):
        """Put a fake library into _lib/, with the manifest of the current sources ("fresh"), of a changed one
        ("stale") or none (None); ``abi1``: the one of C ABI version 1."""
        shutil.copyfile(fake_libs["abi1" if abi1 else (cuda, trt)], state.lib)
        if manifest is not None:
            current = plugin_build.source_manifest()
            if manifest == "stale":
                current["roi_align/roiAlignMath.h"] = "0" * 64
            state.manifest.write_text("".join(f"{h}  {name}\n" for name, h in sorted(current.items())))
        return state.lib

    state.install = install
    return state


def test_override_comes_first(lookup, fake_libs, monkeypatch):
    lookup.install(cuda=True, trt=True)
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(fake_libs[(False, False)]))
    for cuda in (False, True):
        assert plugins._locate(cuda) == (fake_libs[(False, False)], plugins.ORIGIN_OVERRIDE)
    assert lookup.builds == []


def test_missing_override_is_an_error_not_a_fallback(lookup, tmp_path, monkeypatch):
    lookup.install()
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(PluginError, match="MASKRCNN_DEPLOY_PLUGIN_LIBRARY=.*missing.so does not exist"):
        plugins.library_path()
    assert lookup.builds == []


def test_installed_package_uses_its_bundled_library(lookup):
    """A wheel install: no plugins/ sources; the bundled library needs no manifest check and no compiler."""
    lookup.checkout = False
    lookup.install(cuda=False, manifest=None)
    assert plugins.bundled_library() == lookup.lib
    assert plugins._locate(False) == (lookup.lib, plugins.ORIGIN_BUNDLED)
    assert plugins.library_path() == lookup.lib
    assert lookup.builds == []


def test_installed_package_with_cuda_serves_cuda_requests(lookup):
    lookup.checkout = False
    lookup.install(cuda=True, manifest=None)
    assert plugins._locate(True) == (lookup.lib, plugins.ORIGIN_BUNDLED)
    assert plugins._locate(False) == (lookup.lib, plugins.ORIGIN_BUNDLED)


def test_installed_package_without_cuda_says_how_to_get_it(lookup, monkeypatch):
    lookup.checkout = False
    lookup.install(cuda=False, manifest=None)
    with pytest.raises(PluginError, match=r"built without CUDA \(no nvcc.*Reinstall.*MASKRCNN_DEPLOY_PLUGIN_LIBRARY"):
        plugins.library_path(cuda=True)
    monkeypatch.setenv("MASKRCNN_DEPLOY_BUILD_CUDA", "1")  # cuda=None follows this variable
    with pytest.raises(PluginError, match="built without CUDA"):
        plugins.library_path()
    assert plugins.has_cuda_kernels() is False
    assert lookup.builds == []


def test_no_library_and_no_sources_is_a_clear_error(lookup):
    lookup.checkout = False
    assert plugins.bundled_library() is None
    with pytest.raises(PluginError, match=r"no library was installed with the package.*Reinstall maskrcnn-deploy"):
        plugins.library_path()


def test_checkout_without_an_installed_library_uses_the_developer_build(lookup):
    """The repository on PYTHONPATH with no `pip install`: the developer build, as before."""
    assert plugins._locate(False) == (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert lookup.builds == [(False, None)]


def test_checkout_prefers_the_installed_library_built_from_its_sources(lookup):
    """An editable install whose plugins/ is unchanged since `pip install -e .`: no developer build."""
    lookup.install(cuda=False)
    assert plugins._locate(False) == (lookup.lib, plugins.ORIGIN_BUNDLED)
    assert lookup.builds == []


@pytest.mark.parametrize("manifest", ["stale", None])
def test_checkout_with_changed_sources_uses_the_developer_build(lookup, manifest, capsys):
    lookup.install(cuda=True, manifest=manifest)
    assert plugins._locate(False) == (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert plugins._locate(True) == (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert lookup.builds == [(False, None), (True, None)]
    note = capsys.readouterr().err
    assert note.count("not using the installed plugin library") == 1, note  # once per process
    expected = "roiAlignMath.h" if manifest == "stale" else "no readable record of the sources"
    assert expected in note and "pip install -e ." in note, note


def test_checkout_builds_cuda_when_the_installed_library_has_none(lookup):
    lookup.install(cuda=False)
    assert plugins._locate(False) == (lookup.lib, plugins.ORIGIN_BUNDLED)  # the CPU part serves numpy calls
    assert plugins._locate(True) == (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert lookup.builds == [(True, None)]


@pytest.mark.parametrize("trt_in_library", [False, True])
def test_checkout_builds_the_tensorrt_plugins_when_headers_appeared(lookup, trt_in_library):
    lookup.install(cuda=True, trt=trt_in_library)
    assert plugins._locate(True) == (lookup.lib, plugins.ORIGIN_BUNDLED)  # no headers now: nothing better to build
    lookup.trt_headers = "/opt/TensorRT/include"
    expected = (lookup.lib, plugins.ORIGIN_BUNDLED) if trt_in_library else (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert plugins._locate(True) == expected


def test_explicit_tensorrt_headers_ask_for_a_developer_build(lookup):
    lookup.install(cuda=True, trt=True)
    assert plugins.library_path(cuda=True, tensorrt_include_dir="/opt/trt/include") == lookup.jit
    assert lookup.builds == [(True, "/opt/trt/include")]
    lookup.checkout = False
    with pytest.raises(PluginError, match="tensorrt_include_dir=/opt/trt/include asks for a build"):
        plugins.library_path(cuda=True, tensorrt_include_dir="/opt/trt/include")


def test_bundled_library_missing_a_symbol_names_a_reinstall(lookup):
    lookup.install(cuda=True)
    with pytest.raises(PluginError, match=r"no symbol mrd_abi_version.*reinstall maskrcnn-deploy"):
        plugins.roi_align(np.zeros((1, 1, 4, 4), np.float32), [[0, 0, 2, 2]], [0], 2)
    assert plugins._loaded == {}


@pytest.mark.parametrize("cuda", [False, True])
def test_checkout_with_a_bundled_library_of_another_abi_uses_the_developer_build(lookup, cuda, capsys):
    """A library of an older SDK (C ABI 1: 23 positional arguments) left in _lib/ with a manifest that still matches:
    its ABI version refuses it, and the checkout builds its own instead of binding symbols that take other
    arguments."""
    lookup.install(abi1=True)
    assert plugins._locate(cuda) == (lookup.jit, plugins.ORIGIN_DEVELOPER_BUILD)
    assert lookup.builds == [(cuda, None)]
    note = capsys.readouterr().err
    assert f"C ABI version 1 and this SDK needs {plugins._ABI_VERSION}" in note, note


def test_installed_package_with_a_library_of_another_abi_names_a_reinstall(lookup):
    lookup.checkout = False
    lookup.install(abi1=True, manifest=None)
    with pytest.raises(PluginError, match=r"C ABI version 1 and this SDK needs 2.*Reinstall maskrcnn-deploy"):
        plugins.library_path()
    assert lookup.builds == []


def test_override_of_another_abi_is_refused_before_binding(fake_libs, monkeypatch):
    monkeypatch.setenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", str(fake_libs["abi1"]))
    monkeypatch.setattr(plugins, "_loaded", {})
    with pytest.raises(PluginError, match=r"has C ABI version 1, this SDK needs 2; point MASKRCNN_DEPLOY_PLUGIN_LIB"):
        plugins.roi_align(np.zeros((1, 1, 4, 4), np.float32), [[0, 0, 2, 2]], [0], 2)
    assert plugins._loaded == {}


# ------------------------------------------------------------------------------ the library's tables vs Python

_KINDS = {0: "int", 1: "float", 2: "floats", 3: "string"}  # MRD_FIELD_* of roiAlignCApi.h


def _typed_default(kind: str, text):
    if text is None:
        return None
    text = text.decode()
    if kind == "int":
        return int(text)
    if kind in ("float", "floats"):
        return float(text)
    return text


def test_python_op_table_is_the_library_table():
    """deploy_sdk.plugins.OP_FIELDS row for row against the C++ table (roiAlignOp.h) read through the C ABI:
    names, kinds, the ops that take each field and the defaults, in order."""
    import ctypes

    lib = plugins._library(cuda=False)
    assert lib.mrd_plugin_version().decode() == plugins.PLUGIN_VERSION
    op_names = [lib.mrd_op_name(i).decode() for i in range(lib.mrd_op_count())]
    assert op_names == [plugins.SINGLE_LEVEL_OP, plugins.MULTILEVEL_OP]
    rows = []
    for i in range(lib.mrd_op_field_count()):
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        kind, ops = ctypes.c_int32(), ctypes.c_int32()
        assert lib.mrd_op_field(i, ctypes.byref(name), ctypes.byref(kind), ctypes.byref(ops), ctypes.byref(text)) == 0
        k = _KINDS[kind.value]
        op_set = tuple(n for bit, n in enumerate(op_names) if ops.value & (1 << bit))
        rows.append(plugins.OpField(name.value.decode(), k, op_set, _typed_default(k, text.value)))
    refs = (ctypes.byref(ctypes.c_char_p()), ctypes.byref(ctypes.c_int32()), ctypes.byref(ctypes.c_int32()))
    assert lib.mrd_op_field(len(rows), *refs, ctypes.byref(ctypes.c_char_p())) == -1  # past the last row
    assert tuple(rows) == plugins.OP_FIELDS
    # Each default has the Python type of its kind (1 vs 1.0 compare equal above).
    for f in plugins.OP_FIELDS:
        expected = {"int": int, "float": float, "floats": float, "string": str}[f.kind]
        assert f.default is None or type(f.default) is expected, f
    names = {f.name for f in plugins.OP_FIELDS}
    aliases = {v for k, v in vars(plugins).items() if k.startswith("FIELD_")}
    assert aliases <= names
    assert plugins.MULTILEVEL_FIELDS == (
        "output_height", "output_width", "sampling_ratio", "spatial_scales", "aligned", "mode", "canonical_scale",
        "canonical_level",
    )  # fmt: skip
    assert plugins.SINGLE_LEVEL_FIELDS == (
        "output_height",
        "output_width",
        "sampling_ratio",
        "spatial_scale",
        "mode",
        "coordinate_transformation_mode",
    )


def test_args_structure_has_the_c_layout():
    """deploy_sdk.plugins.RoiAlignArgs (ctypes) against MrdRoiAlignArgs as the C++ compiler laid it out (offsetof and
    sizeof exported by the library): member names, order, offsets and sizes."""
    import ctypes

    lib = plugins._library(cuda=False)
    assert lib.mrd_args_size() == ctypes.sizeof(plugins.RoiAlignArgs)
    c_layout = []
    for i in range(lib.mrd_args_field_count()):
        name, offset, size = ctypes.c_char_p(), ctypes.c_int64(), ctypes.c_int64()
        assert lib.mrd_args_field(i, ctypes.byref(name), ctypes.byref(offset), ctypes.byref(size)) == 0
        c_layout.append((name.value.decode(), offset.value, size.value))
    py_layout = [
        (name, getattr(plugins.RoiAlignArgs, name).offset, getattr(plugins.RoiAlignArgs, name).size)
        for name, _ in plugins.RoiAlignArgs._fields_
    ]
    assert py_layout == c_layout


def test_manifest_reader_refuses_malformed_lines(tmp_path):
    good = tmp_path / "good"
    good.write_text(f"{'a' * 64}  CMakeLists.txt\n{'B' * 64}  roi_align/x.h\n")
    assert plugin_build.read_manifest(good) == {"CMakeLists.txt": "a" * 64, "roi_align/x.h": "b" * 64}
    for text in ("not a manifest\n", f"{'a' * 63}  x.h\n", f"{'g' * 64}  x.h\n", f"{'a' * 64}  \n"):
        bad = tmp_path / "bad"
        bad.write_text(text)
        assert plugin_build.read_manifest(bad) is None, text
    assert plugin_build.read_manifest(tmp_path / "missing") is None


# --------------------------------------------------------------------------------------- this installation


def test_this_installation_loads_its_bundled_library_without_building(tmp_path, monkeypatch):
    """`make test` runs on an editable install (`pip install -e .`): the library compiled at install time is
    the one loaded, and nothing is built at run time. Skipped when the package runs from the checkout without an
    install, or plugins/ was edited since (then the developer build is right)."""
    bundled = plugins.bundled_library()
    if bundled is None:
        pytest.skip("deploy_sdk is not installed with pip here (no deploy_sdk/_lib/): nothing bundled to check")
    recorded = plugin_build.read_manifest(bundled.parent / plugin_build.MANIFEST_NAME)
    if plugin_build.has_sources() and recorded != plugin_build.source_manifest():
        pytest.skip(f"{plugin_build.source_dir()} changed since the install: the developer build is used instead")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("MASKRCNN_DEPLOY_CACHE", str(cache))
    monkeypatch.delenv("MASKRCNN_DEPLOY_PLUGIN_LIBRARY", raising=False)
    monkeypatch.delenv("MASKRCNN_DEPLOY_BUILD_CUDA", raising=False)
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugin_build, "_build", lambda *a: pytest.fail("nothing may be built at run time"))
    assert plugins._locate(False) == (bundled, plugins.ORIGIN_BUNDLED)
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # value 4y + x: bilinear sampling is exact
    assert plugins.roi_align(features, [[0, 0, 4, 4]], [0], 1, 1.0, 2, True)[0, 0, 0, 0] == 7.5
    assert os.listdir(cache) == []


def test_top_level_folders_are_only_importable_through_deploy_sdk():
    """conversion/ and benchmarks/ are deploy_sdk.conversion and deploy_sdk.benchmarks; from the repository root
    (or in an editable install, which puts the checkout on sys.path) their bare names would be second copies."""
    code = (
        "import importlib\n"
        "for name in ('conversion', 'benchmarks'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        print(name, 'refused:', exc)\n"
        "    else:\n"
        "        print(name, 'IMPORTED')\n"
        "import deploy_sdk.benchmarks, deploy_sdk.conversion\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "conversion refused: import deploy_sdk.conversion, not 'conversion' (the top-level folder is that package)"
    )
    assert lines[1].startswith("benchmarks refused: import deploy_sdk.benchmarks, not 'benchmarks'")
    assert lines[2] == "ok"
