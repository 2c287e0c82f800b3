"""The developer fallback: build the RoIAlign plugin library from a source checkout's ``plugins/`` at run time.

An installed SDK ships the library inside the package (``deploy_sdk/_lib/``, compiled by ``pip install`` through
scikit-build-core and plugins/CMakeLists.txt); :mod:`deploy_sdk.plugins` finds it and needs nothing from here. This
module is what :func:`deploy_sdk.plugins.library_path` falls back to in a source checkout, when the installed
library is missing, lacks a part that was asked for (CUDA, the TensorRT plugins), or was built from other sources
than those now in ``plugins/`` (edited after ``pip install -e .``), and what ``tensorrt_include_dir=`` asks for:

* :func:`jit_library_path` runs CMake (or, without CMake, the C++ compiler on the CPU part) on first use into
  ``~/.cache/maskrcnn-deploy/<hash of the sources and options>/`` (or ``$MASKRCNN_DEPLOY_CACHE/<hash>/``, or
  ``$XDG_CACHE_HOME/maskrcnn-deploy/<hash>/``) under a file lock, so concurrent processes build it once;
* a cached library is handed out (and so loaded) only after its sha256 matches the one recorded at build time and
  its folders are private to the current user;
* :func:`source_manifest` is the sha256 of every source file, what the install-time build records beside the
  bundled library (``plugin_sources.sha256``) so that a stale one is noticed.

It needs a C++ compiler and CMake 3.18+ (and nvcc for the CUDA part) on the machine that runs it; a production
host installed from a wheel never gets here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

from deploy_sdk.atomic_file import atomic_path, file_sha256
from deploy_sdk.errors import PluginError

__all__ = [
    "LIBRARY_NAME",
    "MANIFEST_NAME",
    "source_dir",
    "has_sources",
    "source_manifest",
    "read_manifest",
    "jit_library_path",
    "find_tensorrt_headers",
    "cache_root",
]

#: File name of the library, bundled (deploy_sdk/_lib/) and cached alike.
LIBRARY_NAME = "libmaskrcnn_roi_align.so"
#: Beside the bundled library: ``<sha256>  <path relative to plugins/>`` per source file it was built from.
MANIFEST_NAME = "plugin_sources.sha256"
#: Suffix of the file beside a cached library that records its sha256 (``sha256sum`` format).
_HASH_SUFFIX = ".sha256"
#: The files of plugins/ that make up a build: hashed into the cache key and into the manifest (plugins/CMakeLists.txt
#: globs the same suffixes).
_SOURCE_SUFFIXES = {".h", ".cpp", ".cu", ".txt"}

#: The checkout's plugins/ folder (beside the deploy_sdk/ folder). An installed wheel has none: site-packages holds
#: the package only.
_SOURCE_DIR = Path(__file__).resolve().parents[1] / "plugins"
_build_lock = threading.Lock()


def source_dir() -> Path:
    """Where a source checkout keeps the plugin sources (whether or not they are there: :func:`has_sources`)."""
    return _SOURCE_DIR


def has_sources() -> bool:
    """True in a source checkout (editable install, or the repository on PYTHONPATH) with this SDK's plugins/."""
    return (_SOURCE_DIR / "CMakeLists.txt").is_file() and (_SOURCE_DIR / "roi_align" / "roiAlignCApi.h").is_file()


