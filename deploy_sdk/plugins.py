"""The RoIAlign plugin library: its op names and fields, where the compiled library is, and Python access to it.

The C++/CUDA sources live in ``plugins/`` (see plugins/README.md). This module

* names the ONNX ops and mirrors the plugin's table of their fields (:data:`OP_FIELDS`: names, kinds, ops,
  defaults; the C++ table is ``MRD_ROI_ALIGN_FIELDS`` in plugins/roi_align/roiAlignOp.h and a test compares the
  two through the library's C ABI), so the exporter writes exactly what the TensorRT plugin reads;
* finds the shared library (:func:`library_path`): the one ``pip install`` compiled into the package
  (``deploy_sdk/_lib/``), or ``$MASKRCNN_DEPLOY_PLUGIN_LIBRARY``; only in a source checkout, when the installed one
  is missing, stale, of another C ABI version or lacks a part that was asked for, the developer build of
  :mod:`deploy_sdk.plugin_build` (CMake at run time, cached and verified);
* calls the library's CPU implementation on numpy arrays (:func:`roi_align`, :func:`multilevel_roi_align`) and its
  CUDA launchers on torch CUDA tensors (:func:`roi_align_cuda`, :func:`multilevel_roi_align_cuda`; the first two
  also take torch tensors on any device and go to the right one) through the library's C ABI: one
  :class:`RoiAlignArgs` (``MrdRoiAlignArgs``) per call. The CUDA entries launch the kernel the TensorRT plugin
  launches, built from the same struct. The CPU entries run the CPU fast path by default (``implementation="fast"``:
  the math header's taps, weight products and reduction in a loop order of its own, RoIs over threads);
  ``implementation="kernel"`` runs the kernel's per-element code on the CPU (single-threaded).

Boxes are always x1 y1 x2 y2 in input-image pixels; a level's spatial scale maps them onto that level.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from deploy_sdk import plugin_build
from deploy_sdk.errors import DeploySdkError, PluginError

__all__ = [
    "PLUGIN_DOMAIN",
    "PLUGIN_VERSION",
    "MULTILEVEL_OP",
    "SINGLE_LEVEL_OP",
    "OpField",
    "OP_FIELDS",
    "op_fields",
    "field_default",
    "MULTILEVEL_FIELDS",
    "SINGLE_LEVEL_FIELDS",
    "FIELD_OUTPUT_HEIGHT",
    "FIELD_OUTPUT_WIDTH",
    "FIELD_SAMPLING_RATIO",
    "FIELD_SPATIAL_SCALES",
    "FIELD_ALIGNED",
    "FIELD_MODE",
    "FIELD_CANONICAL_SCALE",
    "FIELD_CANONICAL_LEVEL",
    "FIELD_SPATIAL_SCALE",
    "FIELD_COORDINATE_TRANSFORMATION_MODE",
    "library_path",
    "bundled_library",
    "tensorrt_plugin_library",
    "roi_align",
    "multilevel_roi_align",
    "level_indices",
    "roi_align_cuda",
    "multilevel_roi_align_cuda",
    "has_cuda_kernels",
    "MAX_SAMPLING_RATIO",
    "MAX_LEVELS",
    "RoiAlignArgs",
]

#: A numpy array, or a torch tensor on any device (the RoIAlign entries answer in kind; torch is never imported here).
ArrayOrTensor = Any

# ----------------------------------------------------------------------------------------------- op contract
#: ONNX domain of the custom nodes; the TensorRT plugin is found by op name (domain-free) in its registry.
PLUGIN_DOMAIN = "maskrcnn_deploy"
#: Plugin version string of both creators.
PLUGIN_VERSION = "1"
#: inputs rois [B, R, 4] then P2..P5 [B, C, Hl, Wl]; output [B, R, C, output_height, output_width].
MULTILEVEL_OP = "MultiLevelRoIAlign"
#: inputs X [N, C, H, W], rois [R, 4], batch_indices [R] (int32/int64); output [R, C, output_height, output_width].
SINGLE_LEVEL_OP = "RoIAlign"


@dataclass(frozen=True)
class OpField:
    """One field (node attribute) of the ops: the mirror of one row of ``MRD_ROI_ALIGN_FIELDS`` in
    plugins/roi_align/roiAlignOp.h. ``kind``: "int", "float", "floats" or "string" (the ONNX attribute type in lower
    case). ``ops``: the op names that take it. ``default``: the value a node without the field gets; None = the
    field is required."""

    name: str
    kind: str
    ops: Tuple[str, ...]
    default: Union[int, float, str, None]


_BOTH = (SINGLE_LEVEL_OP, MULTILEVEL_OP)
#: THE Python copy of the ops' field table, row for row the C++ one (tests/deploy_sdk/test_plugin_lookup.py reads the
#: library's table through its C ABI and compares). Adding a field: a row here and in roiAlignOp.h.
OP_FIELDS: Tuple[OpField, ...] = (
    OpField("output_height", "int", (SINGLE_LEVEL_OP,), 1),
    OpField("output_height", "int", (MULTILEVEL_OP,), 7),
    OpField("output_width", "int", (SINGLE_LEVEL_OP,), 1),
    OpField("output_width", "int", (MULTILEVEL_OP,), 7),
    # 0 = adaptive: ceil(roi_size / out_size) samples per bin, per RoI and axis
    OpField("sampling_ratio", "int", _BOTH, 0),
    # one per level: 1/4, 1/8, 1/16, 1/32 for P2..P5
    OpField("spatial_scales", "floats", (MULTILEVEL_OP,), None),
    OpField("spatial_scale", "float", (SINGLE_LEVEL_OP,), 1.0),
    # 1 = half-pixel offset (ROIAlignV2), 0 = legacy (torchvision Mask R-CNN)
    OpField("aligned", "int", (MULTILEVEL_OP,), 0),
    # "avg" or "max" (max of the bilinearly interpolated samples)
    OpField("mode", "string", _BOTH, "avg"),
    OpField("canonical_scale", "float", (MULTILEVEL_OP,), 224.0),
    OpField("canonical_level", "int", (MULTILEVEL_OP,), 4),
    # "half_pixel" (aligned) | "output_half_pixel" (legacy); ONNX RoiAlign-16's attribute
    OpField("coordinate_transformation_mode", "string", (SINGLE_LEVEL_OP,), "half_pixel"),
)


def op_fields(op: str) -> Tuple[OpField, ...]:
    """The fields of ``op`` (:data:`SINGLE_LEVEL_OP` or :data:`MULTILEVEL_OP`) in the plugin's order."""
    if op not in _BOTH:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(_BOTH)}")
    return tuple(f for f in OP_FIELDS if op in f.ops)


