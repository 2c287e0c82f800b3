"""Paste the graph's [K, 28, 28] mask probabilities into the image: torchvision's ``paste_masks_in_image``.

torchvision's algorithm, reproduced here: pad each M×M mask by one pixel of zeros (so the edge fades out), grow
its box by the same factor (M + 2) / M around the centre, truncate the box to integer pixels, bilinearly resize the
padded mask to the box size (align_corners=False), put it into the image where the box overlaps it, and threshold.

Two implementations of the same function:

- :func:`paste_masks` (numpy, CPU): a loop over boxes that computes only the visible part of each box, with
  separable float32 interpolation in PyTorch's order, so results agree with torchvision to rounding.
- :func:`paste_masks_torch` (torch, any device): all boxes at once as two batched matrix products
  ``rows [N, H, M+2] @ mask [N, M+2, M+2] @ cols [N, M+2, W]``; made for GPUs, where one big product beats a
  hundred small resizes.

A second paste, ``mode="grid_sample"``, is detectron2's (and MMDetection's) ``paste_masks_in_image`` /
``_do_paste_mask``: every image pixel centre ``(x + 0.5, y + 0.5)`` is mapped into the box,
``g = (x + 0.5 - x0) / (x1 - x0) * 2 - 1``, and the M×M mask is sampled there as ``F.grid_sample`` does
(bilinear, ``align_corners=False``: source ``((g + 1) * M - 1) / 2``, zeros outside the mask), on the float box
(no integer truncation, no padding or box growth), then binarized with ``>= threshold``. Only the box's pixels
plus one (``floor(x0) - 1`` .. ``ceil(x1) + 1``) are computed, as detectron2 does on the CPU; every pixel outside
is below 0.5 anyway. The graph metadata selects it (``extra["mask_paste"]``); ``"torchvision"`` stays the
default. The numpy version writes the sampling as ``rows [h, M] @ mask [M, M] @ cols [M, w]`` with at most two
non-zero weights per row, the same four products grid_sample sums.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from deploy_sdk.preprocessing import _linear_taps

__all__ = [
    "MASK_THRESHOLD",
    "MASK_PASTE_MODES",
    "expanded_int_boxes",
    "paste_masks",
    "paste_masks_torch",
    "paste_masks_cropped",
]

#: Paste modes (graph metadata ``extra["mask_paste"]``): torchvision's, and detectron2/MMDetection's grid_sample.
MASK_PASTE_MODES = ("torchvision", "grid_sample")

# torchvision's reference evaluation binarizes pasted probabilities with `> 0.5`.
MASK_THRESHOLD = 0.5
_PADDING = 1


def expanded_int_boxes(boxes: np.ndarray, mask_size: int) -> np.ndarray:
    """Boxes grown by (M + 2) / M around their centre and truncated to int64, as torchvision's ``expand_boxes``.

    ``boxes``: [N, 4] float32 x1 y1 x2 y2 in image pixels. Returns [N, 4] int64 (inclusive pixel corners).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.float32((mask_size + 2 * _PADDING) / mask_size)
    half_w = (b[:, 2] - b[:, 0]) * np.float32(0.5) * scale
    half_h = (b[:, 3] - b[:, 1]) * np.float32(0.5) * scale
    cx = (b[:, 2] + b[:, 0]) * np.float32(0.5)
    cy = (b[:, 3] + b[:, 1]) * np.float32(0.5)
    out = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    # astype truncates toward zero, like torch's .to(torch.int64).
    return out.astype(np.int64)


def _box_regions(ibox: np.ndarray, image_size: Tuple[int, int]):
    """Per int box: (box h, box w, y0, y1, x0, x1) of the pasted patch and its visible part in the image."""
    im_h, im_w = image_size
    x1, y1, x2, y2 = (int(v) for v in ibox)
    w = max(x2 - x1 + 1, 1)
    h = max(y2 - y1 + 1, 1)
    return h, w, max(y1, 0), min(y2 + 1, im_h), max(x1, 0), min(x2 + 1, im_w)


