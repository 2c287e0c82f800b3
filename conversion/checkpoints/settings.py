"""The inference settings of a built torchvision Mask R-CNN: everything it does at inference that is not a weight.

They are read back from the model itself (resize sizes, normalization, thresholds, RPN top-n, RoI poolers,
anchors) and kept on ``LoadedModel``, so the export and the runtime use what the model itself uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from torchvision.models.detection import MaskRCNN

__all__ = ["InferenceSettings", "RoIAlignSettings", "read_inference_settings"]


@dataclass
class RoIAlignSettings:
    """One ``MultiScaleRoIAlign`` pooler: levels it reads, output size, sampling and level mapping.

    torchvision's Mask R-CNN poolers are legacy RoIAlign (``aligned=False``): no half-pixel offset, RoI size at
    least 1 pixel. ``sampling_ratio`` 0 means adaptive (ceil(roi_size / output_size) samples per bin and axis).
    """

    featmap_names: List[str]
    output_size: Tuple[int, int]
    sampling_ratio: int
    canonical_scale: int = 224
    canonical_level: int = 4
    aligned: bool = False


@dataclass
class InferenceSettings:
    """Everything the model does at inference that is not a weight.

    Sizes are in pixels; ``image_mean``/``image_std`` in 0-1 units (torchvision's convention: the input is
    scaled to 0-1, then normalized). Thresholds are the eval-mode values.
    """

    min_size: int
    max_size: int
    image_mean: List[float]
    image_std: List[float]
    size_divisible: int
    score_threshold: float
    nms_threshold: float
    detections_per_image: int
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    rpn_nms_threshold: float
    rpn_score_threshold: float
    anchor_sizes: List[List[int]]
    aspect_ratios: List[List[float]]
    box_roi_align: RoIAlignSettings
    mask_roi_align: RoIAlignSettings
    mask_size: int = 28

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def read_inference_settings(model: MaskRCNN) -> InferenceSettings:
    """Read the eval-mode settings off a torchvision ``MaskRCNN`` (see :class:`InferenceSettings`)."""
    t, rpn, roi = model.transform, model.rpn, model.roi_heads

    def pooler(p) -> RoIAlignSettings:
        return RoIAlignSettings(
            featmap_names=[str(n) for n in p.featmap_names],
            output_size=(int(p.output_size[0]), int(p.output_size[1])),
            sampling_ratio=int(p.sampling_ratio),
            canonical_scale=int(getattr(p, "canonical_scale", 224)),
            canonical_level=int(getattr(p, "canonical_level", 4)),
        )

    mask_pool = pooler(roi.mask_roi_pool)
    return InferenceSettings(
        min_size=int(t.min_size[-1]),
        max_size=int(t.max_size),
        image_mean=[float(v) for v in t.image_mean],
        image_std=[float(v) for v in t.image_std],
        size_divisible=int(t.size_divisible),
        score_threshold=float(roi.score_thresh),
        nms_threshold=float(roi.nms_thresh),
        detections_per_image=int(roi.detections_per_img),
        rpn_pre_nms_top_n=int(rpn._pre_nms_top_n["testing"]),
        rpn_post_nms_top_n=int(rpn._post_nms_top_n["testing"]),
        rpn_nms_threshold=float(rpn.nms_thresh),
        rpn_score_threshold=float(rpn.score_thresh),
        anchor_sizes=[[int(s) for s in level] for level in rpn.anchor_generator.sizes],
        aspect_ratios=[[float(r) for r in level] for level in rpn.anchor_generator.aspect_ratios],
        box_roi_align=pooler(roi.box_roi_pool),
        mask_roi_align=mask_pool,
        # the mask predictor's transposed conv doubles the pooled size
        mask_size=2 * mask_pool.output_size[0],
    )