def field_default(op: str, name: str) -> Any:
    """The default of field ``name`` of ``op`` (None for a required field); KeyError for a field ``op`` lacks."""
    for f in op_fields(op):
        if f.name == name:
            return f.default
    raise KeyError(f"{op} has no field {name!r}")


#: Attribute names of the multi-level node, in the plugin's order.
MULTILEVEL_FIELDS = tuple(f.name for f in op_fields(MULTILEVEL_OP))
#: Attribute names of the single-level node (those of ONNX RoiAlign-16).
SINGLE_LEVEL_FIELDS = tuple(f.name for f in op_fields(SINGLE_LEVEL_OP))

#: The level mapping's defaults; a one-level call passes them too (the mapping does not apply to one level).
_LEVEL_MAPPING_DEFAULTS: Tuple[float, int] = (
    field_default(MULTILEVEL_OP, "canonical_scale"),
    field_default(MULTILEVEL_OP, "canonical_level"),
)

#: Names of single fields, for callers that spell one out (each is a row of OP_FIELDS; the test checks it).
FIELD_OUTPUT_HEIGHT = "output_height"
FIELD_OUTPUT_WIDTH = "output_width"
FIELD_SAMPLING_RATIO = "sampling_ratio"
FIELD_SPATIAL_SCALES = "spatial_scales"
FIELD_ALIGNED = "aligned"
FIELD_MODE = "mode"
FIELD_CANONICAL_SCALE = "canonical_scale"
FIELD_CANONICAL_LEVEL = "canonical_level"
FIELD_SPATIAL_SCALE = "spatial_scale"
FIELD_COORDINATE_TRANSFORMATION_MODE = "coordinate_transformation_mode"

_MODES = {"avg": 0, "max": 1}
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}
_INDEX_CODES = {np.dtype(np.int32): 32, np.dtype(np.int64): 64}
_STATUS_INVALID_ARGUMENT = 100000
_ABI_VERSION = 2  # MRD_ABI_VERSION of plugins/roi_align/roiAlignCApi.h
_INT32_MAX = 2**31 - 1

#: Most samples per bin and axis (``sampling_ratio``); the adaptive count is capped there too. The same number as
#: ``kMaxSamplingRatio`` in plugins/roi_align/roiAlignMath.h (tests/plugins/test_plugin_roi_align.py keeps them equal).
MAX_SAMPLING_RATIO = 1024

# --------------------------------------------------------------------------------------------- finding it

#: Where the library came from (:func:`library_path`'s lookup order).
ORIGIN_OVERRIDE = "MASKRCNN_DEPLOY_PLUGIN_LIBRARY"
ORIGIN_BUNDLED = "bundled"
ORIGIN_DEVELOPER_BUILD = "developer build"

_loaded: Dict[bool, ctypes.CDLL] = {}
_capabilities_of: Dict[str, Tuple[bool, bool]] = {}
_noted: Set[str] = set()


def _want_cuda(cuda: Optional[bool]) -> bool:
    if cuda is None:
        return os.environ.get("MASKRCNN_DEPLOY_BUILD_CUDA", "") == "1"
    return bool(cuda)


def _package_dirs() -> List[str]:
    import deploy_sdk

    return [str(d) for d in getattr(deploy_sdk, "__path__", [])]


def bundled_library() -> Optional[Path]:
    """The library installed with the package, ``deploy_sdk/_lib/libmaskrcnn_roi_align.so``, or None.

    A wheel install has it beside this module. An editable install (``pip install -e .``) keeps the Python files in
    the checkout and the compiled library in site-packages; both folders are on the package's ``__path__``.
    """
    for folder in _package_dirs():
        path = Path(folder) / "_lib" / plugin_build.LIBRARY_NAME
        if path.is_file():
            return path
    return None


def _capabilities(path: Path) -> Tuple[bool, bool]:
    """(has CUDA kernels, has TensorRT plugins) of the library at ``path``, asked through its C ABI."""
    key = str(path)
    if key not in _capabilities_of:
        try:
            lib = ctypes.CDLL(key)
            has_cuda, has_trt = lib.mrd_has_cuda, lib.mrd_has_tensorrt
        except (OSError, AttributeError) as exc:
            raise PluginError(
                f"cannot load the RoIAlign plugin library {path}: {exc}; reinstall maskrcnn-deploy "
                "(pip install --force-reinstall --no-deps from its source)"
            ) from exc
        has_cuda.restype = has_trt.restype = ctypes.c_int32
        _capabilities_of[key] = (bool(has_cuda()), bool(has_trt()))
    return _capabilities_of[key]


