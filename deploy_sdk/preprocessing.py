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
- any other dtype (float, uint16, bool, ...): :class:`InputImageError`. A float array is ambiguous (0–1 or
  0–255?), so the caller must convert it; the message says how.
- an image with zero height or width: :class:`InputImageError`. An image with nothing in it (e.g. all black) is a
  valid image and gives an empty result.
- images larger than :data:`MAX_IMAGE_PIXELS` (400 megapixels): :class:`InputImageError`. Anything below, e.g.
  10000×10000, is handled correctly; the resize reads only the source rows and columns it needs.
- ``str`` / ``os.PathLike``: decoded with Pillow (any format Pillow reads), converted to RGB.
- ``PIL.Image.Image``: converted to RGB.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from deploy_sdk.errors import InputImageError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "load_image",
    "resize_scale",
    "resized_size",
    "resize_bilinear",
    "canvas_size",
    "batch_layout",
    "PreparedBatch",
    "prepare_batch",
    "boxes_to_original",
]

# 400 MP (e.g. 20000×20000) of uint8 RGB is 1.2 GB; beyond that an input is far more likely a mistake than a photo.
MAX_IMAGE_PIXELS = 400_000_000


def load_image(image: Any, channel_order: str = "rgb", what: str = "image") -> np.ndarray:
    """Decode/validate one input image and return it as ``[H, W, 3]`` uint8 RGB (C-contiguous or a view).

    ``image`` may be a numpy array, a file path or a PIL image (see the module docstring for the policy on
    grayscale, RGBA, float, empty and huge images). ``channel_order`` applies to numpy arrays only ("rgb" or
    "bgr"); files and PIL images carry their own channel order. ``what`` names the image in error messages.
    """
    if channel_order not in ("rgb", "bgr"):
        raise InputImageError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return _check_size(_decode_file(os.fspath(image)), what)
    if _is_pil_image(image):
        return _check_size(np.asarray(image.convert("RGB")), what)
    if not isinstance(image, np.ndarray):
        raise InputImageError(
            f"{what}: expected a numpy array [H, W, 3] uint8, a file path or a PIL image, got {type(image).__name__}"
        )
    arr = image
    if arr.dtype != np.uint8:
        hint = (
            " If it holds 0-1 values, pass (img * 255).round().astype(np.uint8); if 0-255, img.astype(np.uint8)."
            if np.issubdtype(arr.dtype, np.floating)
            else " Convert it to 8-bit first."
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
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if channel_order == "bgr":
        arr = arr[:, :, ::-1]
    return arr


def _is_pil_image(obj: Any) -> bool:
    # Pillow is a base dependency, but checking the module name avoids importing it for numpy-only callers.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _decode_file(path: str) -> np.ndarray:
    from PIL import Image

    if not os.path.exists(path):
        raise InputImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InputImageError(
                    f"{path}: {im.width}x{im.height} pixels is more than this SDK accepts "
                    f"({MAX_IMAGE_PIXELS} pixels); downscale the image first"
                )
            return np.asarray(im.convert("RGB"))
    except InputImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"cannot read image file {path}: {exc}") from exc


def _check_size(arr: np.ndarray, what: str) -> np.ndarray:
    h, w = int(arr.shape[0]), int(arr.shape[1])
    if h == 0 or w == 0:
        raise InputImageError(f"{what}: image is empty ({h}x{w} pixels); every image needs at least one pixel")
    if h * w > MAX_IMAGE_PIXELS:
        raise InputImageError(
            f"{what}: {w}x{h} pixels is more than this SDK accepts ({MAX_IMAGE_PIXELS} pixels); "
            "downscale the image first"
        )
    return arr


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """torchvision's resize scale: the short side to ``min_size`` unless the long side would exceed ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after :func:`resize_bilinear`, exactly as ``F.interpolate(recompute_scale_factor=True)``."""
    scale = resize_scale(height, width, min_size, max_size)
    # torch computes the output size in double precision from the Python float scale, then floors.
    return max(int(math.floor(height * scale)), 1), max(int(math.floor(width * scale)), 1)


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


def resize_bilinear(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Bilinear resize of ``[H, W, C]`` (any real dtype) to ``[C, out_height, out_width]`` float32.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on the float image to about
    1e-4 (0–255 units). Only the source rows each output row needs are gathered before converting to float, so a
    10000×10000 input costs about ``out_height × W`` work, not ``H × W``. When the output size equals the input
    size every source coordinate is an exact pixel centre, so the result is the image itself (no arithmetic).
    """
    h, w = image.shape[:2]
    if (out_height, out_width) == (h, w):
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    y0, y1, wy0, wy1 = _linear_taps(h, out_height)
    x0, x1, wx0, wx1 = _linear_taps(w, out_width)
    # Height first, on the two gathered source rows of each output row, channels-first so that the column
    # gathers below run along contiguous memory; then width. PyTorch's kernel sums in the other order; the
    # results differ only by float32 rounding (~1e-5 in 0-255 units). In-place arithmetic keeps the number of
    # full-size temporaries at two.
    out = image[y0].transpose(2, 0, 1).astype(np.float32)
    out *= wy0[:, None]
    lower = image[y1].transpose(2, 0, 1).astype(np.float32)
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
) -> Tuple[List[Tuple[int, int]], Tuple[int, int]]:
    """Resized (height, width) of each image of ``shapes`` and the (H, W) of their common canvas.

    With a ``fixed`` canvas, an image whose resized size does not fit is scaled down further to fit, keeping its
    aspect ratio. Shared by the numpy and the torch (GPU) pre-processing, so both lay a batch out identically.
    """
    sizes = []
    for h, w in shapes:
        h, w = int(h), int(w)
        rh, rw = resized_size(h, w, min_size, max_size)
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
    """

    images: Any
    image_sizes: np.ndarray
    original_sizes: List[Tuple[int, int]]


def prepare_batch(
    images: Sequence[np.ndarray],
    min_size: int,
    max_size: int,
    size_divisible: int = 32,
    fixed: Optional[Tuple[int, int]] = None,
    dtype: Any = np.float32,
) -> PreparedBatch:
    """Resize validated ``[H, W, 3]`` uint8 RGB images and pad them into one canvas batch.

    With a ``fixed`` (H, W) canvas, an image whose resized size does not fit is scaled down further to fit, keeping
    its aspect ratio (the graph cannot take anything larger). ``dtype`` is the graph's input type: float32 keeps the
    resize exact; uint8 rounds it.
    """
    sizes, (ch, cw) = batch_layout([img.shape[:2] for img in images], min_size, max_size, size_divisible, fixed)
    batch = np.zeros((len(images), 3, ch, cw), dtype=dtype)
    for i, (img, (rh, rw)) in enumerate(zip(images, sizes)):
        resized = resize_bilinear(img, rh, rw)
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