def _check_mode(mode: str) -> None:
    if mode not in MASK_PASTE_MODES:
        raise ValueError(f"mask paste mode {mode!r} is unknown; known: {', '.join(MASK_PASTE_MODES)}")


def _binary(patch: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    # torchvision's evaluation keeps probability > 0.5; detectron2's paste_masks_in_image keeps >= threshold.
    return patch >= threshold if mode == "grid_sample" else patch > threshold


def _grid_sample_weights(pixels: np.ndarray, lo: np.float32, hi: np.float32, size: int) -> np.ndarray:
    """[len(pixels), size] weights of grid_sample (bilinear, align_corners=False, zero padding) along one axis for
    image pixels ``pixels`` of a box spanning ``lo``..``hi``, in float32 as PyTorch computes the coordinates."""
    centre = pixels.astype(np.float32) + np.float32(0.5)
    g = (centre - lo) / (hi - lo) * np.float32(2.0) - np.float32(1.0)
    src = ((g + np.float32(1.0)) * np.float32(size) - np.float32(1.0)) / np.float32(2.0)
    i0 = np.floor(src).astype(np.int64)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    weights = np.zeros((len(pixels), size), dtype=np.float32)
    rows = np.arange(len(pixels))
    for idx, w in ((i0, w0), (i0 + 1, w1)):
        ok = (idx >= 0) & (idx < size)
        np.add.at(weights, (rows[ok], idx[ok]), w[ok])
    return weights


def _grid_sample_patches(masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int]):
    """:func:`_pasted_patches` for detectron2's paste (module docstring)."""
    im_h, im_w = image_size
    n, m = masks.shape[0], masks.shape[-1]
    masks = masks.reshape(n, m, m)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    for i in range(n):
        x0f, y0f, x1f, y1f = (np.float32(v) for v in b[i])
        x0 = max(int(np.floor(x0f)) - 1, 0)
        y0 = max(int(np.floor(y0f)) - 1, 0)
        x1 = min(int(np.ceil(x1f)) + 1, im_w)
        y1 = min(int(np.ceil(y1f)) + 1, im_h)
        if y1 <= y0 or x1 <= x0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):  # an empty box samples nothing (NaN -> no weight)
            rows = _grid_sample_weights(np.arange(y0, y1), y0f, y1f, m)
            cols = _grid_sample_weights(np.arange(x0, x1), x0f, x1f, m)
        yield i, y0, y1, x0, x1, (rows @ masks[i]) @ cols.T