def _abi_version(lib: ctypes.CDLL) -> Optional[int]:
    """The library's ``mrd_abi_version()``, or None when it has no such symbol (reported when its symbols are
    bound, with the fix for where it came from)."""
    try:
        fn = lib.mrd_abi_version
    except AttributeError:
        return None
    fn.argtypes, fn.restype = [], ctypes.c_int32
    return int(fn())


def _abi_problem(path: Path) -> str:
    """ "" when the library at ``path`` speaks this SDK's C ABI (or does not say), else why not."""
    try:
        version = _abi_version(ctypes.CDLL(str(path)))
    except OSError as exc:
        return f"it cannot be loaded ({exc})"
    if version is None or version == _ABI_VERSION:
        return ""
    return f"it has C ABI version {version} and this SDK needs {_ABI_VERSION} (a library of another SDK version)"


def _bundled_problem(path: Path, cuda: bool, checkout: bool) -> str:
    """Why the bundled library at ``path`` does not serve this request ("" when it does).

    In a checkout it must have been built from the sources now in plugins/ (its manifest, written by the
    install-time build, lists their sha256): after an edit, the developer build has the change and it does not.
    """
    if checkout:
        recorded = plugin_build.read_manifest(path.parent / plugin_build.MANIFEST_NAME)
        if recorded is None:
            return f"it has no readable record of the sources it was built from ({plugin_build.MANIFEST_NAME})"
        current = plugin_build.source_manifest()
        if recorded != current:
            changed = sorted(n for n in set(recorded) | set(current) if recorded.get(n) != current.get(n))
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            return f"{plugin_build.source_dir()} changed since it was built ({', '.join(changed[:3])}{more})"
    abi = _abi_problem(path)
    if abi:
        return abi
    if cuda:
        has_cuda, has_trt = _capabilities(path)
        if not has_cuda:
            return "it was built without CUDA (no nvcc was found when maskrcnn-deploy was installed)"
        if checkout and not has_trt and plugin_build.find_tensorrt_headers():
            return "it was built without the TensorRT plugins, and TensorRT headers are found now"
    return ""


def _locate(cuda: bool, tensorrt_include_dir: Optional[str] = None) -> Tuple[Path, str]:
    """(path, origin) of the library for this request; see :func:`library_path`."""
    override = os.environ.get("MASKRCNN_DEPLOY_PLUGIN_LIBRARY")
    if override:
        path = Path(override)
        if not path.is_file():
            raise PluginError(f"MASKRCNN_DEPLOY_PLUGIN_LIBRARY={override} does not exist")
        return path, ORIGIN_OVERRIDE
    checkout = plugin_build.has_sources()
    bundled = None
    if tensorrt_include_dir is not None:
        why_not = f"tensorrt_include_dir={tensorrt_include_dir} asks for a build against those headers"
    else:
        bundled = bundled_library()
        if bundled is None:
            why_not = "no library was installed with the package (deploy_sdk/_lib/)"
        else:
            why_not = _bundled_problem(bundled, cuda, checkout)
            if not why_not:
                return bundled, ORIGIN_BUNDLED
    if checkout:
        if bundled is not None and str(bundled) not in _noted:
            _noted.add(str(bundled))
            print(
                f"maskrcnn-deploy: not using the installed plugin library {bundled}: {why_not}; using a developer "
                f"build of {plugin_build.source_dir()} (reinstall, e.g. `pip install -e .`, to update the installed "
                "one)",
                file=sys.stderr,
            )
        return plugin_build.jit_library_path(cuda, tensorrt_include_dir), ORIGIN_DEVELOPER_BUILD
    raise PluginError(
        f"no usable RoIAlign plugin library: {why_not}. Reinstall maskrcnn-deploy from its source on a machine with "
        "a C++ compiler and CMake (and the CUDA toolkit for the CUDA kernels, TensorRT headers or "
        "TENSORRT_INCLUDE_DIR for the TensorRT plugins): the library is compiled at install time; or set "
        "MASKRCNN_DEPLOY_PLUGIN_LIBRARY to a library built from plugins/ (see plugins/README.md)"
    )


def library_path(cuda: Optional[bool] = None, tensorrt_include_dir: Optional[str] = None) -> Path:
    """Path of the compiled plugin library. Found in this order:

    1. ``$MASKRCNN_DEPLOY_PLUGIN_LIBRARY``, if set: that file, as given;
    2. the library installed with the package (:func:`bundled_library`, compiled by ``pip install``) when it has
       what was asked for: the CUDA kernels for ``cuda=True`` (and, in a source checkout, the TensorRT plugins
       when TensorRT headers are found) and, in a source checkout, was built from the sources now in plugins/;
    3. in a source checkout: the developer build (:func:`deploy_sdk.plugin_build.jit_library_path`), compiled on
       first use into ``~/.cache/maskrcnn-deploy/`` and cached by a hash of the sources.

    ``cuda``: False = any build (every one has the CPU implementation the numpy functions need); True = one with
    the CUDA kernel and, when it was built where TensorRT headers were found, the TensorRT plugins: the library
    for ``IPluginRegistry.load_library`` or ``trtexec --dynamicPlugins``. None = $MASKRCNN_DEPLOY_BUILD_CUDA == "1".
    ``tensorrt_include_dir``: build against the TensorRT headers in that folder (a developer build, so a source
    checkout is needed).

    Raises PluginError when no library serves the request (an install without CUDA asked for CUDA) or the
    developer build fails (no compiler, no nvcc when CUDA was asked, build error).
    """
    return _locate(_want_cuda(cuda), tensorrt_include_dir)[0]


