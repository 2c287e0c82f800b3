"""The committed detectron2 and MMDetection fixtures (tests/fixtures/{detectron2,mmdet}, made by
tests/reference/*_reference.py with the frameworks themselves): their files, images, loaders and reference
detections, shared by the importer tests and the framework-baseline bench tests."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from repo_paths import FIXTURES_DIR

from deploy_sdk.conversion.parity import ParityThresholds
from deploy_sdk.detections import Detections

#: The match criteria of a framework's detections and ours, the same for both frameworks.
FRAMEWORK_THRESHOLDS = ParityThresholds(min_score=0.3, box_iou=0.98, score_diff=0.01, mask_iou=0.95)

D2_FIXTURES = FIXTURES_DIR / "detectron2"
#: variant -> (checkpoint file, config file or None)
D2_VARIANTS = {"zoo_pkl": ("zoo_pkl.pkl", None), "custom_pth": ("custom_pth.pth", "custom_pth.config.yaml")}

MMDET_FIXTURES = FIXTURES_DIR / "mmdet"
MMDET_CHECKPOINT = MMDET_FIXTURES / "mask_rcnn_r50_fpn_tiny.pth"
MMDET_CLASSES = ["cube", "ring", "blob"]
MMDET_KEYS = ("boxes", "scores", "labels", "masks", "mask_shape")


def _read_rgb(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def d2_images() -> List[np.ndarray]:
    return [_read_rgb(D2_FIXTURES / f"image_{i}.png") for i in range(3)]


def d2_load(variant: str):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    ckpt, config = D2_VARIANTS[variant]
    return load_checkpoint(D2_FIXTURES / ckpt, config=D2_FIXTURES / config if config else None)


def d2_reference(outputs, prefix: str, names) -> Detections:
    """detectron2's detections of one image from a fixture's ``.outputs.npz`` (``prefix``: "0".."2" per image,
    "batch3_<i>" from the batch of three)."""
    h, w = (int(v) for v in outputs[f"{prefix}_shape"])
    n = len(outputs[f"{prefix}_scores"])
    masks = np.unpackbits(outputs[f"{prefix}_masks_packed"], axis=1)[:, : h * w].reshape(n, h, w).astype(bool)
    return Detections(
        boxes=outputs[f"{prefix}_boxes"],
        scores=outputs[f"{prefix}_scores"],
        labels=outputs[f"{prefix}_classes"] + 1,  # detectron2 class c is SDK label c + 1 (background first)
        masks=masks,
        class_names=names,
        image_size=(h, w),
    )


def mmdet_image_paths():
    return sorted((MMDET_FIXTURES / "images").glob("image_*.png"))


def mmdet_images() -> List[np.ndarray]:
    return [_read_rgb(p) for p in mmdet_image_paths()]


def mmdet_load(**kwargs):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    return load_checkpoint(MMDET_CHECKPOINT, **kwargs)


def mmdet_reference(outputs: Dict[str, np.ndarray], names) -> Detections:
    """MMDetection's detections of one image from ``{"boxes", "scores", "labels", "masks", "mask_shape"}``."""
    n, h, w = (int(v) for v in outputs["mask_shape"])
    masks = np.unpackbits(outputs["masks"], axis=1)[:, : h * w].reshape(n, h, w).astype(bool)
    return Detections(
        boxes=outputs["boxes"],
        scores=outputs["scores"],
        labels=outputs["labels"] + 1,  # MMDetection's 0-based label c is SDK label c + 1 (background 0)
        masks=masks,
        class_names=names,
        image_size=(h, w),
    )


def mmdet_outputs_of(outputs, prefix: str) -> Dict[str, np.ndarray]:
    """One image's arrays from the fixture's reference.npz (``prefix``: "{}_<i>" or "batch3_{}_<i>")."""
    return {k: outputs[prefix.format(k)] for k in MMDET_KEYS}