def _pasted_patches(masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int], mode: str = "torchvision"):
    """Yield (index, y0, y1, x0, x1, probabilities [y1-y0, x1-x0] float32) of each box's visible part."""
    _check_mode(mode)
    masks = np.asarray(masks, dtype=np.float32)
    if mode == "grid_sample":
        yield from _grid_sample_patches(masks, boxes, image_size)
        return
    n, m = masks.shape[0], masks.shape[-1]
    padded = np.pad(masks.reshape(n, m, m), ((0, 0), (_PADDING, _PADDING), (_PADDING, _PADDING)))
    ibox = expanded_int_boxes(boxes, m)
    size = m + 2 * _PADDING
    for i in range(n):
        h, w, y0, y1, x0, x1 = _box_regions(ibox[i], image_size)
        if y1 <= y0 or x1 <= x0:
            continue
        ry0, ry1, wy0, wy1 = (t[y0 - ibox[i, 1] : y1 - ibox[i, 1]] for t in _linear_taps(size, h))
        cx0, cx1, wx0, wx1 = (t[x0 - ibox[i, 0] : x1 - ibox[i, 0]] for t in _linear_taps(size, w))
        src = padded[i]
        # Width first, then height, as PyTorch's separable kernel, so that values near the threshold agree. The
        # horizontal pass runs once on the M+2 source rows; the vertical pass then gathers its rows.
        across = src[:, cx0] * wx0 + src[:, cx1] * wx1
        yield i, y0, y1, x0, x1, across[ry0] * wy0[:, None] + across[ry1] * wy1[:, None]


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: Tuple[int, int],
    threshold: Optional[float] = MASK_THRESHOLD,
    mode: str = "torchvision",
) -> np.ndarray:
    """Paste mask probabilities into full-image masks (numpy, CPU); ``mode``: torchvision's paste or detectron2's
    ``"grid_sample"`` (module docstring).

    - ``masks``: [N, M, M] (or [N, 1, M, M]) float probabilities in the box frame (the graph's ``masks`` output)
    - ``boxes``: [N, 4] float32 x1 y1 x2 y2 in the pixels of the image to paste into (original image pixels)
    - ``image_size``: (height, width) of that image
    - returns [N, H, W]: bool ``probability > threshold``, or float32 probabilities when ``threshold`` is None
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    n = int(np.asarray(masks).shape[0])
    out = np.zeros((n, im_h, im_w), dtype=np.float32 if threshold is None else bool)
    for i, y0, y1, x0, x1, patch in _pasted_patches(masks, boxes, (im_h, im_w), mode):
        out[i, y0:y1, x0:x1] = patch if threshold is None else _binary(patch, threshold, mode)
    return out


def paste_masks_cropped(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: Tuple[int, int],
    threshold: float = MASK_THRESHOLD,
    mode: str = "torchvision",
) -> Tuple[List[np.ndarray], np.ndarray]:
    """Like :func:`paste_masks`, but each mask cropped to its own box (memory ~ box area instead of image area).

    Returns ``(crops, offsets)``: ``crops[i]`` is bool [h_i, w_i], the full pasted mask restricted to the pasted
    patch of box i (its box grown by the mask padding, truncated to integers, clipped to the image), outside of
    which the full mask is all False; ``offsets`` [N, 2] int64 is (x, y) of the crop's top-left pixel, so
    ``full[i, y:y + h_i, x:x + w_i] == crops[i]``. A box entirely outside the image gives a 0×0 crop.
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    crops: List[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * n
    offsets = np.zeros((n, 2), dtype=np.int64)
    for i, y0, _y1, x0, _x1, patch in _pasted_patches(masks, boxes, (im_h, im_w), mode):
        crops[i] = _binary(patch, threshold, mode)
        offsets[i] = (x0, y0)
    for i in range(n):
        if crops[i].size == 0:
            # A box entirely outside the image: an empty crop at the clipped corner keeps offsets meaningful.
            offsets[i] = (min(max(int(boxes[i, 0]), 0), im_w), min(max(int(boxes[i, 1]), 0), im_h))
    return crops, offsets


def paste_masks_torch(
    masks: Any,
    boxes: Any,
    image_size: Tuple[int, int],
    threshold: Optional[float] = MASK_THRESHOLD,
    mode: str = "torchvision",
):
    """Torch version of :func:`paste_masks` on the tensors' device: [N, M, M] masks, [N, 4] boxes → [N, H, W].

    Each box's bilinear resize is written as a [H, M+2] row-weight matrix and a [M+2, W] column-weight matrix that
    are zero outside the box, so all boxes paste in two batched matmuls. Agrees with torchvision to float rounding.
    ``mode="grid_sample"`` runs detectron2's paste itself (``F.grid_sample`` over the whole image, its GPU path).
    """
    import torch

    _check_mode(mode)
    if mode == "grid_sample":
        return _grid_sample_torch(masks, boxes, image_size, threshold)

    im_h, im_w = int(image_size[0]), int(image_size[1])
    n = int(masks.shape[0])
    m = int(masks.shape[-1])
    dev = masks.device
    if n == 0:
        dtype = torch.float32 if threshold is None else torch.bool
        return torch.zeros((0, im_h, im_w), dtype=dtype, device=dev)
    padded = torch.nn.functional.pad(masks.reshape(n, m, m).float(), (_PADDING,) * 4)
    size = m + 2 * _PADDING
    b = boxes.reshape(n, 4).float()
    scale = torch.tensor((m + 2 * _PADDING) / m, dtype=torch.float32, device=dev)
    half_w = (b[:, 2] - b[:, 0]) * 0.5 * scale
    half_h = (b[:, 3] - b[:, 1]) * 0.5 * scale
    cx = (b[:, 2] + b[:, 0]) * 0.5
    cy = (b[:, 3] + b[:, 1]) * 0.5
    ibox = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1).to(torch.int64)
    rows = _weight_matrix(ibox[:, 1], ibox[:, 3], im_h, size)  # [N, H, size]
    cols = _weight_matrix(ibox[:, 0], ibox[:, 2], im_w, size)  # [N, W, size]
    probs = torch.bmm(torch.bmm(rows, padded), cols.transpose(1, 2))
    return probs if threshold is None else probs > threshold


