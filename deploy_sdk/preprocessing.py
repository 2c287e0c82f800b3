"""Image pre-processing of the runtime: decode and validate images, resize as torchvision does, pad and batch.

Everything here is numpy (no torch), so that the ONNX Runtime path of a production app needs no torch.

The deployment graph takes the RESIZED image, zero-padded into a canvas, as raw 0–255 RGB (normalization is inside
the graph), plus the (height, width) of the valid region. The resize reproduces torchvision's
``GeneralizedRCNNTransform``: one scale ``min(min_size / min(h, w), max_size / max(h, w))`` for both axes, output
size ``floor(side * scale)``, bilinear interpolation with ``align_corners=False`` and the scale recomputed from the
two sizes (``recompute_scale_factor=True``).

Input policy (what :func:`load_image` accepts):

- ``numpy.ndarray`` uint8 ``[H, W, 3]`` (RGB, or BGR with ``channel_order="bgr"``): used as is.
- uint8 ``[H, W]`` or ``[H, W, 1]`` (grayscale): replicated to three channels, as PIL's ``convert("RGB")`` does.
- uint8 ``[H, W, 4]`` (RGBA / BGRA): the alpha channel is dropped (not composited), as PIL's ``convert("RGB")``.
- uint16 arrays of the same shapes: 16-bit data over the full 0–65535 range, reduced to 8 bits by keeping the high
  byte (``value >> 8``), as image libraries do (Pillow reads 16-bit RGB PNGs that way). 16-bit files and PIL
  images (modes ``I;16*``, and ``I`` holding 0–65535) take the same path, so a 16-bit PNG and
  ``np.asarray(Image.open(png))`` give the same pixels. Data that uses fewer bits (e.g. 12-bit camera values
  0–4095 in a uint16 array) must be scaled by the caller: ``(img >> 4).astype(np.uint8)``.
- any other dtype (float, int32, bool, ...): :class:`InputImageError`. A float array is ambiguous (0–1 or
  0–255?), so the caller must convert it; the message says how. Likewise 32-bit float image files (PIL mode
  ``F``), and mode ``I`` images with values outside 0–65535.
- an image with zero height or width: :class:`InputImageError`. An image with nothing in it (e.g. all black) is a
  valid image and gives an empty result.
- images of more than :data:`MAX_IMAGE_PIXELS` pixels (178,956,970, about 179 megapixels, e.g. 13000×13000):
  :class:`InputImageError`, the same limit for arrays, PIL images and files. It is Pillow's own
  decompression-bomb limit (Pillow refuses files over twice ``PIL.Image.MAX_IMAGE_PIXELS``, whose default is
  89,478,485; between the two it only warns), so every file Pillow decodes is accepted and every image Pillow
  refuses is refused here with the same message. A file is checked against the size in its header, before any
  pixel is decoded, so a tiny file that declares a huge image costs nothing. To accept larger images set
  ``deploy_sdk.preprocessing.MAX_IMAGE_PIXELS`` (read at each call) and, for files, ``PIL.Image.MAX_IMAGE_PIXELS``
  (to at least half of it). Anything below the limit is handled: the resize gathers only the source rows and
  columns it samples, so its memory is set by the output size, not the input size. The :class:`Predictor`
  also refuses (:func:`check_resizable`) an image whose aspect ratio exceeds the model's ``max_size``:1, whose
  short side the resize would shrink below one pixel (torchvision's transform fails on it too).
- ``str`` / ``os.PathLike``: decoded with Pillow (any format Pillow reads), turned upright by its EXIF
  orientation tag (``ImageOps.exif_transpose``, as cameras and viewers expect), converted to RGB. Results
  (``Detections.image_size``, boxes, masks) are in the pixels of the upright image, and overlays
  (``det.draw(load_image(path))``) use the same upright image.
- ``PIL.Image.Image``: used as it is (no EXIF rotation: the caller holds the pixels; apply
  ``ImageOps.exif_transpose`` first to get the file behaviour), converted to RGB. A closed image is an
  :class:`InputImageError`.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from deploy_sdk.errors import InputImageError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "load_image",
    "resize_scale",
    "resized_size",
    "check_resizable",
    "resize_bilinear",
    "canvas_size",
    "batch_layout",
    "PreparedBatch",
    "prepare_batch",
    "boxes_to_original",
]

# Pillow's decompression-bomb limit: it refuses files over 2 * PIL.Image.MAX_IMAGE_PIXELS (default 89,478,485).
# One limit for files, PIL images and arrays; 179 MP of uint8 RGB is 537 MB. Read at each call, so it can be raised.
MAX_IMAGE_PIXELS = 178_956_970

# PIL modes holding 16-bit samples: 16-bit grayscale PNG/TIFF open as "I;16*" (older Pillow: "I").
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112


def load_image(image: Any, channel_order: str = "rgb", what: str = "image") -> np.ndarray:
    """Decode/validate one input image and return it as ``[H, W, 3]`` uint8 RGB (C-contiguous or a view).

    ``image`` may be a numpy array, a file path or a PIL image (see the module docstring for the policy on
    grayscale, RGBA, 16-bit, float, empty and huge images, and EXIF orientation). ``channel_order`` applies to numpy
    arrays only ("rgb" or "bgr"); files and PIL images carry their own channel order. ``what`` names the image in
    error messages. Images of more than :data:`MAX_IMAGE_PIXELS` pixels raise :class:`InputImageError`; files are
    checked against the size in their header, before anything is decoded.
    """
    if channel_order not in ("rgb", "bgr"):
        raise InputImageError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return _decode_file(os.fspath(image), what)
    if _is_pil_image(image):
        return _pil_input(image, what)
    if not isinstance(image, np.ndarray):
        raise InputImageError(
            f"{what}: expected a numpy array [H, W, 3] uint8, a file path or a PIL image, got {type(image).__name__}"
        )
    arr = image
    sixteen_bit = arr.dtype.kind == "u" and arr.dtype.itemsize == 2  # uint16 in either byte order
    if arr.dtype != np.uint8 and not sixteen_bit:
        hint = (
            " If it holds 0-1 values, pass (img * 255).round().astype(np.uint8); if 0-255, img.astype(np.uint8)."
            if np.issubdtype(arr.dtype, np.floating)
            else " Convert it to 8-bit first (uint16 arrays are read as 16-bit data and reduced with >> 8)."
        )
        raise InputImageError(f"{what}: dtype {arr.dtype} is not supported; images must be uint8 0-255.{hint}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputImageError(
            f"{what}: shape {tuple(image.shape)} is not an image; expected [H, W, 3] (or [H, W] grayscale, "
            "[H, W, 4] RGBA). Channels-first [3, H, W] arrays must be transposed to [H, W, 3]."
        )
    _check_size(arr, what)
    arr = arr[:, :, :3]
    if sixteen_bit:
        arr = _sixteen_to_eight(arr)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if channel_order == "bgr":
        arr = arr[:, :, ::-1]
    return arr


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    """16-bit samples (0-65535) to 8 bits by their high byte, ``value >> 8``: the one 16-to-8-bit rule of the SDK."""
    return np.right_shift(arr, 8).astype(np.uint8)


def _is_pil_image(obj: Any) -> bool:
    # Pillow is a base dependency, but checking the module name avoids importing it for numpy-only callers.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _too_large(what: str, width: int, height: int) -> InputImageError:
    return InputImageError(
        f"{what}: {width}x{height} = {width * height} pixels is more than this SDK accepts "
        f"(deploy_sdk.preprocessing.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels); downscale the image first, or "
        "raise that limit (for files also PIL.Image.MAX_IMAGE_PIXELS, which Pillow enforces at twice its value)"
    )


def _pil_to_rgb(im: Any, what: str) -> np.ndarray:
    """A PIL image as [H, W, 3] uint8 RGB; 16-bit modes by :func:`_sixteen_to_eight` (PIL's own conversion of
    them to 8 bits clips every value above 255 to white)."""
    mode = im.mode
    if mode in _PIL_16BIT_MODES or mode == "I":
        arr = np.asarray(im)
        if mode == "I" and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 65535:
                raise InputImageError(
                    f"{what}: a 32-bit integer image (PIL mode 'I') with values {lo}..{hi}; only 16-bit data "
                    "(0-65535) has a defined 8-bit form; convert it to 8-bit first"
                )
        gray = _sixteen_to_eight(arr)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise InputImageError(
            f"{what}: a 32-bit float image (PIL mode 'F') is ambiguous (0-1 or 0-255?); convert it to 8-bit first"
        )
    return np.asarray(im.convert("RGB"))


def _pil_input(im: Any, what: str) -> np.ndarray:
    width, height = im.size
    _check_dims(height, width, what)
    try:
        return _pil_to_rgb(im, what)
    except InputImageError:
        raise
    except (ValueError, OSError, AssertionError) as exc:
        # Pillow: ValueError "Operation on closed image" for a closed in-memory image, a failed assertion on the
        # file pointer for a closed file-backed image, OSError for a truncated file behind a lazy image.
        raise InputImageError(
            f"{what}: the PIL image cannot be read ({exc or type(exc).__name__}); was it closed? Pass an open "
            "image (call image.load() or image.copy() before closing its file)"
        ) from exc


def _exif_orientation(im: Any) -> int:
    """The EXIF orientation tag (1-8) of an opened image; 1 (upright) when absent or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return 1  # a corrupt EXIF block: the pixels are still good, take them as stored
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _decode_file(path: str, what: str = "image") -> np.ndarray:
    from PIL import Image, ImageOps

    if not os.path.exists(path):
        raise InputImageError(f"image file not found: {path}")
    name = what if path in what else f"{what} ({path})"
    try:
        with Image.open(path) as im:  # reads the header only
            _check_dims(im.height, im.width, name)  # before any pixel is decoded
            im.load()
            if _exif_orientation(im) != 1:
                ImageOps.exif_transpose(im, in_place=True)
            return _pil_to_rgb(im, name)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check in Image.open (the warning when a caller's filter turns it into an exception).
        raise InputImageError(
            f"{name}: {exc} This SDK accepts images up to deploy_sdk.preprocessing.MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS} pixels; downscale the image first, or raise that limit and PIL.Image.MAX_IMAGE_PIXELS"
        ) from exc
    except MemoryError as exc:
        raise InputImageError(f"{name}: not enough memory to decode {path}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputImageError(f"cannot read image file {path}: {exc}") from exc


def _check_dims(height: int, width: int, what: str) -> None:
    h, w = int(height), int(width)
    if h == 0 or w == 0:
        raise InputImageError(f"{what}: image is empty ({h}x{w} pixels); every image needs at least one pixel")
    if h * w > MAX_IMAGE_PIXELS:
        raise _too_large(what, w, h)


def _check_size(arr: np.ndarray, what: str) -> np.ndarray:
    _check_dims(arr.shape[0], arr.shape[1], what)
    return arr


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """torchvision's resize scale: the short side to ``min_size`` unless the long side would exceed ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after :func:`resize_bilinear`, exactly as ``F.interpolate(recompute_scale_factor=True)``."""
    scale = resize_scale(height, width, min_size, max_size)
    # torch computes the output size in double precision from the Python float scale, then floors.
    return max(int(math.floor(height * scale)), 1), max(int(math.floor(width * scale)), 1)


def check_resizable(height: int, width: int, min_size: int, max_size: int, what: str = "image") -> None:
    """:class:`InputImageError` when the resize would shrink the short side below one pixel.

    That happens exactly when the aspect ratio exceeds ``max_size``:1 (e.g. a 1×60,000,000 strip at max_size 1333):
    torchvision's transform fails on such an image, the model would see a distorted one-pixel line, and masks
    pasted back onto it would need gigabytes. Such images must be cropped or tiled first.
    """
    h, w = int(height), int(width)
    short, long = min(h, w), max(h, w)
    if short * resize_scale(h, w, min_size, max_size) < 1.0:
        raise InputImageError(
            f"{what}: {w}x{h} pixels has an aspect ratio of {long / short:.0f}:1, more than this model's "
            f"max_size:1 ({max_size}:1): resized to at most {max_size} pixels long, its short side would be under "
            "one pixel. Crop or tile it first."
        )


def _linear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation, align_corners=False, as PyTorch's CPU kernel.

    The arithmetic is float32 like PyTorch's ``area_pixel_compute_source_index`` for float tensors, so results
    agree to rounding: scale = in/out; src = scale * (dst + 0.5) - 0.5, clamped below at 0.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    # PyTorch's compiled kernel evaluates scale * (dst + 0.5) - 0.5 as one fused multiply-add (one rounding); in
    # plain float32 the two roundings move a source coordinate near 1000 by up to 6e-5, i.e. 0.015 in 0-255 units.
    dst = np.arange(out_size, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


# Whole source rows are gathered at most this many bytes at a time before their columns are picked.
_GATHER_ROW_BYTES = 16 * 2**20


def _gather(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image[rows][:, cols]`` ([len(rows), len(cols), C], the image's dtype) without holding more than
    ``_GATHER_ROW_BYTES`` of whole source rows at once (a row of a 1×60,000,000 strip alone is 180 MB)."""
    row_bytes = image.shape[1] * image.shape[2] * image.itemsize
    if row_bytes > _GATHER_ROW_BYTES:
        return image[rows[:, None], cols]  # one row is over budget: pick the pixels directly
    step = max(1, _GATHER_ROW_BYTES // row_bytes)
    if step >= len(rows):
        return image[rows].take(cols, axis=1)
    out = np.empty((len(rows), len(cols), image.shape[2]), dtype=image.dtype)
    for start in range(0, len(rows), step):
        np.take(image[rows[start : start + step]], cols, axis=1, out=out[start : start + step])
    return out


def resize_bilinear(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Bilinear resize of ``[H, W, C]`` (any real dtype) to ``[C, out_height, out_width]`` float32.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on the float image to about
    1e-4 (0–255 units). Only the source rows each output row needs are gathered before converting to float, and
    when the width shrinks only the source columns the output samples, so a 10000×10000 input costs about
    ``out_height × out_width`` work, not ``H × W``, and a 1×60,000,000 strip needs kilobytes of temporaries, not
    gigabytes. When the output size equals the input size every source coordinate is an exact pixel centre, so the
    result is the image itself (no arithmetic).
    """
    h, w = image.shape[:2]
    if (out_height, out_width) == (h, w):
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    y0, y1, wy0, wy1 = _linear_taps(h, out_height)
    x0, x1, wx0, wx1 = _linear_taps(w, out_width)
    cols = np.union1d(x0, x1)  # the source columns the output reads: at most 2 per output column
    if cols.size < w:
        # Gather just those columns (still uint8) with the rows; the taps index into the gathered columns. The
        # arithmetic below is then the same on the same values, so the result is identical to using whole rows.
        upper_src = _gather(image, y0, cols)
        lower_src = _gather(image, y1, cols)
        x0, x1 = np.searchsorted(cols, x0), np.searchsorted(cols, x1)
    else:
        upper_src, lower_src = image[y0], image[y1]
    # Height first, on the two gathered source rows of each output row, channels-first so that the column
    # gathers below run along contiguous memory; then width. PyTorch's kernel sums in the other order; the
    # results differ only by float32 rounding (~1e-5 in 0-255 units). In-place arithmetic keeps the number of
    # full-size temporaries at two.
    out = upper_src.transpose(2, 0, 1).astype(np.float32)
    out *= wy0[:, None]
    lower = lower_src.transpose(2, 0, 1).astype(np.float32)
    lower *= wy1[:, None]
    out += lower
    left = np.take(out, x0, axis=2)
    left *= wx0
    right = np.take(out, x1, axis=2)
    right *= wx1
    left += right
    return left


def canvas_size(
    sizes: Sequence[Tuple[int, int]],
    size_divisible: int = 32,
    fixed: Optional[Tuple[int, int]] = None,
) -> Tuple[int, int]:
    """(H, W) of the zero-padded canvas for resized images of ``sizes``: the fixed size if any, else the largest
    height and width rounded up to a multiple of ``size_divisible`` (torchvision's ``batch_images``)."""
    if fixed is not None:
        return int(fixed[0]), int(fixed[1])
    hmax = max(s[0] for s in sizes)
    wmax = max(s[1] for s in sizes)
    d = int(size_divisible)
    return int(math.ceil(hmax / d) * d), int(math.ceil(wmax / d) * d)


def batch_layout(
    shapes: Sequence[Tuple[int, int]],
    min_size: int,
    max_size: int,
    size_divisible: int = 32,
    fixed: Optional[Tuple[int, int]] = None,
    resize: str = "torchvision",
) -> Tuple[List[Tuple[int, int]], Tuple[int, int]]:
    """Resized (height, width) of each image of ``shapes`` and the (H, W) of their common canvas.

    With a ``fixed`` canvas, an image whose resized size does not fit is scaled down further to fit, keeping its
    aspect ratio. Shared by the numpy and the torch (GPU) pre-processing, so both lay a batch out identically.
    """
    # resize: the framework's resize mode (deploy_sdk.resize_modes; the model's metadata extra["resize"]).
    size_of = resized_size
    if resize != "torchvision":
        from deploy_sdk.resize_modes import resized_size_for

        size_of = resized_size_for(resize)
    sizes = []
    for h, w in shapes:
        h, w = int(h), int(w)
        rh, rw = size_of(h, w, min_size, max_size)
        if fixed is not None and (rh > fixed[0] or rw > fixed[1]):
            scale = min(fixed[0] / h, fixed[1] / w)
            rh = min(max(int(math.floor(h * scale)), 1), fixed[0])
            rw = min(max(int(math.floor(w * scale)), 1), fixed[1])
        sizes.append((rh, rw))
    return sizes, canvas_size(sizes, size_divisible, fixed)


@dataclass
class PreparedBatch:
    """Backend input for one batch plus what post-processing needs to map results back.

    - ``images``: [B, 3, H, W] float32 (0–255) or uint8, RGB, zero-padded canvas: a numpy array, or a torch
      tensor on the backend's device when the batch was prepared there (:mod:`deploy_sdk.preprocessing_torch`)
    - ``image_sizes``: [B, 2] int64 (height, width) of the valid resized region of each canvas
    - ``original_sizes``: (height, width) of each input image, in pixels
    - ``sources``: each input as the caller gave it (for :attr:`Detections.source`), when the predictor sets it
    """

    images: Any
    image_sizes: np.ndarray
    original_sizes: List[Tuple[int, int]]
    sources: Optional[List[Any]] = None


def model_layout(metadata: Any, fixed: Optional[Tuple[int, int]], dtype: Any) -> Tuple[Dict[str, Any], str]:
    """How a model's batches are laid out: :func:`prepare_batch`'s layout keywords (the metadata's resize bounds and
    canvas divisor, the backend's ``fixed`` canvas and input ``dtype``) and the training framework's resize mode
    (metadata ``extra["resize"]``, :mod:`deploy_sdk.resize_modes`)."""
    layout = dict(
        min_size=int(metadata.min_size),
        max_size=int(metadata.max_size),
        size_divisible=int(metadata.size_divisible or 1),
        fixed=fixed,
        dtype=dtype,
    )
    return layout, str(metadata.extra.get("resize", "torchvision"))


def prepare_batch(
    images: Sequence[np.ndarray],
    min_size: int,
    max_size: int,
    size_divisible: int = 32,
    fixed: Optional[Tuple[int, int]] = None,
    dtype: Any = np.float32,
    resize: str = "torchvision",
) -> PreparedBatch:
    """Resize validated ``[H, W, 3]`` uint8 RGB images and pad them into one canvas batch.

    With a ``fixed`` (H, W) canvas, an image whose resized size does not fit is scaled down further to fit, keeping
    its aspect ratio (the graph cannot take anything larger). ``dtype`` is the graph's input type: float32 keeps the
    resize exact; uint8 rounds it.
    """
    sizes, (ch, cw) = batch_layout([img.shape[:2] for img in images], min_size, max_size, size_divisible, fixed, resize)
    resize_image = resize_bilinear
    if resize != "torchvision":
        from deploy_sdk.resize_modes import resize_for

        resize_image = resize_for(resize)
    batch = np.zeros((len(images), 3, ch, cw), dtype=dtype)
    for i, (img, (rh, rw)) in enumerate(zip(images, sizes)):
        resized = resize_image(img, rh, rw)
        if batch.dtype == np.uint8:
            resized = np.clip(np.rint(resized), 0, 255)
        batch[i, :, :rh, :rw] = resized
    return PreparedBatch(
        images=batch,
        image_sizes=np.asarray(sizes, dtype=np.int64).reshape(len(images), 2),
        original_sizes=[(int(img.shape[0]), int(img.shape[1])) for img in images],
    )


def boxes_to_original(boxes: np.ndarray, resized: Tuple[int, int], original: Tuple[int, int]) -> np.ndarray:
    """Map ``[N, 4]`` x1 y1 x2 y2 boxes from resized-image pixels to original-image pixels (float32).

    Per-axis ratios original / resized in float32, as torchvision's ``transform.postprocess`` (``resize_boxes``).
    """
    ratio_h = np.float32(original[0]) / np.float32(resized[0])
    ratio_w = np.float32(original[1]) / np.float32(resized[1])
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * ratios).astype(np.float32)
