"""``LoadedModel``: what every checkpoint importer returns, a Mask R-CNN and what is known about it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torchvision.models.detection import MaskRCNN

from deploy_sdk.conversion.architectures import ArchConfig
from deploy_sdk.conversion.checkpoints.settings import FrameworkSemantics, InferenceSettings
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """A loaded Mask R-CNN and what is known about it.

    ``model`` is a torchvision ``MaskRCNN`` in eval mode, float32, on the CPU. ``class_names[i]`` is the name of
    label id ``i``; ``[0]`` is ``"__background__"``. ``sha256`` is the checkpoint file's hash ("" for a model
    that came from memory). ``config`` is the rebuilt architecture (``None`` for a pickled module whose
    architecture was not recognized: it is then used as is). ``semantics`` says how the checkpoint's framework
    runs inference where torchvision's modules cannot (``checkpoints.settings.FrameworkSemantics``; torchvision's
    defaults for a torchvision checkpoint); ``source`` of it names the importer.
    """

    model: MaskRCNN
    arch: str
    num_classes: int
    class_names: List[str]
    sha256: str
    settings: InferenceSettings
    source: str = "<in memory>"
    config: Optional[ArchConfig] = None
    form: str = "module"
    semantics: FrameworkSemantics = field(default_factory=FrameworkSemantics)

    def metadata(self, **overrides: Any) -> ModelMetadata:
        """The ``ModelMetadata`` an export of this model carries; keyword arguments override fields."""
        s = self.settings
        extra = {
            "rpn_pre_nms_top_n": s.rpn_pre_nms_top_n,
            "rpn_post_nms_top_n": s.rpn_post_nms_top_n,
            "rpn_nms_threshold": s.rpn_nms_threshold,
            "rpn_score_threshold": s.rpn_score_threshold,
            "anchor_sizes": s.anchor_sizes,
            "aspect_ratios": s.aspect_ratios,
            "box_roi_align": dataclasses.asdict(s.box_roi_align),
            "mask_roi_align": dataclasses.asdict(s.mask_roi_align),
            **self.semantics.metadata_extra(),
        }
        values: Dict[str, Any] = dict(
            class_names=list(self.class_names),
            min_size=s.min_size,
            max_size=s.max_size,
            image_mean=list(s.image_mean),
            image_std=list(s.image_std),
            score_threshold=s.score_threshold,
            nms_threshold=s.nms_threshold,
            detections_per_image=s.detections_per_image,
            mask_size=s.mask_size,
            size_divisible=s.size_divisible,
            arch=self.arch,
            checkpoint_sha256=self.sha256,
            extra=extra,
        )
        values.update(overrides)
        return ModelMetadata(**values)