def _weight_matrix(start: Any, stop: Any, length: int, size: int):
    """[N, length, size] weights of 1-D bilinear resize from ``size`` to each box's extent (inclusive int bounds
    start..stop), placed at the box's position; rows outside the box (or the image) are zero."""
    import torch

    dev = start.device
    extent = torch.clamp(stop - start + 1, min=1)  # [N]
    pos = torch.arange(length, device=dev)[None, :]  # [1, L]
    local = pos - start[:, None]  # [N, L] pixel index inside the box
    inside = (local >= 0) & (local < extent[:, None])
    scale = torch.tensor(float(size), dtype=torch.float32, device=dev) / extent.float()
    src = torch.clamp(scale[:, None] * (local.float() + 0.5) - 0.5, min=0.0)
    i0 = torch.clamp(torch.floor(src).long(), max=size - 1)
    i1 = torch.clamp(i0 + 1, max=size - 1)
    w1 = torch.clamp(src - i0.float(), 0.0, 1.0)
    w0 = 1.0 - w1
    weights = torch.zeros((start.shape[0], length, size), dtype=torch.float32, device=dev)
    keep = inside.float()
    weights.scatter_add_(2, i0[..., None], (w0 * keep)[..., None])
    weights.scatter_add_(2, i1[..., None], (w1 * keep)[..., None])
    return weights


def _grid_sample_torch(masks: Any, boxes: Any, image_size: Tuple[int, int], threshold: Optional[float]):
    """detectron2's ``_do_paste_mask`` over the whole image (its GPU path), in chunks of 16 boxes."""
    import torch
    import torch.nn.functional as F

    im_h, im_w = int(image_size[0]), int(image_size[1])
    n, m = int(masks.shape[0]), int(masks.shape[-1])
    dev = masks.device
    out = torch.zeros((n, im_h, im_w), dtype=torch.float32 if threshold is None else torch.bool, device=dev)
    ys = torch.arange(im_h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(im_w, device=dev, dtype=torch.float32) + 0.5
    b = boxes.reshape(n, 4).float()
    for start in range(0, n, 16):
        x0, y0, x1, y1 = torch.split(b[start : start + 16], 1, dim=1)
        gy = (ys[None] - y0) / (y1 - y0) * 2 - 1
        gx = (xs[None] - x0) / (x1 - x0) * 2 - 1
        k = gx.shape[0]
        grid = torch.stack([gx[:, None, :].expand(k, im_h, im_w), gy[:, :, None].expand(k, im_h, im_w)], dim=3)
        chunk = masks[start : start + 16].reshape(k, 1, m, m).float()
        probs = F.grid_sample(chunk, grid, align_corners=False)[:, 0]
        out[start : start + k] = probs if threshold is None else probs >= threshold
    return out
