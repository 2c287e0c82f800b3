"""The wheel: one top-level package holding the compiled plugin library and the shipped model, and an install that
works on its own.

Builds the wheel from this checkout with the project's build backend (scikit-build-core + plugins/CMakeLists.txt;
without build isolation, so no package index is needed) and installs it into a fresh virtual environment. From a
folder outside the repository, that environment (the wheel and numpy only) answers `maskrcnn-deploy --help` and
pools a RoI with the bundled library: no compiler, CMake or cache is involved. Then, with the development
environment's site-packages appended to its path for torch (a ``.pth`` file of plain path lines, which does not run
that folder's own ``.pth`` files, so the checkout's editable-install finder stays off and the wheel's deploy_sdk is
the one imported), `maskrcnn-deploy demo` runs the shipped model, found in the installed package through
importlib.resources, and its detections are compared with the checkout's torchvision model on the same images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict

import numpy as np
import pytest

from deploy_sdk import plugin_build

ROOT = Path(__file__).resolve().parents[1]
#: The shipped model in the repository, and where the wheel puts it (deploy_sdk/models/shapes_r18 links to it).
MODEL_DIR = ROOT / "models" / "shapes_r18"
MODEL_FILES = ("model.safetensors", "MODEL_CARD.md", "eval_heldout200.json", "training_log.json")
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
    # the hand-worked max-mode bin of tests/plugins/test_plugin_roi_align.py
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

# Run in the fresh venv once the development site-packages is on its path: which deploy_sdk and which model it sees.
_MODEL_PROBE = r"""
import json, sys, sysconfig

import torch

import deploy_sdk
from deploy_sdk.conversion.checkpoint import shipped_model_path
from deploy_sdk.conversion.checkpoints import load

print("RESULT " + json.dumps({
    "platlib": sysconfig.get_paths()["platlib"],
    "package": deploy_sdk.__file__,
    "package_path": list(deploy_sdk.__path__),
    "loader": load.__file__,
    "model": str(shipped_model_path()),
    "torch": torch.__file__,
    "editable_finder": any(name.startswith("_editable") for name in sys.modules),
}))
"""


def _nvcc_found() -> bool:
    return bool(shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").is_file())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _result(proc: subprocess.CompletedProcess) -> Dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _from_coco(entries, image_size, decode_rle):
    """Detections from COCO results entries (xywh boxes, RLE masks decoded to bool)."""
    from deploy_sdk import Detections

    boxes = [[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in entries)]
    masks = [decode_rle(e["segmentation"]).astype(bool) for e in entries]
    return Detections(
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.array([e["score"] for e in entries], np.float32),
        labels=np.array([e["category_id"] for e in entries], np.int64),
        masks=np.stack(masks) if masks else np.zeros((0, *image_size), bool),
        image_size=tuple(image_size),
    )


@dataclass
class Install:
    wheel: Path
    build_log: str
    venv: Path
    python: Path
    elsewhere: Path  # a folder outside the repository: every command runs there
    cache: Path  # MASKRCNN_DEPLOY_CACHE: must stay empty (the installed package compiles nothing)
    env: Dict[str, str]

    def run(self, args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(a) for a in args], cwd=self.elsewhere, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Install:
    """The wheel built from this checkout, installed with numpy (nothing else) into a fresh venv."""
    pytest.importorskip("scikit_build_core", reason="the dev extra installs the build backend (scikit-build-core)")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on this machine: the wheel's plugin library cannot be built")
    tmp = tmp_path_factory.mktemp("packaging")
    dist = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(dist),
         "-v", "-C", "build.verbose=true"],  # the compiler command lines: which CUDA architectures were built
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("maskrcnn_deploy-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel),
         f"numpy=={np.__version__}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere, cache = tmp / "elsewhere", tmp / "cache"
    elsewhere.mkdir()
    cache.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "MASKRCNN_DEPLOY_CACHE": str(cache),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    return Install(wheel, build.stdout + build.stderr, venv, python, elsewhere, cache, env)


def test_shipped_model_is_in_the_package_tree_as_a_link_not_a_copy():
    """deploy_sdk/models/shapes_r18 is a symlink to models/shapes_r18, so git holds the weights once and the
    package (wheel, editable install, checkout) finds them at the same place inside deploy_sdk."""
    link = ROOT / "deploy_sdk" / "models" / "shapes_r18"
    assert link.is_symlink(), f"{link} must be a link to models/shapes_r18, not a folder of its own"
    assert os.readlink(link) == "../../models/shapes_r18"  # relative: the checkout can live anywhere
    assert link.resolve() == MODEL_DIR.resolve()
    assert [p.name for p in (ROOT / "deploy_sdk" / "models").iterdir() if p.name != "__pycache__"] == ["shapes_r18"]


def test_shipped_model_is_found_in_the_package_and_a_missing_one_names_the_fix(monkeypatch):
    """Here (an editable install of this checkout) importlib.resources finds the repository's file through the link;
    the installed wheel's case is test_installed_wheel_runs_the_shipped_model_it_carries."""
    pytest.importorskip("torch")
    from deploy_sdk.conversion.checkpoints import load
    from deploy_sdk.errors import CheckpointError

    if (MODEL_DIR / "model.safetensors").is_file():  # absent only while the model is retrained
        assert load.shipped_model_path() == (MODEL_DIR / "model.safetensors").resolve()
    monkeypatch.setattr(load, "SHIPPED_MODEL", PurePosixPath("models/shapes_r18/absent.safetensors"))
    with pytest.raises(CheckpointError, match=r"absent\.safetensors is missing from the installed package in .*"
                       r"restore models/shapes_r18/.*train_shapes\.py.*or pass the path of a checkpoint"):  # fmt: skip
        load.shipped_model_path()


