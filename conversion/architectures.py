"""Build torchvision Mask R-CNN models of the architectures this SDK supports.

Only torchvision's own building blocks are used, so every model built here is a plain
``torchvision.models.detection.MaskRCNN`` that a torchvision user could build the same way. Widths that a
checkpoint may shrink (FPN channels, box-head representation size, mask-head conv widths) are parameters, so
that the checkpoint loader can rebuild a model from its tensor shapes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["ArchConfig", "RESNET_FPN_ARCHS", "build_resnet_fpn_maskrcnn"]

# torchvision builders by name; the FPN takes layer1..layer4.
RESNET_FPN_ARCHS = {
    "resnet18_fpn": (resnet.resnet18, [64, 128, 256, 512]),
    "resnet34_fpn": (resnet.resnet34, [64, 128, 256, 512]),
    "resnet50_fpn": (resnet.resnet50, [256, 512, 1024, 2048]),
    "resnet101_fpn": (resnet.resnet101, [256, 512, 1024, 2048]),
}


@dataclass
class ArchConfig:
    """The shape of a ResNet-FPN Mask R-CNN: what a checkpoint's tensor shapes determine."""

    arch: str
    num_classes: int
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_dims: Tuple[int, ...] = (256, 256, 256, 256)
    mask_predictor_dim: int = 256
    min_size: int = 800
    max_size: int = 1333
    extra: dict = field(default_factory=dict)


def build_resnet_fpn_maskrcnn(
    cfg: ArchConfig, norm_layer: Optional[Callable[..., nn.Module]] = None, **maskrcnn_kwargs
) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` with a ResNet-FPN backbone, default anchors and RoI poolers.

    ``norm_layer`` defaults to torchvision's ``FrozenBatchNorm2d`` (what its detection builders use); training
    from scratch passes ``nn.BatchNorm2d``, whose state-dict keys are the same apart from
    ``num_batches_tracked``.
    """
    if cfg.arch not in RESNET_FPN_ARCHS:
        raise ValueError(f"unknown ResNet-FPN architecture {cfg.arch!r}; known: {sorted(RESNET_FPN_ARCHS)}")
    builder, in_channels = RESNET_FPN_ARCHS[cfg.arch]
    norm_layer = norm_layer or misc_ops.FrozenBatchNorm2d
    body = builder(weights=None, norm_layer=norm_layer)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    box_head = TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_dim)
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    box_predictor = FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes)
    mask_head = MaskRCNNHeads(cfg.fpn_channels, list(cfg.mask_head_dims), 1)
    mask_predictor = MaskRCNNPredictor(cfg.mask_head_dims[-1], cfg.mask_predictor_dim, cfg.num_classes)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        box_head=box_head,
        box_predictor=box_predictor,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        **maskrcnn_kwargs,
    )