def tensorrt_plugin_library() -> Path:
    """The library with the TensorRT plugins (CPU + CUDA + TensorRT build) for ``IPluginRegistry.load_library``.

    Raises PluginError naming the fix when it was built without TensorRT headers (the pip ``tensorrt`` wheels have
    none: install the TensorRT development headers or point $TENSORRT_INCLUDE_DIR at a TensorRT include/, then
    reinstall).
    """
    path = library_path(cuda=True)
    if not _library(cuda=True).mrd_has_tensorrt():
        raise PluginError(
            f"{path} was built without the TensorRT plugins because no TensorRT headers (NvInferRuntime.h) were "
            "found; install them (e.g. apt-get install libnvinfer-headers-dev) or set TENSORRT_INCLUDE_DIR, then "
            "reinstall maskrcnn-deploy from its source (a source checkout builds them on next use)"
        )
    return path


# ----------------------------------------------------------------------------------------------- the C ABI

MAX_LEVELS = 8  # MRD_MAX_LEVELS (roiAlignCApi.h) = kMaxLevels (roiAlignMath.h)
_IMPLEMENTATIONS = {"fast": 0, "kernel": 1}  # MRD_IMPLEMENTATION_FAST / MRD_IMPLEMENTATION_KERNEL


class RoiAlignArgs(ctypes.Structure):
    """``MrdRoiAlignArgs`` of plugins/roi_align/roiAlignCApi.h, member for member (names, order, types): the one
    argument of ``mrd_roi_align_cpu`` / ``mrd_roi_align_cuda``. tests/deploy_sdk/test_plugin_lookup.py compares this
    layout with the library's (``mrd_args_field``)."""

    _fields_ = [
        ("dtype", ctypes.c_int32),
        ("num_levels", ctypes.c_int32),
        ("features", ctypes.c_void_p * MAX_LEVELS),
        ("heights", ctypes.c_int32 * MAX_LEVELS),
        ("widths", ctypes.c_int32 * MAX_LEVELS),
        ("spatial_scales", ctypes.c_float * MAX_LEVELS),
        ("batch", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("rois", ctypes.c_void_p),
        ("rois_dtype", ctypes.c_int32),
        ("index_type", ctypes.c_int32),
        ("batch_indices", ctypes.c_void_p),
        ("rois_per_image", ctypes.c_int64),
        ("num_rois", ctypes.c_int64),
        ("out_h", ctypes.c_int32),
        ("out_w", ctypes.c_int32),
        ("sampling_ratio", ctypes.c_int32),
        ("aligned", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("canonical_scale", ctypes.c_float),
        ("canonical_level", ctypes.c_int32),
        ("implementation", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("out", ctypes.c_void_p),
        ("stream", ctypes.c_void_p),
    ]


def _call_args(
    dtype: int,
    features: Sequence[int],
    shapes: Sequence[Tuple[int, int]],
    scales: Sequence[float],
    batch: int,
    channels: int,
    rois: int,
    rois_dtype: int,
    batch_indices: Optional[int],
    index_type: int,
    rois_per_image: int,
    num_rois: int,
    out_hw: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    canonical: Tuple[float, int],
    out: int,
    implementation: str = "kernel",
    num_threads: int = 0,
    stream: Optional[int] = None,
) -> RoiAlignArgs:
    """One :class:`RoiAlignArgs` from checked values (pointers as ints)."""
    if len(features) > MAX_LEVELS:
        raise DeploySdkError(f"at most {MAX_LEVELS} feature levels, got {len(features)}")
    a = RoiAlignArgs()
    a.dtype, a.num_levels = dtype, len(features)
    for i, (pointer, (h, w), scale) in enumerate(zip(features, shapes, scales)):
        a.features[i], a.heights[i], a.widths[i], a.spatial_scales[i] = pointer, int(h), int(w), float(scale)
    a.batch, a.channels = batch, channels
    a.rois, a.rois_dtype = rois, rois_dtype
    a.batch_indices, a.index_type = batch_indices, index_type
    a.rois_per_image, a.num_rois = rois_per_image, num_rois
    a.out_h, a.out_w = out_hw
    a.sampling_ratio, a.aligned, a.mode = sampling_ratio, int(bool(aligned)), _mode_code(mode)
    a.canonical_scale, a.canonical_level = canonical
    a.implementation = _implementation_code(implementation)
    a.num_threads = num_threads
    a.out, a.stream = out, stream
    return a


def _library(cuda: bool = False) -> ctypes.CDLL:
    # Keyed by the variant, not the path: hashing the sources on every roi_align() call would cost more than
    # pooling a few RoIs.
    lib = _loaded.get(cuda)
    if lib is not None:
        return lib
    location, origin = _locate(cuda)
    path = str(location)
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise PluginError(f"cannot load the RoIAlign plugin library {path}: {exc}") from exc
    _check_abi_version(lib, path, origin)
    _bind_symbols(lib, path, origin)
    _loaded[cuda] = lib
    return lib


#: Every C ABI symbol this module calls, with (argtypes, restype); None = no argtypes (no arguments).
_SYMBOLS: Dict[str, Tuple[Optional[list], type]] = {
    "mrd_abi_version": (None, ctypes.c_int32),
    "mrd_has_cuda": (None, ctypes.c_int32),
    "mrd_has_tensorrt": (None, ctypes.c_int32),
    "mrd_last_error": (None, ctypes.c_char_p),
    "mrd_roi_align_cpu": ([ctypes.POINTER(RoiAlignArgs)], ctypes.c_int32),
    "mrd_roi_align_cuda": ([ctypes.POINTER(RoiAlignArgs)], ctypes.c_int32),
    "mrd_level_indices": (
        [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_int32, ctypes.c_float,
         ctypes.c_int32, ctypes.c_void_p],
        ctypes.c_int32,
    ),
    "mrd_plugin_version": (None, ctypes.c_char_p),
    "mrd_op_count": (None, ctypes.c_int32),
    "mrd_op_name": ([ctypes.c_int32], ctypes.c_char_p),
    "mrd_op_field_count": (None, ctypes.c_int32),
    "mrd_op_field": (
        [ctypes.c_int32, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int32),
         ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_char_p)],
        ctypes.c_int32,
    ),
    "mrd_args_size": (None, ctypes.c_int64),
    "mrd_args_field_count": (None, ctypes.c_int32),
    "mrd_args_field": (
        [ctypes.c_int32, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int64),
         ctypes.POINTER(ctypes.c_int64)],
        ctypes.c_int32,
    ),
}  # fmt: skip


