"""How each training framework resizes its input and maps detections back: the runtime's framework modes.

The graph metadata names the mode (``extra["resize"]``, written by the checkpoint importer; see
``deploy_sdk.conversion.checkpoints.settings``); :func:`deploy_sdk.preprocessing.prepare_batch` and
:class:`deploy_sdk.Predictor` follow it. Modes:

- ``"torchvision"`` (the default, also for graphs without the key): ``GeneralizedRCNNTransform``: one scale
  ``min(min_size / short, max_size / long)``, sizes ``floor(side * scale)``, float bilinear with
  ``align_corners=False`` (:func:`deploy_sdk.preprocessing.resize_bilinear`).
- ``"pil_bilinear"``: detectron2's ``ResizeShortestEdge`` (``get_output_shape``): scale the short side to
  ``min_size``, then scale both down if the long side passes ``max_size``, sizes ``int(side + 0.5)``; the uint8
  image resized by Pillow's ``Image.resize(..., BILINEAR)`` (which, unlike the torchvision mode, widens its filter
  when shrinking), giving uint8 pixels. Pillow resizes every channel alike, so resizing the RGB image gives the
  pixels detectron2 gets from the BGR one.
- ``"mmcv_cv2"``: MMDetection's keep-ratio ``Resize`` (``mmcv.imrescale``): one factor ``min(max_size / long,
  min_size / short)``, sizes ``int(side * factor + 0.5)``; the uint8 image resized by OpenCV's ``cv2.resize(...,
  INTER_LINEAR)`` as mmcv's ``imresize`` does (needs ``opencv-python-headless``, the ``video`` extra). OpenCV also
  resizes every channel alike.

:func:`clip_nonempty` is detectron2's ``detector_postprocess`` on the boxes (metadata ``extra["drop_empty_boxes"]``).

A new mode: a size function and a resize function here, one entry in
:data:`RESIZE_MODES`, and the importer that writes its name.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

__all__ = [
    "RESIZE_MODES",
    "resized_size_for",
    "resize_for",
    "shortest_edge_size",
    "resize_pil_bilinear",
    "mmcv_rescale_size",
    "resize_cv2_bilinear",
    "clip_nonempty",
]


def shortest_edge_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after detectron2's ``ResizeShortestEdge.get_output_shape`` (float arithmetic, round half up)."""
    h, w = int(height), int(width)
    size = float(min_size)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = float(max_size) / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return max(int(newh + 0.5), 1), max(int(neww + 0.5), 1)


def resize_pil_bilinear(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Pillow's bilinear resize of an ``[H, W, 3]`` uint8 image -> ``[3, out_height, out_width]`` float32 (0-255
    integers), as detectron2's ``ResizeTransform.apply_image`` on uint8 images."""
    from PIL import Image

    h, w = image.shape[:2]
    if (out_height, out_width) == (h, w):
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    # Pillow sets Image.BILINEAR in a loop over its Resampling enum, which its type hints do not declare; the enum
    # itself needs Pillow 9.1 and the package supports 9.0.
    resized = np.asarray(im.resize((int(out_width), int(out_height)), Image.BILINEAR))  # type: ignore[attr-defined]
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)


def mmcv_rescale_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after MMDetection's keep-ratio ``Resize`` to scale ``(max_size, min_size)``
    (``mmcv.rescale_size``: one factor for both sides, each ``int(side * factor + 0.5)``)."""
    h, w = int(height), int(width)
    factor = min(float(max_size) / max(h, w), float(min_size) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def resize_cv2_bilinear(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """OpenCV's bilinear resize of an ``[H, W, 3]`` uint8 image -> ``[3, out_height, out_width]`` float32 (0-255
    integers), as mmcv's ``imresize(..., interpolation='bilinear', backend='cv2')``."""
    h, w = image.shape[:2]
    if (out_height, out_width) == (h, w):
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    from deploy_sdk.errors import require

    cv2 = require("cv2", "video", "resizing images as MMDetection does (an MMDetection model's graph)")
    resized = cv2.resize(
        np.ascontiguousarray(image, dtype=np.uint8), (int(out_width), int(out_height)), interpolation=cv2.INTER_LINEAR
    )
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)


def _torchvision_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    from deploy_sdk.preprocessing import resized_size

    return resized_size(height, width, min_size, max_size)


def _torchvision_resize(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    from deploy_sdk.preprocessing import resize_bilinear

    return resize_bilinear(image, out_height, out_width)


#: mode -> (size function (h, w, min_size, max_size) -> (h, w), resize function (image, h, w) -> [3, h, w] float32)
RESIZE_MODES: Dict[str, Tuple[Callable[..., Tuple[int, int]], Callable[..., np.ndarray]]] = {
    "torchvision": (_torchvision_size, _torchvision_resize),
    "pil_bilinear": (shortest_edge_size, resize_pil_bilinear),
    "mmcv_cv2": (mmcv_rescale_size, resize_cv2_bilinear),
}


def _mode(mode: str):
    try:
        return RESIZE_MODES[mode]
    except KeyError:
        from deploy_sdk.errors import EngineError

        raise EngineError(
            f"the model asks for resize mode {mode!r}, which this SDK does not know (known: "
            f"{', '.join(RESIZE_MODES)}); upgrade maskrcnn-deploy"
        ) from None


def resized_size_for(mode: str) -> Callable[..., Tuple[int, int]]:
    return _mode(mode)[0]


def resize_for(mode: str) -> Callable[..., np.ndarray]:
    return _mode(mode)[1]


def clip_nonempty(boxes: np.ndarray, image_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """detectron2's ``detector_postprocess`` on boxes already scaled to the original image: clip to the image,
    then keep those with width and height > 0. Returns (clipped boxes [N, 4] float32, keep [N] bool)."""
    h, w = float(image_size[0]), float(image_size[1])
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0.0, w)
    b[:, 1::2] = np.clip(b[:, 1::2], 0.0, h)
    keep = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
    return b, keep