def cache_root() -> Path:
    """The folder of the developer builds: $MASKRCNN_DEPLOY_CACHE, else $XDG_CACHE_HOME or ~/.cache /maskrcnn-deploy."""
    if os.environ.get("MASKRCNN_DEPLOY_CACHE"):
        return Path(os.environ["MASKRCNN_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maskrcnn-deploy"


def _source_files() -> List[Path]:
    if not has_sources():
        raise PluginError(
            f"the plugin sources are not at {_SOURCE_DIR} (an install without the plugins/ folder); "
            "set MASKRCNN_DEPLOY_PLUGIN_LIBRARY to a prebuilt libmaskrcnn_roi_align.so"
        )
    return sorted(p for p in _SOURCE_DIR.rglob("*") if p.is_file() and p.suffix in _SOURCE_SUFFIXES)


def source_manifest() -> Dict[str, str]:
    """{path relative to plugins/ (posix): sha256} of every source file in the checkout."""
    return {p.relative_to(_SOURCE_DIR).as_posix(): file_sha256(p) for p in _source_files()}


def read_manifest(path: Path) -> Optional[Dict[str, str]]:
    """A ``sha256sum``-format manifest as {relative path: sha256}; None when missing, unreadable or malformed."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    manifest: Dict[str, str] = {}
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or any(ch not in "0123456789abcdef" for ch in digest.lower()):
            return None
        manifest[name] = digest.lower()
    return manifest


def _build_key(cuda: bool, trt_include: str) -> str:
    h = hashlib.sha256()
    for path in _source_files():
        h.update(str(path.relative_to(_SOURCE_DIR)).encode())
        h.update(path.read_bytes())
    h.update(f"cuda={int(cuda)};trt={trt_include};py={sys.platform}".encode())
    return h.hexdigest()[:16]


def jit_library_path(cuda: bool = False, tensorrt_include_dir: Optional[str] = None) -> Path:
    """The developer build of the library from plugins/, compiled on first use and cached by a hash of the sources.

    ``cuda``: False = CPU-only library (fast to build); True = also the CUDA kernel and, when TensorRT headers are
    found (``tensorrt_include_dir`` or $TENSORRT_INCLUDE_DIR or the system include folders), the TensorRT plugins.
    Raises PluginError when there are no sources (an installed wheel) or the library cannot be built (no
    compiler, no nvcc when CUDA was asked, build error).
    """
    _source_files()  # no sources: a clear PluginError before any cache folder is made
    # The TensorRT plugin needs the CUDA launcher. The header directory is resolved here, not by CMake, so that it
    # is part of the cache key: installing TensorRT later gives a new build instead of the stale CUDA-only one.
    trt_include = find_tensorrt_headers(tensorrt_include_dir) if cuda else ""
    root = cache_root()
    out_dir = root / _build_key(cuda, trt_include)
    target = out_dir / LIBRARY_NAME
    with _build_lock:  # threads of this process
        # Whatever sits in these folders ends up loaded into this process (ctypes, TensorRT): they must be ours and
        # writable by nobody else before anything in them is trusted, the lock file included.
        _private_folder(root)
        _private_folder(out_dir)
        if _cached_library_problem(target) is None:
            return target
        with open(out_dir / ".lock", "w") as lock_file:
            _lock_file(lock_file)  # other processes (parallel test workers, CI jobs)
            problem = _cached_library_problem(target)  # another process may have built it meanwhile
            if problem is not None:
                if target.exists():
                    print(f"maskrcnn-deploy: {problem}; rebuilding it", file=sys.stderr)
                _install(_build(out_dir, cuda, trt_include), target)
    return target


def _private_folder(path: Path) -> None:
    """Create ``path`` readable and writable by the current user only, or check that an existing one is ours."""
    if not path.exists():
        # Mode 0o700 whatever the umask (which can only remove bits): a umask of 002 would otherwise make the
        # folder group-writable and the check below would refuse the SDK's own cache. Parents are created with
        # the default mode; they are not ours to police.
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created by a concurrent process: checked below like any existing folder
    if not path.is_dir():
        raise PluginError(
            f"the plugin library cache folder {path} is not a folder; delete it or set MASKRCNN_DEPLOY_CACHE"
        )
    _check_private(path, "folder")


def _check_private(path: Path, what: str) -> None:
    """Raise PluginError unless ``path`` is owned by the current user and not writable by group or others."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PluginError(f"cannot inspect the plugin library cache {what} {path}: {exc}") from exc
    problem = ""
    getuid = getattr(os, "getuid", None)  # absent on Windows, where POSIX owners and modes do not apply
    if getuid is not None and st.st_uid != getuid():
        problem = f"is owned by uid {st.st_uid}, not by the current user (uid {getuid()})"
    elif getuid is not None and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        folder = path if what == "folder" else path.parent
        raise PluginError(
            f"the plugin library cache {what} {path} {problem}: someone else could replace the library this process "
            f"would load, so it is not used. Fix: delete {folder} (the library is rebuilt on next use), or "
            f"'chmod go-w {path}' if you trust its contents, or set MASKRCNN_DEPLOY_CACHE to a folder only you "
            "can write"
        )


def _recorded_sha256(target: Path) -> Optional[str]:
    """The sha256 written beside ``target`` when it was built (first field of a ``sha256sum`` line), or None."""
    try:
        fields = (target.parent / (target.name + _HASH_SUFFIX)).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        return None
    return digest


def _cached_library_problem(target: Path) -> Optional[str]:
    """None when ``target`` is a library this SDK built and nobody changed since; else why it must be rebuilt.

    Raises PluginError when the file itself is not private (not ours, or group/world-writable): that is not
    something to paper over with a rebuild.
    """
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return f"{target} is not built yet"
    if not stat.S_ISREG(mode):
        return f"{target} is not a regular file"
    _check_private(target, "library")
    recorded = _recorded_sha256(target)
    if recorded is None:
        return f"{target} has no recorded sha256 ({target.name}{_HASH_SUFFIX} is missing or unreadable)"
    try:
        actual = file_sha256(target)
    except OSError as exc:
        return f"{target} cannot be read ({exc})"
    if actual != recorded:
        return f"{target} does not match the sha256 recorded when it was built ({actual} != {recorded})"
    return None


def _install(built: Path, target: Path) -> None:
    """Copy the freshly built library to ``target`` and record its sha256 beside it (both written atomically)."""
    # Explicit modes: the temporary files get 0666 minus the umask, and a umask of 002 would leave a group-writable
    # library that _check_private() then refuses.
    with atomic_path(target) as tmp:
        shutil.copyfile(built, tmp)
        os.chmod(tmp, 0o644)
        digest = file_sha256(tmp)  # of the very bytes installed
    with atomic_path(target.parent / (target.name + _HASH_SUFFIX)) as tmp:
        tmp.write_text(f"{digest}  {target.name}\n")
        os.chmod(tmp, 0o644)


#: Where TensorRT's headers usually are; plugins/CMakeLists.txt searches the same folders.
_TENSORRT_HEADER_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                         "/usr/local/TensorRT/include", "/usr/local/tensorrt/include")  # fmt: skip


def find_tensorrt_headers(explicit: Optional[str] = None) -> str:
    """The folder holding NvInferRuntime.h: ``explicit``, else the first entry of $TENSORRT_INCLUDE_DIR, else the
    usual system folders; "" when there is none. An ``explicit`` folder without the header is a PluginError."""
    candidates = [explicit] if explicit else []
    candidates += [d for d in os.environ.get("TENSORRT_INCLUDE_DIR", "").split(os.pathsep) if d][:1]
    if explicit and not (Path(explicit) / "NvInferRuntime.h").is_file():
        raise PluginError(f"no NvInferRuntime.h in tensorrt_include_dir={explicit}; pass TensorRT's include/ folder")
    for d in candidates + list(_TENSORRT_HEADER_DIRS):
        if (Path(d) / "NvInferRuntime.h").is_file():
            return str(Path(d).resolve())
    return ""


def _lock_file(handle) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no concurrent builds there
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed


def _nvcc() -> Optional[str]:
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


def _build(out_dir: Path, cuda: bool, trt_include: str) -> Path:
    """Compile the library in ``out_dir``; returns the built file (jit_library_path installs it)."""
    what = "CPU + CUDA" + (" + TensorRT" if trt_include else "") if cuda else "CPU"
    print(
        f"maskrcnn-deploy: building the RoIAlign plugin library ({what}) from {_SOURCE_DIR} into {out_dir} "
        "(developer build, first use)",
        file=sys.stderr,
    )
    log_path = out_dir / "build.log"
    build_dir = out_dir / "build"
    if cuda and not _nvcc():
        raise PluginError("the CUDA plugin library was asked for but nvcc is not found; install the CUDA toolkit")
    if shutil.which("cmake"):
        cmd_sets = [
            [
                "cmake", "-S", str(_SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                f"-DMRD_WITH_CUDA={'ON' if cuda else 'OFF'}", f"-DTENSORRT_INCLUDE_DIR={trt_include}",
            ],
            ["cmake", "--build", str(build_dir), "-j", str(min(4, os.cpu_count() or 1))],
        ]  # fmt: skip
        if cuda:
            cmd_sets[1].append("--verbose")  # keeps the nvcc -gencode lines in build.log: proof of the archs built
        if cuda and not shutil.which("nvcc"):
            cmd_sets[0].append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
        built = build_dir / LIBRARY_NAME
    elif not cuda and (shutil.which("c++") or shutil.which("g++")):
        # No cmake: the CPU part is two translation units, compile them directly.
        cxx = str(shutil.which("c++") or shutil.which("g++"))
        src = _SOURCE_DIR / "roi_align"
        built = out_dir / f"{LIBRARY_NAME}.direct"
        cmd_sets = [[
            cxx, "-std=c++17", "-O3", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
            str(src / "roiAlignCpu.cpp"), str(src / "roiAlignCApi.cpp"), "-o", str(built),
        ]]  # fmt: skip
    else:
        raise PluginError(
            "cannot build the RoIAlign plugin library: no C++ compiler/cmake found (need g++ or clang++ and cmake "
            "3.18+; e.g. apt-get install g++ cmake), or set MASKRCNN_DEPLOY_PLUGIN_LIBRARY to a prebuilt library"
        )
    with open(log_path, "w") as log:
        for cmd in cmd_sets:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                break
    if result.returncode != 0 or not built.is_file():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise PluginError(f"building the RoIAlign plugin library failed; full log: {log_path}\n{tail}")
    return built
