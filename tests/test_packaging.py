"""The wheel: one top-level package, the compiled plugin library inside it, and an install that works on its own.

Builds the wheel from this checkout with the project's build backend (scikit-build-core + plugins/CMakeLists.txt;
without build isolation, so no package index is needed), installs it into a fresh virtual environment and, from a
folder outside the repository, pools a RoI with the bundled library: no compiler, CMake or cache is involved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deploy_sdk import plugin_build

ROOT = Path(__file__).resolve().parents[1]
#: The CUDA architectures plugins/CMakeLists.txt builds by default.
CUDA_ARCHS = ("75", "80", "86", "89", "90")

# Run by the freshly installed SDK in its own venv, from a folder outside the repository.
_PROBE = r"""
import importlib.util, json, os, sys, sysconfig

import numpy as np

import deploy_sdk
from deploy_sdk import PluginError, plugins

path, origin = plugins._locate(False)
features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # value 4y + x: bilinear sampling is exact there
result = {
    "platlib": sysconfig.get_paths()["platlib"],
    "package": deploy_sdk.__file__,
    "library": str(plugins.library_path()),
    "origin": origin,
    "has_cuda": plugins.has_cuda_kernels(),
    # one 1x1 bin over the whole map, half-pixel aligned, 2x2 samples: the mean of the map, 7.5
    "avg": float(plugins.roi_align(features, [[0, 0, 4, 4]], [0], 1, 1.0, 2, True)[0, 0, 0, 0]),
    # the hand-worked max-mode bin of tests/test_plugin_roi_align.py
    "max": float(plugins.roi_align(features, [[0, 0, 3, 3]], [0], 3, 1.0, 2, False, "max")[0, 0, 0, 0]),
    "levels": plugins.level_indices([[0, 0, 32, 32], [0, 0, 448, 448]], [1 / 4, 1 / 8, 1 / 16, 1 / 32]).tolist(),
    "conversion": importlib.util.find_spec("deploy_sdk.conversion").origin,
    "bare": {name: importlib.util.find_spec(name) is not None for name in ("conversion", "benchmarks", "plugins")},
}
try:
    result["cuda_library"] = str(plugins.library_path(cuda=True))
except PluginError as exc:
    result["cuda_library"] = f"PluginError: {exc}"
print("RESULT " + json.dumps(result))
"""


def _nvcc_found() -> bool:
    return bool(shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").is_file())


@pytest.mark.slow
def test_wheel_holds_one_package_with_the_library_and_works_installed(tmp_path):
    pytest.importorskip("scikit_build_core", reason="the dev extra installs the build backend (scikit-build-core)")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on this machine: the wheel's plugin library cannot be built")
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(dist),
         "-v", "-C", "build.verbose=true"],  # the compiler command lines: which CUDA architectures were built
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("maskrcnn_deploy-*.whl")
    assert re.fullmatch(r"maskrcnn_deploy-[^-]+-py3-none-[a-z0-9_]+\.whl", wheel.name), wheel.name

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = z.read(f"{dist_info}/RECORD").decode()
        manifest = z.read("deploy_sdk/_lib/" + plugin_build.MANIFEST_NAME).decode()
    assert {n.split("/")[0] for n in names} == {"deploy_sdk", dist_info}
    assert {line.split(",")[0].split("/")[0] for line in record.splitlines() if line} == {"deploy_sdk", dist_info}
    assert "deploy_sdk/_lib/libmaskrcnn_roi_align.so" in names
    # The two linked top-level folders are inside the package, as the modules they are imported as.
    for folder in ("conversion", "benchmarks"):
        expected = {f"deploy_sdk/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
                    for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}  # fmt: skip
        assert expected and expected <= names, sorted(expected - names)
    own = {f"deploy_sdk/{p.relative_to(ROOT / 'deploy_sdk').as_posix()}" for p in (ROOT / "deploy_sdk").glob("*.py")}
    assert own <= names, sorted(own - names)
    assert not [n for n in names if n.startswith(("tests/", "plugins/", "models/")) or "/tests/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("deploy_sdk/benchmarks/results/")]
    # CMake's manifest of the sources the library was built from is what deploy_sdk.plugin_build computes.
    recorded = {name: digest for digest, name in (line.split("  ", 1) for line in manifest.splitlines())}
    assert recorded == plugin_build.source_manifest()

    # A fresh venv holding the wheel and numpy only (the probe needs nothing else).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel),
         f"numpy=={np.__version__}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    cache = tmp_path / "cache"
    elsewhere.mkdir()
    cache.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "MASKRCNN_DEPLOY_CACHE": str(cache)}
    probe = subprocess.run([str(python), "-c", _PROBE], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    lines = [line for line in probe.stdout.splitlines() if line.startswith("RESULT ")]
    assert probe.returncode == 0 and lines, probe.stdout[-3000:] + probe.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])

    platlib = Path(result["platlib"])
    assert Path(result["package"]) == platlib / "deploy_sdk" / "__init__.py"
    assert Path(result["library"]) == platlib / "deploy_sdk" / "_lib" / "libmaskrcnn_roi_align.so"
    assert result["origin"] == "bundled"
    assert result["avg"] == 7.5 and result["max"] == 3.75
    assert result["levels"] == [0, 3]  # 32 px: below P2's range, clamped to P2; 448 px: log2(448/224) + 4 = P5
    assert Path(result["conversion"]) == platlib / "deploy_sdk" / "conversion" / "__init__.py"
    assert result["bare"] == {"conversion": False, "benchmarks": False, "plugins": False}
    assert os.listdir(cache) == [], "a developer build ran: the installed package must not compile anything"
    assert "building the RoIAlign plugin library" not in probe.stderr
    # The install-time build takes the CUDA kernels where nvcc is found, for the architectures the developer build
    # compiles (tests/test_plugin_build.py), as SASS plus PTX for the newest.
    assert result["has_cuda"] == _nvcc_found(), result
    if result["has_cuda"]:
        assert result["cuda_library"] == result["library"]
        log = build.stdout + build.stderr
        for arch in CUDA_ARCHS:
            assert f"sm_{arch}" in log, f"sm_{arch} missing from the nvcc command lines of the wheel build"
        assert "compute_90" in log
    else:
        assert "built without CUDA" in result["cuda_library"]