@pytest.mark.slow
def test_wheel_holds_one_package_with_the_library_and_the_shipped_model(installed):
    wheel = installed.wheel
    assert re.fullmatch(r"maskrcnn_deploy-[^-]+-py3-none-[a-z0-9_]+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = z.read(f"{dist_info}/RECORD").decode()
        manifest = z.read("deploy_sdk/_lib/" + plugin_build.MANIFEST_NAME).decode()
        shipped = {name: _sha256(z.read(f"deploy_sdk/models/shapes_r18/{name}")) for name in MODEL_FILES}
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
    # The shipped model: its four files, byte for byte the repository's, and nothing else of models/.
    assert shipped == {name: _sha256((MODEL_DIR / name).read_bytes()) for name in MODEL_FILES}
    assert {n for n in names if "/models/" in n} == {f"deploy_sdk/models/shapes_r18/{name}" for name in MODEL_FILES}
    assert not [n for n in names if n.startswith(("tests/", "plugins/", "models/")) or "/tests/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("deploy_sdk/benchmarks/results/")]
    # The weights hardly compress: a wheel holding them twice would be about twice their size.
    model_size = (MODEL_DIR / "model.safetensors").stat().st_size
    assert wheel.stat().st_size < model_size + 8 * 2**20, f"{wheel.stat().st_size} bytes"
    # CMake's manifest of the sources the library was built from is what deploy_sdk.plugin_build computes.
    recorded = {name: digest for digest, name in (line.split("  ", 1) for line in manifest.splitlines())}
    assert recorded == plugin_build.source_manifest()


@pytest.mark.slow
def test_installed_wheel_alone_answers_help_and_pools_with_the_bundled_library(installed):
    """The fresh venv holds the wheel and numpy only."""
    assert not list(installed.venv.glob("lib/python*/site-packages/*.pth"))  # nothing of the checkout on the path
    helped = installed.run([installed.venv / "bin" / "maskrcnn-deploy", "--help"])
    assert helped.returncode == 0, helped.stdout[-3000:] + helped.stderr[-3000:]
    assert helped.stdout.startswith("usage: maskrcnn-deploy COMMAND")
    for command in ("demo", "export", "check", "infer", "bench"):  # one per command package, and the main one
        assert re.search(rf"^\s+{command}\s", helped.stdout, re.M), helped.stdout

    result = _result(installed.run([installed.python, "-c", _PROBE]))
    platlib = Path(result["platlib"])
    assert platlib.is_relative_to(installed.venv)
    assert Path(result["package"]) == platlib / "deploy_sdk" / "__init__.py"
    assert Path(result["library"]) == platlib / "deploy_sdk" / "_lib" / "libmaskrcnn_roi_align.so"
    assert result["origin"] == "bundled"
    assert result["avg"] == 7.5 and result["max"] == 3.75
    assert result["levels"] == [0, 3]  # 32 px: below P2's range, clamped to P2; 448 px: log2(448/224) + 4 = P5
    assert Path(result["conversion"]) == platlib / "deploy_sdk" / "conversion" / "__init__.py"
    assert result["bare"] == {"conversion": False, "benchmarks": False, "plugins": False}
    assert os.listdir(installed.cache) == [], "a developer build ran: the installed package must not compile anything"
    # The install-time build takes the CUDA kernels where nvcc is found, for the architectures the developer build
    # compiles (tests/plugins/test_plugin_build.py), as SASS plus PTX for the newest.
    assert result["has_cuda"] == _nvcc_found(), result
    if result["has_cuda"]:
        assert result["cuda_library"] == result["library"]
        for arch in CUDA_ARCHS:
            assert f"sm_{arch}" in installed.build_log, f"sm_{arch} missing from the nvcc command lines of the build"
        assert "compute_90" in installed.build_log
    else:
        assert "built without CUDA" in result["cuda_library"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")  # pycocotools on numpy 2
def test_installed_wheel_runs_the_shipped_model_it_carries(installed):
    """`maskrcnn-deploy demo` in the fresh venv: the model comes from the installed package (importlib.resources),
    its ONNX export runs on ONNX Runtime with the bundled library, and the detections it writes match the
    checkout's torchvision model on the same images."""
    for name in ("torch", "torchvision", "onnx", "onnxruntime", "safetensors", "PIL"):
        pytest.importorskip(name, reason="the demo needs the convert extra (installed by the dev extra)")
    mask_api = pytest.importorskip("pycocotools.mask", reason="decodes the demo's COCO RLE masks")
    import torch
    from PIL import Image

    from deploy_sdk import Detections
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.parity import compare_detections

    # torch and the rest for the fresh venv: the development site-packages, appended after the venv's own.
    (site_packages,) = installed.venv.glob("lib/python*/site-packages")
    pth = site_packages / "zz_development_site_packages.pth"
    pth.write_text(sysconfig.get_paths()["purelib"] + "\n")
    try:
        where = _result(installed.run([installed.python, "-c", _MODEL_PROBE]))
        out = installed.elsewhere / "demo_out"
        demo = installed.run(
            [installed.venv / "bin" / "maskrcnn-deploy", "demo", "--out", out, "--num-images", 2, "--batch-size", 1,
             "--bench-iters", 0],
            timeout=600,
        )  # fmt: skip
    finally:
        pth.unlink()

    # The wheel's deploy_sdk and the model inside it, not the checkout's (whose finder is not even loaded).
    platlib = Path(where["platlib"])
    package = platlib / "deploy_sdk"
    assert Path(where["package"]) == package / "__init__.py" and where["package_path"] == [str(package)]
    assert Path(where["loader"]) == package / "conversion" / "checkpoints" / "load.py"
    assert Path(where["model"]) == package / "models" / "shapes_r18" / "model.safetensors"
    assert not where["editable_finder"]
    assert not Path(where["torch"]).is_relative_to(installed.venv)  # torch did come from the development env
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert f"[1/5] loading {where['model']}\n" in demo.stdout
    assert os.listdir(installed.cache) == [], "a developer build ran: the installed package must not compile anything"

    # The checkout's torchvision model on the demo's input images, one at a time (the demo ran batch 1).
    loaded = load_checkpoint(MODEL_DIR / "model.safetensors")
    results = json.loads((out / "detections.json").read_text())
    inputs = sorted((out / "inputs").glob("image_*.png"))
    assert len(inputs) == 2
    for image_id, path in enumerate(inputs):
        image = np.array(Image.open(path).convert("RGB"))
        with torch.no_grad():
            (ref,) = loaded.model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
        reference = Detections(
            boxes=ref["boxes"].numpy(),
            scores=ref["scores"].numpy(),
            labels=ref["labels"].numpy(),
            masks=ref["masks"][:, 0].numpy(),  # probabilities, pasted into the image
            image_size=image.shape[:2],
        )
        candidate = _from_coco([r for r in results if r["image_id"] == image_id], image.shape[:2], mask_api.decode)
        parity = compare_detections(candidate, reference)
        assert parity.num_reference > 0, f"{path.name}: the reference finds nothing; the comparison would be empty"
        assert parity.ok, f"{path.name}: {parity.summary()}"
