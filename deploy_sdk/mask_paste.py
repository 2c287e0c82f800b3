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
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from deploy_sdk.preprocessing import _linear_taps

__all__ = ["MASK_THRESHOLD", "expanded_int_boxes", "paste_masks", "paste_masks_torch", "paste_masks_cropped"]

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


def _pasted_patches(masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int]):
    """Yield (index, y0, y1, x0, x1, probabilities [y1-y0, x1-x0] float32) of each box's visible part."""
    masks = np.asarray(masks, dtype=np.float32)
    n, m = masks.shape[0], masks.shape[-1]
    padded = np.pad(masks.reshape(n, m, m), ((0, 0), (_PADDING, _PADDING), (_PADDING, _PADDING)))
    ibox = expanded_int_boxes(boxes, m)
    size = m + 2 * _PADDING
    for i in range(n):
        h, w, y0, y1, x0, x1 = _box_regions(ibox[i], image_size)
        if y1 <= y0 or x1 <= x0:
            continue
        ry0, ry1, wy0, wy1 = (t[y0 - ibox[i, 1]: y1 - ibox[i, 1]] for t in _linear_taps(size, h))
        cx0, cx1, wx0, wx1 = (t[x0 - ibox[i, 0]: x1 - ibox[i, 0]] for t in _linear_taps(size, w))
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
) -> np.ndarray:
    """Paste mask probabilities into full-image masks (numpy, CPU).

    - ``masks``: [N, M, M] (or [N, 1, M, M]) float probabilities in the box frame (the graph's ``masks`` output)
    - ``boxes``: [N, 4] float32 x1 y1 x2 y2 in the pixels of the image to paste into (original image pixels)
    - ``image_size``: (height, width) of that image
    - returns [N, H, W]: bool ``probability > threshold``, or float32 probabilities when ``threshold`` is None
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    n = int(np.asarray(masks).shape[0])
    out = np.zeros((n, im_h, im_w), dtype=np.float32 if threshold is None else bool)
    for i, y0, y1, x0, x1, patch in _pasted_patches(masks, boxes, (im_h, im_w)):
        out[i, y0:y1, x0:x1] = patch if threshold is None else patch > threshold
    return out


def paste_masks_cropped(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: Tuple[int, int],
    threshold: float = MASK_THRESHOLD,
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
    for i, y0, y1, x0, x1, patch in _pasted_patches(masks, boxes, (im_h, im_w)):
        crops[i] = patch > threshold
        offsets[i] = (x0, y0)
    for i in range(n):
        if crops[i].size == 0:
            # A box entirely outside the image: an empty crop at the clipped corner keeps offsets meaningful.
            offsets[i] = (min(max(int(boxes[i, 0]), 0), im_w), min(max(int(boxes[i, 1]), 0), im_h))
    return crops, offsets


def paste_masks_torch(masks: Any, boxes: Any, image_size: Tuple[int, int], threshold: Optional[float] = MASK_THRESHOLD):
    """Torch version of :func:`paste_masks` on the tensors' device: [N, M, M] masks, [N, 4] boxes → [N, H, W].

    Each box's bilinear resize is written as a [H, M+2] row-weight matrix and a [M+2, W] column-weight matrix that
    are zero outside the box, so all boxes paste in two batched matmuls. Agrees with torchvision to float rounding.
    """
    import torch

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
