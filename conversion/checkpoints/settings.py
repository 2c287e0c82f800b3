"""The inference settings of a loaded Mask R-CNN: everything it does at inference that is not a weight.

Two parts, both kept on ``LoadedModel``:

- :class:`InferenceSettings`, read back from the built torchvision ``MaskRCNN`` itself (resize sizes,
  normalization, thresholds, RPN top-n, RoI poolers, anchors), so the export and the runtime use what the model
  itself uses;
- :class:`FrameworkSemantics`, how the framework the checkpoint was trained with (torchvision, detectron2,
  MMDetection) runs inference where that differs from torchvision's Mask R-CNN and cannot be expressed by the
  torchvision modules' own attributes. Every importer fills it in from the framework's own source and config; the
  deployment module (``conversion/deploy_module.py``) and the runtime (``Predictor``, through the graph metadata)
  read it. The defaults are torchvision's, so a torchvision checkpoint needs none of it.

How an importer expresses a framework (the contract every importer of ``conversion/checkpoints/`` follows):

- The model is always a torchvision ``MaskRCNN`` whose weights are mapped from the framework's keys. What the
  mapping absorbs exactly, with no field here: *class layout* (a framework with the background LAST, or with no
  background column in the box/mask regressors, is reordered to torchvision's background-first layout; softmax
  is permutation-equivariant and the extra columns are zeros, so scores and boxes are unchanged; the SDK's label
  id is then the framework's class id + ``label_offset``); *channel order* (a BGR framework's first convolution
  gets its input channels reversed, so the graph input stays RGB 0-255 per the contract, and
  ``image_mean``/``image_std`` are written in RGB order, 0-1 units: ``mean_rgb / 255``, ``std_rgb / 255``);
  *stride placement* (``STRIDE_IN_1X1``: the stride moved from the 3x3 to the 1x1 convolution of each stage's
  first block); *thresholds and top-k* (set on the torchvision modules, read back into InferenceSettings);
  *RoIAlign* (``aligned`` and ``sampling_ratio`` on the poolers: an importer uses :class:`AlignedMultiScaleRoIAlign`
  for half-pixel pooling, read into ``RoIAlignSettings.aligned``).
- What the modules cannot carry is a field of :class:`FrameworkSemantics`: fixed anchor strides and offset (the
  cell anchors themselves are set unrounded on the anchor generator), the small-box filters, and the runtime
  modes (resize, mask paste, dropping empty boxes) that the runtime reads from the graph metadata ``extra``.
- Values of the framework's own config that matter are kept in ``FrameworkSemantics.config`` (JSON-able) and
  written to the metadata under ``extra["framework"]``.

Runtime modes (metadata ``extra`` keys, read by ``deploy_sdk.Predictor``; absent = torchvision):

- ``resize``: ``"torchvision"`` (float bilinear, ``align_corners=False``, floor of side * scale),
  ``"pil_bilinear"`` (detectron2's ``ResizeShortestEdge``: sizes ``int(side * scale + 0.5)``, Pillow's bilinear
  resize of the uint8 image) or ``"mmcv_cv2"`` (MMDetection's keep-ratio ``Resize``: sizes ``int(side * factor +
  0.5)``, OpenCV's bilinear resize of the uint8 image). A new mode is a function in ``deploy_sdk/resize_modes.py``.
- ``mask_paste``: ``"torchvision"`` (``paste_masks_in_image``, ``> 0.5``) or ``"grid_sample"`` (detectron2's and
  MMDetection's ``_do_paste_mask``: ``grid_sample`` at pixel centres, half-pixel, zero padding, ``>= 0.5``).
- ``drop_empty_boxes``: drop detections whose box, in original-image pixels, has zero width or height
  (detectron2's ``detector_postprocess``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from deploy_sdk import plugins
from deploy_sdk.conversion.roi_align_function import RoIAlignConfig

__all__ = [
    "InferenceSettings",
    "RoIAlignSettings",
    "FrameworkSemantics",
    "AlignedMultiScaleRoIAlign",
    "RESIZE_MODES",
    "MASK_PASTE_MODES",
    "read_inference_settings",
]

# The level mapping's defaults, from the plugin's field table.
_ROI_ALIGN_DEFAULT_SCALE = plugins.field_default(plugins.MULTILEVEL_OP, "canonical_scale")
_ROI_ALIGN_DEFAULT_LEVEL = plugins.field_default(plugins.MULTILEVEL_OP, "canonical_level")

# Runtime modes the metadata may name (see the module docstring); the runtime refuses any other.
RESIZE_MODES = ("torchvision", "pil_bilinear", "mmcv_cv2")
MASK_PASTE_MODES = ("torchvision", "grid_sample")


@dataclass
class FrameworkSemantics:
    """How the checkpoint's framework runs inference where torchvision's Mask R-CNN modules cannot say it.

    Defaults are torchvision's. Fields:

    - ``source``: the importer that made the model (``torchvision``, ``detectron2``, ``mmdet``).
    - ``input_channel_order`` / ``pixel_mean`` / ``pixel_std``: what the framework's first layer expects, in the
      framework's own channel order and units (0-255 for detectron2/MMDetection; ``None`` = torchvision's 0-1
      mean/std). Recorded for the metadata only: the importer has already folded the channel order into the
      first convolution and the mean/std into ``InferenceSettings.image_mean``/``image_std`` (RGB, 0-1 units).
    - ``anchor_strides``: fixed stride per RPN level (detectron2 ``DefaultAnchorGenerator``, MMDetection
      ``AnchorGenerator``); ``None`` = torchvision's ``canvas size // feature size``. ``anchor_offset``: grid
      shift in strides (shifts = ``(arange(n) + offset) * stride``; torchvision and both frameworks' defaults: 0).
    - ``rpn_min_box_size`` / ``rpn_min_box_strict``: proposals kept after clipping when width and height are
      ``> size`` (strict; detectron2 ``nonempty(0)``, MMDetection ``min_bbox_size``) or ``>= size`` (torchvision's
      ``remove_small_boxes(1e-3)``).
    - ``box_min_size``: detections kept when width and height are ``>= size`` (torchvision: 1e-2); ``None`` = no
      small-box filter after the box head (detectron2, MMDetection).
    - ``label_offset``: SDK label id = framework class id + offset (1 where the importer moved the background
      to index 0; 0 for torchvision, whose ids are already the SDK's).
    - ``resize``, ``mask_paste``, ``drop_empty_boxes``: the runtime modes (module docstring).
    - ``level_formula``: the framework's FPN level formula, as text, for the metadata; the graph uses the op
      contract's (``floor(4 + log2(sqrt(area) / 224) + 1e-6)``), see ``docs/architecture.md`` for where they differ.
    - ``config``: the framework config values that matter (JSON-able), written to ``extra["framework"]``.
    """

    source: str = "torchvision"
    input_channel_order: str = "rgb"
    pixel_mean: Optional[List[float]] = None
    pixel_std: Optional[List[float]] = None
    anchor_strides: Optional[List[int]] = None
    anchor_offset: float = 0.0
    rpn_min_box_size: float = 1e-3
    rpn_min_box_strict: bool = False
    box_min_size: Optional[float] = 1e-2
    label_offset: int = 0
    resize: str = "torchvision"
    mask_paste: str = "torchvision"
    drop_empty_boxes: bool = False
    level_formula: str = "floor(4 + log2(sqrt(area) / 224) + 1e-6)"
    config: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize!r} unknown; known: {', '.join(RESIZE_MODES)}")
        if self.mask_paste not in MASK_PASTE_MODES:
            raise ValueError(f"mask paste mode {self.mask_paste!r} unknown; known: {', '.join(MASK_PASTE_MODES)}")
        if self.input_channel_order not in ("rgb", "bgr"):
            raise ValueError(f"input_channel_order must be 'rgb' or 'bgr', got {self.input_channel_order!r}")

    def metadata_extra(self) -> Dict[str, Any]:
        """The ``extra`` entries of the graph metadata: the runtime modes, and everything else under ``framework``."""
        framework = dataclasses.asdict(self)
        for key in ("resize", "mask_paste", "drop_empty_boxes"):
            framework.pop(key)
        return {
            "source": self.source,
            "resize": self.resize,
            "mask_paste": self.mask_paste,
            "drop_empty_boxes": self.drop_empty_boxes,
            "framework": framework,
        }


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with the half-pixel RoIAlign (``aligned=True``, detectron2's ROIAlignV2
    and MMDetection's default), so the eager torchvision model pools as the framework does. torchvision's own
    class always pools with ``aligned=False``; the level mapping (``LevelMapper``) is torchvision's."""

    # Set by the base class (declared there through __annotations__, which type checkers do not read).
    scales: Optional[List[float]]
    map_levels: Optional[Any]  # torchvision.ops.poolers.LevelMapper

    def __init__(self, featmap_names: List[str], output_size: int, sampling_ratio: int, **kwargs: Any):
        super().__init__(featmap_names, output_size, sampling_ratio, **kwargs)
        self.aligned = True

    def forward(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor], image_shapes: List[Tuple[int, int]]):
        from torchvision.ops import roi_align
        from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

        x_filtered = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        first = x_filtered[0]
        out = torch.zeros(
            (rois.shape[0], first.shape[1]) + tuple(self.output_size), dtype=first.dtype, device=first.device
        )
        for level, (feat, scale) in enumerate(zip(x_filtered, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(
                feat,
                rois[idx],
                self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(out.dtype)
        return out


@dataclass
class RoIAlignSettings:
    """One ``MultiScaleRoIAlign`` pooler as the model has it: the feature maps it reads, and its ``MultiLevelRoIAlign``
    attributes except the spatial scales, which come from the feature map sizes at export. :meth:`from_pooler` is
    the one reader of a torchvision pooler; :meth:`config` makes the node's attributes
    (:class:`~deploy_sdk.conversion.roi_align_function.RoIAlignConfig`, the one Python description of the op's
    attributes, whose names and defaults are the plugin's field table).

    torchvision's Mask R-CNN poolers are legacy RoIAlign (``aligned=False``): no half-pixel offset, RoI size at
    least 1 pixel. ``sampling_ratio`` 0 means adaptive (ceil(roi_size / output_size) samples per bin and axis).
    """

    featmap_names: List[str]
    output_size: Tuple[int, int]
    sampling_ratio: int
    canonical_scale: float = _ROI_ALIGN_DEFAULT_SCALE
    canonical_level: int = _ROI_ALIGN_DEFAULT_LEVEL
    aligned: bool = False

    @classmethod
    def from_pooler(cls, pool: Any) -> RoIAlignSettings:
        """Read a torchvision ``MultiScaleRoIAlign`` (or :class:`AlignedMultiScaleRoIAlign`, ``aligned = True``)."""
        size = pool.output_size
        oh, ow = (size, size) if isinstance(size, int) else tuple(size)
        scale = getattr(pool, "canonical_scale", _ROI_ALIGN_DEFAULT_SCALE)
        return cls(
            featmap_names=[str(n) for n in pool.featmap_names],
            output_size=(int(oh), int(ow)),
            sampling_ratio=int(pool.sampling_ratio),
            # torchvision types it as an int (224); kept as given so a non-integral one is not truncated
            canonical_scale=int(scale) if float(scale).is_integer() else float(scale),
            canonical_level=int(getattr(pool, "canonical_level", _ROI_ALIGN_DEFAULT_LEVEL)),
            # torchvision's MultiScaleRoIAlign always pools with aligned=False; importers of half-pixel frameworks
            # use AlignedMultiScaleRoIAlign, which says so with `aligned = True`.
            aligned=bool(getattr(pool, "aligned", False)),
        )

    def config(self, spatial_scales: Sequence[float]) -> RoIAlignConfig:
        """The attributes of this pooler's ``MultiLevelRoIAlign`` node for levels of ``spatial_scales``."""
        return RoIAlignConfig(
            output_height=int(self.output_size[0]),
            output_width=int(self.output_size[1]),
            sampling_ratio=int(self.sampling_ratio),
            spatial_scales=tuple(spatial_scales),
            aligned=int(bool(self.aligned)),
            mode="avg",
            canonical_scale=float(self.canonical_scale),
            canonical_level=int(self.canonical_level),
        )


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

    pooler = RoIAlignSettings.from_pooler
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