def _fix_for(origin: str, path: str) -> str:
    """How to replace a wrong library, by where it came from."""
    if origin == ORIGIN_OVERRIDE:
        return "point MASKRCNN_DEPLOY_PLUGIN_LIBRARY at a library built from this SDK's plugins/, or unset it"
    if origin == ORIGIN_BUNDLED:
        return "reinstall maskrcnn-deploy (pip install --force-reinstall --no-deps from its source)"
    return f"delete {Path(path).parent} so that it is rebuilt"


def _check_abi_version(lib: ctypes.CDLL, path: str, origin: str) -> None:
    """Before any other symbol is bound: a library of another ABI version may lack them or take other arguments."""
    version = _abi_version(lib)
    if version is not None and version != _ABI_VERSION:
        raise PluginError(
            f"{path} has C ABI version {version}, this SDK needs {_ABI_VERSION}; {_fix_for(origin, path)}"
        )


def _bind_symbols(lib: ctypes.CDLL, path: str, origin: str) -> None:
    """Resolve every symbol up front, so a wrong library fails here with PluginError, not later with AttributeError."""
    for name, (argtypes, restype) in _SYMBOLS.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise PluginError(
                f"{path} is not the RoIAlign plugin library this SDK needs: it has no symbol {name} ({exc}); "
                f"{_fix_for(origin, path)}"
            ) from exc
        if argtypes is not None:
            fn.argtypes = argtypes
        fn.restype = restype


