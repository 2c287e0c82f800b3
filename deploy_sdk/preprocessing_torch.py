"""Pre-processing on the backend's device (a CUDA GPU), with torch: the GPU counterpart of
:func:`deploy_sdk.preprocessing.prepare_batch`.

Only the decoded uint8 images cross the PCIe bus (a quarter of the bytes of the float canvas); the resize and the
padding run on the device, and the canvas stays there for the backend (TensorRT, or the torch backend on CUDA),
so no float image ever goes back and forth. The batch layout (resized sizes, canvas size, the fixed-canvas
fallback) comes from :func:`deploy_sdk.preprocessing.batch_layout`, the same function the numpy path uses, and the
resize is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` at the output size, which is
exactly what torchvision's ``GeneralizedRCNNTransform`` computes (its ``recompute_scale_factor=True`` makes the
kernel use the ratio of the two sizes, as an explicit output size does). The same code runs on the CPU, which is
how it is tested on machines without a GPU.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from deploy_sdk.errors import require
from deploy_sdk.preprocessing import PreparedBatch, batch_layout

__all__ = ["prepare_batch_torch"]


def prepare_batch_torch(
    images: Sequence[np.ndarray],
    min_size: int,
    max_size: int,
    device: Any,
    size_divisible: int = 32,
    fixed: Optional[Tuple[int, int]] = None,
    dtype: Any = np.float32,
) -> PreparedBatch:
    """Resize validated ``[H, W, 3]`` uint8 RGB images on ``device`` and pad them into one canvas batch.

    Returns a :class:`PreparedBatch` whose ``images`` is a torch tensor [B, 3, H, W] of ``dtype`` (float32 0–255,
    or uint8 rounded) on ``device``; ``image_sizes`` and ``original_sizes`` stay on the host, as in the numpy
    version. Work on the device is queued on the current CUDA stream; a consumer on another stream must wait for
    it (the TensorRT backend does).
    """
    torch = require("torch", "convert", "pre-processing on the GPU")
    functional = torch.nn.functional
    device = torch.device(device)
    sizes, (ch, cw) = batch_layout([img.shape[:2] for img in images], min_size, max_size, size_divisible, fixed)
    out_dtype = torch.uint8 if np.dtype(dtype) == np.uint8 else torch.float32
    batch = torch.zeros((len(images), 3, ch, cw), dtype=out_dtype, device=device)
    pinned = device.type == "cuda"
    for i, (img, (rh, rw)) in enumerate(zip(images, sizes)):
        if pinned:
            # One host copy, straight into page-locked memory, so that the upload below runs asynchronously.
            host = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
            host.numpy()[...] = img
        else:
            img = np.ascontiguousarray(img)
            host = torch.from_numpy(img if img.flags.writeable else img.copy())  # torch warns on read-only arrays
        chw = host.to(device, non_blocking=pinned).permute(2, 0, 1)
        if (rh, rw) == tuple(chw.shape[1:]):
            resized = chw.float()  # scale 1: every sample sits on a pixel centre
        else:
            resized = functional.interpolate(chw[None].float(), size=(rh, rw), mode="bilinear", align_corners=False)[0]
        if out_dtype == torch.uint8:
            resized = resized.round().clamp_(0, 255)
        batch[i, :, :rh, :rw] = resized
    return PreparedBatch(
        images=batch,
        image_sizes=np.asarray(sizes, dtype=np.int64).reshape(len(images), 2),
        original_sizes=[(int(img.shape[0]), int(img.shape[1])) for img in images],
    )