def _check_status(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status == 0:
        return
    message = lib.mrd_last_error().decode(errors="replace")
    if status == _STATUS_INVALID_ARGUMENT:
        raise DeploySdkError(f"{what}: {message}")
    raise PluginError(f"{what}: {message or f'CUDA error {status}'}")


def _int_argument(value, name: str, minimum: int, maximum: int, meaning: str) -> int:
    """``value`` as an int in [minimum, maximum], else a DeploySdkError naming ``name``.

    Checked here and not left to ctypes, which silently wraps an int beyond int32 (2**32 + 2 would become 2).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DeploySdkError(f"{name} must be an integer ({meaning}), got {value!r}")
    if not minimum <= int(value) <= maximum:
        raise DeploySdkError(f"{name} must be {meaning}, got {int(value)}")
    return int(value)


def _output_hw(output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, (bool, np.bool_)):
        sizes: Tuple = (output_size, output_size)
    else:
        try:
            sizes = tuple(output_size)  # type: ignore[arg-type]
        except TypeError:
            sizes = ()
        if len(sizes) != 2:
            raise DeploySdkError(f"output_size must be an int or (height, width), got {output_size!r}")
    for v in sizes:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= _INT32_MAX:
            raise DeploySdkError(
                "output_size must be a positive integer or a pair of them (height, width): output_height and "
                f"output_width must be positive integers below 2^31, got {output_size!r}"
            )
    return int(sizes[0]), int(sizes[1])


def _sampling_ratio(value) -> int:
    return _int_argument(
        value, "sampling_ratio", 0, MAX_SAMPLING_RATIO, f"0 (adaptive) to {MAX_SAMPLING_RATIO} samples per bin and axis"
    )


def _positive_scale(value, name: str, what: str = "spatial scale of the feature map") -> float:
    """A scale as the library sees it (fp32): positive and finite, else a DeploySdkError naming ``name``."""
    message = f"{name} ({what}) must be a positive finite number in float32, got {value!r}"
    try:
        with np.errstate(over="ignore"):
            as_f32 = float(np.float32(value))
    except (TypeError, ValueError):
        raise DeploySdkError(message) from None
    # Judged after the fp32 conversion: 1e-50 becomes 0 and 1e39 becomes inf there.
    if not (math.isfinite(as_f32) and as_f32 > 0.0):
        raise DeploySdkError(message)
    return as_f32


def _canonical_args(canonical_scale, canonical_level) -> Tuple[float, int]:
    return (
        _positive_scale(canonical_scale, "canonical_scale", "box size of the canonical level"),
        _int_argument(canonical_level, "canonical_level", -_INT32_MAX, _INT32_MAX, "a 32-bit level number"),
    )


def _check_finite_rois(boxes: np.ndarray, what: str) -> None:
    finite = np.isfinite(boxes).all(axis=-1)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DeploySdkError(
            f"{what} has a non-finite coordinate (NaN or inf): box {first[0] if len(first) == 1 else first} is "
            f"{boxes[first].tolist()} ({int((~finite).sum())} such boxes); pass finite boxes, or check_finite=False "
            "to pool them to zeros as the TensorRT plugin and the CUDA kernel do"
        )


def _mode_code(mode: str) -> int:
    if mode not in _MODES:
        raise DeploySdkError(f"mode must be 'avg' or 'max', got {mode!r}")
    return _MODES[mode]


def _features_array(x, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.dtype not in _DTYPE_CODES:
        raise DeploySdkError(f"{what} must be float32 or float16, got {x.dtype}")
    if x.ndim != 4:
        raise DeploySdkError(f"{what} must be [B, C, H, W], got shape {x.shape}")
    return x


def _rois_array(rois, ndim: int, what: str) -> np.ndarray:
    rois = np.asarray(rois)
    if rois.dtype not in _DTYPE_CODES:
        rois = rois.astype(np.float32)  # float64 / int boxes: coordinates are fp32 inside anyway
    rois = np.ascontiguousarray(rois)
    if rois.ndim != ndim or rois.shape[-1] != 4:
        shape = "[R, 4]" if ndim == 2 else "[B, R, 4]"
        raise DeploySdkError(f"{what} must be {shape} x1 y1 x2 y2, got shape {rois.shape}")
    return rois


def _is_torch_tensor(x) -> bool:
    # Without importing torch: deploy_sdk's numpy-only install never needs it.
    return type(x).__module__.startswith("torch") and hasattr(x, "is_cuda")


def _host(x: Any) -> np.ndarray:
    """A torch tensor (or anything array-like) as a numpy array on the host, sharing memory where it can."""
    return x.detach().cpu().numpy() if _is_torch_tensor(x) else np.asarray(x)


def _as_torch(a: np.ndarray):
    import torch

    return torch.from_numpy(a)


def _implementation_code(implementation: str) -> int:
    if implementation not in _IMPLEMENTATIONS:
        raise DeploySdkError(f"implementation must be 'fast' or 'kernel', got {implementation!r}")
    return _IMPLEMENTATIONS[implementation]


def _num_threads(num_threads: Optional[int]) -> int:
    n = 0 if num_threads is None else int(num_threads)
    if n < 0:
        raise DeploySdkError(f"num_threads must be >= 0 (0 = all cores), got {n}")
    return n


def roi_align(
    features: ArrayOrTensor,
    rois: ArrayOrTensor,
    batch_indices: ArrayOrTensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    mode: str = "avg",
    num_threads: Optional[int] = None,
    implementation: str = "fast",
    check_finite: bool = True,
) -> ArrayOrTensor:
    """Single-level RoIAlign on CPU (the library's compiled implementation), ONNX RoiAlign-16 semantics.

    features: [N, C, H, W] float32 or float16. rois: [R, 4] x1 y1 x2 y2 in input pixels (scaled by
    ``spatial_scale`` onto the map). batch_indices: [R] int32/int64, image of each RoI. ``aligned`` True =
    half-pixel offset (ONNX "half_pixel"), False = legacy RoI size >= 1 ("output_half_pixel"). ``mode`` "avg" or
    "max" (max of the interpolated samples). ``num_threads`` None/0 = all cores. ``implementation`` "fast" (the
    CPU fast path) or "kernel" (one output element at a time through the very function each CUDA thread runs:
    slow, single-threaded, for testing the kernel's code without a GPU). ``check_finite`` True refuses rois with a
    NaN or infinite coordinate (DeploySdkError, as ONNX Runtime refuses them); False pools such a box to zeros, the
    library's defined result (what the CUDA kernel and the TensorRT plugin give). ``sampling_ratio`` is at most
    :data:`MAX_SAMPLING_RATIO`; the adaptive count (0) is capped there too.
    Returns [R, C, out_h, out_w] of the features' dtype.

    Torch tensors are taken too, on any device, and give a tensor on it: on the CPU through this same code, on a
    CUDA device through :func:`roi_align_cuda` (the kernel; ``num_threads`` and ``implementation`` are CPU-only).
    """
    if _is_torch_tensor(features):
        if features.is_cuda:
            if check_finite:
                _check_finite_rois(_host(rois), "rois")
            return roi_align_cuda(features, rois, batch_indices, output_size, spatial_scale, sampling_ratio, aligned,
                                  mode)  # fmt: skip
        return _as_torch(
            roi_align(_host(features), _host(rois), _host(batch_indices), output_size, spatial_scale,
                      sampling_ratio, aligned, mode, num_threads, implementation, check_finite)
        )  # fmt: skip
    feats = _features_array(features, "features")
    boxes = _rois_array(rois, 2, "rois")
    if check_finite:
        _check_finite_rois(boxes, "rois")
    idx = np.ascontiguousarray(np.asarray(batch_indices))
    if idx.dtype not in _INDEX_CODES:
        if not np.issubdtype(idx.dtype, np.integer):
            raise DeploySdkError(f"batch_indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64)
    if idx.shape != (boxes.shape[0],):
        raise DeploySdkError(f"batch_indices must be [{boxes.shape[0]}] (one per RoI), got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= feats.shape[0]):
        raise DeploySdkError(
            f"batch_indices must lie in [0, {feats.shape[0]}) for {feats.shape[0]} images, "
            f"got values {int(idx.min())}..{int(idx.max())}"
        )
    out_h, out_w = _output_hw(output_size)
    scale = _positive_scale(spatial_scale, "spatial_scale")
    ratio = _sampling_ratio(sampling_ratio)
    n, c, h, w = feats.shape
    out = np.empty((boxes.shape[0], c, out_h, out_w), dtype=feats.dtype)
    args = _call_args(
        _DTYPE_CODES[feats.dtype], [feats.ctypes.data], [(h, w)], [scale], n, c,
        boxes.ctypes.data, _DTYPE_CODES[boxes.dtype], idx.ctypes.data, _INDEX_CODES[idx.dtype], 0, boxes.shape[0],
        (out_h, out_w), ratio, aligned, mode, _LEVEL_MAPPING_DEFAULTS, out.ctypes.data, implementation,
        _num_threads(num_threads),
    )  # fmt: skip
    lib = _library(cuda=False)
    status = lib.mrd_roi_align_cpu(ctypes.byref(args))
    _check_status(lib, status, "roi_align")
    return out


def multilevel_roi_align(
    features_list: Sequence[ArrayOrTensor],
    rois: ArrayOrTensor,
    output_size: Union[int, Sequence[int]],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = False,
    mode: str = "avg",
    canonical_scale: float = _LEVEL_MAPPING_DEFAULTS[0],
    canonical_level: int = _LEVEL_MAPPING_DEFAULTS[1],
    num_threads: Optional[int] = None,
    implementation: str = "fast",
    check_finite: bool = True,
) -> ArrayOrTensor:
    """MultiLevelRoIAlign on CPU: each RoI is pooled from its FPN level, exactly as the TensorRT plugin does.

    features_list: P2..P5 (any run of consecutive levels), each [B, C, H_l, W_l], all float32 or all float16.
    rois: [B, R, 4] x1 y1 x2 y2 in input-image pixels, R RoIs per image. spatial_scales: one per level
    (1/4, 1/8, ...). Level of a box: floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) clamped
    to the given levels. ``num_threads``, ``implementation``, ``check_finite`` and ``sampling_ratio`` as in
    :func:`roi_align` (a non-finite box maps to the first level and pools to zeros when not refused).
    Returns [B, R, C, out_h, out_w] of the features' dtype. Torch tensors on any device as in :func:`roi_align`
    (CUDA: :func:`multilevel_roi_align_cuda`).
    """
    if features_list and _is_torch_tensor(features_list[0]):
        if features_list[0].is_cuda:
            if check_finite:
                _check_finite_rois(_host(rois), "rois")
            return multilevel_roi_align_cuda(features_list, rois, output_size, spatial_scales, sampling_ratio,
                                             aligned, mode, canonical_scale, canonical_level)  # fmt: skip
        return _as_torch(
            multilevel_roi_align([_host(f) for f in features_list], _host(rois), output_size, spatial_scales,
                                 sampling_ratio, aligned, mode, canonical_scale, canonical_level, num_threads,
                                 implementation, check_finite)
        )  # fmt: skip
    feats = [_features_array(f, f"features_list[{i}]") for i, f in enumerate(features_list)]
    if len(feats) != len(spatial_scales):
        raise DeploySdkError(f"{len(feats)} feature levels but {len(spatial_scales)} spatial_scales")
    if not feats:
        raise DeploySdkError("features_list is empty; pass the FPN levels P2..P5")
    level_scales = [_positive_scale(v, f"spatial_scales[{i}]") for i, v in enumerate(spatial_scales)]
    boxes = _rois_array(rois, 3, "rois")
    if check_finite:
        _check_finite_rois(boxes, "rois")
    b, c = feats[0].shape[:2]
    for i, f in enumerate(feats):
        if f.dtype != feats[0].dtype or f.shape[:2] != (b, c):
            raise DeploySdkError(
                f"features_list[{i}] is {f.dtype} {f.shape}; every level must be {feats[0].dtype} [{b}, {c}, H, W]"
            )
    if boxes.shape[0] != b:
        raise DeploySdkError(f"rois has batch {boxes.shape[0]} but the feature maps have batch {b}")
    out_h, out_w = _output_hw(output_size)
    ratio = _sampling_ratio(sampling_ratio)
    canonical = _canonical_args(canonical_scale, canonical_level)
    r = boxes.shape[1]
    out = np.empty((b, r, c, out_h, out_w), dtype=feats[0].dtype)
    args = _call_args(
        _DTYPE_CODES[feats[0].dtype], [f.ctypes.data for f in feats], [f.shape[2:] for f in feats], level_scales, b, c,
        boxes.ctypes.data, _DTYPE_CODES[boxes.dtype], None, 0, r, b * r,
        (out_h, out_w), ratio, aligned, mode, canonical, out.ctypes.data, implementation, _num_threads(num_threads),
    )  # fmt: skip
    lib = _library(cuda=False)
    status = lib.mrd_roi_align_cpu(ctypes.byref(args))
    _check_status(lib, status, "multilevel_roi_align")
    return out


def level_indices(
    rois: np.ndarray,
    spatial_scales: Sequence[float],
    canonical_scale: float = _LEVEL_MAPPING_DEFAULTS[0],
    canonical_level: int = _LEVEL_MAPPING_DEFAULTS[1],
) -> np.ndarray:
    """0-based index into ``spatial_scales`` of the level each box [R, 4] (x1 y1 x2 y2, input pixels) pools from.

    A box with a NaN or infinite coordinate maps to the first level (0).
    """
    boxes = np.ascontiguousarray(np.asarray(rois, dtype=np.float32).reshape(-1, 4))
    out = np.empty(boxes.shape[0], dtype=np.int32)
    level_scales = [_positive_scale(v, f"spatial_scales[{i}]") for i, v in enumerate(spatial_scales)]
    scales = (ctypes.c_float * len(level_scales))(*level_scales)
    lib = _library(cuda=False)
    canonical = _canonical_args(canonical_scale, canonical_level)
    status = lib.mrd_level_indices(
        boxes.ctypes.data, boxes.shape[0], scales, len(level_scales), *canonical, out.ctypes.data
    )
    _check_status(lib, status, "level_indices")
    return out


# ------------------------------------------------------------------------------------- CUDA (torch tensors)


def has_cuda_kernels() -> bool:
    """True when the CUDA build of the library can be built/loaded here and contains the kernels."""
    try:
        return bool(_library(cuda=True).mrd_has_cuda())
    except PluginError:
        return False


def _torch_dtype_code(t, what: str) -> int:
    import torch

    codes = {torch.float32: 0, torch.float16: 1}
    if t.dtype not in codes:
        raise DeploySdkError(f"{what} must be float32 or float16, got {t.dtype}")
    return codes[t.dtype]


def _cuda_call(feats, boxes, idx, r_per_image, num_rois, out_shape, scales, sampling_ratio, aligned, mode,
               canonical_scale, canonical_level, stream, what):  # fmt: skip
    import torch

    scales = [_positive_scale(v, f"spatial_scales[{i}]") for i, v in enumerate(scales)]
    sampling_ratio = _sampling_ratio(sampling_ratio)
    canonical_scale, canonical_level = _canonical_args(canonical_scale, canonical_level)
    for i, f in enumerate(feats):
        if not f.is_cuda or f.dim() != 4 or f.dtype != feats[0].dtype or f.shape[:2] != feats[0].shape[:2]:
            raise DeploySdkError(f"{what}: feature level {i} must be a CUDA [B, C, H, W] tensor like level 0")
    if not boxes.is_cuda or (idx is not None and not idx.is_cuda):
        raise DeploySdkError(f"{what}: rois (and batch_indices) must be CUDA tensors on the features' device")
    feats = [f.contiguous() for f in feats]
    boxes = boxes.contiguous()
    b, c = feats[0].shape[:2]
    out = torch.empty(out_shape, dtype=feats[0].dtype, device=feats[0].device)
    lib = _library(cuda=True)
    if not lib.mrd_has_cuda():
        raise PluginError(f"{what}: the plugin library was built without CUDA kernels")
    if stream is None:
        stream = torch.cuda.current_stream(feats[0].device).cuda_stream
    index_code = 0
    if idx is not None:
        idx = idx.contiguous()
        index_code = {torch.int32: 32, torch.int64: 64}.get(idx.dtype, 0)
        if index_code == 0:
            raise DeploySdkError(f"{what}: batch_indices must be int32 or int64, got {idx.dtype}")
    args = _call_args(
        _torch_dtype_code(feats[0], "features"), [f.data_ptr() for f in feats], [tuple(f.shape[2:]) for f in feats],
        scales, b, c, boxes.data_ptr(), _torch_dtype_code(boxes, "rois"), None if idx is None else idx.data_ptr(),
        index_code, r_per_image, num_rois, (out_shape[-2], out_shape[-1]), sampling_ratio, aligned, mode,
        (canonical_scale, canonical_level), out.data_ptr(), "kernel", 0, stream,
    )  # fmt: skip
    with torch.cuda.device(feats[0].device):
        status = lib.mrd_roi_align_cuda(ctypes.byref(args))
    _check_status(lib, status, what)
    return out


def roi_align_cuda(
    features, rois, batch_indices, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True, mode="avg",
    stream: Optional[int] = None,
):  # fmt: skip
    """:func:`roi_align` on torch CUDA tensors with the library's CUDA kernel; returns a [R, C, oh, ow] tensor.

    Runs asynchronously on ``stream`` (a cudaStream_t as int; default: torch's current stream). The rois are not
    scanned for NaN/inf (that would synchronize the stream): a non-finite box pools to zeros.
    """
    out_h, out_w = _output_hw(output_size)
    if rois.dim() != 2 or rois.shape[-1] != 4 or batch_indices.shape != (rois.shape[0],):
        raise DeploySdkError("roi_align_cuda: rois must be [R, 4] and batch_indices [R]")
    shape = (rois.shape[0], features.shape[1], out_h, out_w)
    scale = _positive_scale(spatial_scale, "spatial_scale")
    return _cuda_call([features], rois, batch_indices, 0, rois.shape[0], shape, [scale], sampling_ratio,
                      aligned, mode, *_LEVEL_MAPPING_DEFAULTS, stream, "roi_align_cuda")  # fmt: skip


def multilevel_roi_align_cuda(
    features_list, rois, output_size, spatial_scales, sampling_ratio=0, aligned=False, mode="avg",
    canonical_scale=_LEVEL_MAPPING_DEFAULTS[0], canonical_level=_LEVEL_MAPPING_DEFAULTS[1],
    stream: Optional[int] = None,
):  # fmt: skip
    """:func:`multilevel_roi_align` on torch CUDA tensors; returns a [B, R, C, oh, ow] tensor."""
    out_h, out_w = _output_hw(output_size)
    if len(features_list) != len(spatial_scales) or not features_list:
        raise DeploySdkError("multilevel_roi_align_cuda: one spatial scale per feature level is needed")
    if rois.dim() != 3 or rois.shape[-1] != 4 or rois.shape[0] != features_list[0].shape[0]:
        raise DeploySdkError("multilevel_roi_align_cuda: rois must be [B, R, 4] with the features' batch B")
    b, r = rois.shape[:2]
    shape = (b, r, features_list[0].shape[1], out_h, out_w)
    return _cuda_call(list(features_list), rois, None, r, b * r, shape, spatial_scales, sampling_ratio, aligned,
                      mode, canonical_scale, canonical_level, stream, "multilevel_roi_align_cuda")  # fmt: skip
