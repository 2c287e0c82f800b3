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
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = [
    "ArchConfig",
    "RESNET_FPN_ARCHS",
    "SUPPORTED_ARCHS",
    "MOBILENET_FPN_ANCHOR_SIZES",
    "build_resnet_fpn_maskrcnn",
    "build_mobilenet_v3_fpn_maskrcnn",
    "build_maskrcnn",
]

# torchvision builders by name; the FPN takes layer1..layer4.
RESNET_FPN_ARCHS = {
    "resnet18_fpn": (resnet.resnet18, [64, 128, 256, 512]),
    "resnet34_fpn": (resnet.resnet34, [64, 128, 256, 512]),
    "resnet50_fpn": (resnet.resnet50, [256, 512, 1024, 2048]),
    "resnet101_fpn": (resnet.resnet101, [256, 512, 1024, 2048]),
    # torchvision's own builder name for the ResNet-50 case: the same network (maskrcnn_resnet50_fpn builds
    # exactly this backbone and these heads at the default widths).
    "maskrcnn_resnet50_fpn": (resnet.resnet50, [256, 512, 1024, 2048]),
}

# Every architecture name `build_maskrcnn` (and so the checkpoint loader) accepts.
SUPPORTED_ARCHS = (
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
    "resnet101_fpn",
    "mobilenet_v3_large_fpn",
)

# What torchvision's fasterrcnn_mobilenet_v3_large_fpn pairs with its 3-level FPN (2 feature maps + max-pool
# level): every size at every level, so 15 anchors per location instead of the ResNet-FPN default of 3.
MOBILENET_FPN_ANCHOR_SIZES = ((32, 64, 128, 256, 512),) * 3


@dataclass
class ArchConfig:
    """The shape of a Mask R-CNN: what a checkpoint's tensor shapes determine, plus the resize sizes.

    ``arch`` is one of ``SUPPORTED_ARCHS``; ``num_classes`` includes the background. The widths apply to the
    v1-style heads (``TwoMLPHead``, ``MaskRCNNHeads``) of every architecture but ``maskrcnn_resnet50_fpn_v2``.
    """

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
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        **_v1_heads(cfg, backbone.out_channels),
        **maskrcnn_kwargs,
    )


def _v1_heads(cfg: ArchConfig, in_channels: int) -> dict:
    """torchvision's default (v1) box and mask heads at the widths of ``cfg``, as MaskRCNN keyword arguments."""
    return dict(
        box_head=TwoMLPHead(in_channels * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes),
        mask_head=MaskRCNNHeads(in_channels, list(cfg.mask_head_dims), 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_dims[-1], cfg.mask_predictor_dim, cfg.num_classes),
    )


def build_mobilenet_v3_fpn_maskrcnn(
    cfg: ArchConfig, norm_layer: Optional[Callable[..., nn.Module]] = None, **maskrcnn_kwargs
) -> MaskRCNN:
    """Mask R-CNN on torchvision's MobileNetV3-Large FPN backbone (``mobilenet_backbone(..., fpn=True)``).

    torchvision ships this backbone only in Faster R-CNN (``fasterrcnn_mobilenet_v3_large_fpn``); its pairing
    is replicated here: anchors ``MOBILENET_FPN_ANCHOR_SIZES`` x ratios (0.5, 1, 2) on all three levels,
    ``rpn_score_thresh=0.05``, the default RoI poolers (which find only the FPN maps "0" and "1" of this
    backbone) and the default heads. The backbone's FPN width is fixed at 256 by torchvision's builder.
    """
    if cfg.fpn_channels != 256:
        raise ValueError(f"torchvision's MobileNetV3 FPN has 256 channels, not {cfg.fpn_channels}")
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=None,
        fpn=True,
        norm_layer=norm_layer or misc_ops.FrozenBatchNorm2d,
        trainable_layers=6,
    )
    anchors = AnchorGenerator(MOBILENET_FPN_ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(MOBILENET_FPN_ANCHOR_SIZES))
    maskrcnn_kwargs.setdefault("rpn_score_thresh", 0.05)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=anchors,
        **_v1_heads(cfg, backbone.out_channels),
        **maskrcnn_kwargs,
    )


def build_maskrcnn(
    cfg: ArchConfig, norm_layer: Optional[Callable[..., nn.Module]] = None, **maskrcnn_kwargs
) -> MaskRCNN:
    """Build the ``MaskRCNN`` named by ``cfg.arch`` (one of ``SUPPORTED_ARCHS``) with random weights.

    ``norm_layer`` is the backbone's batch norm (``FrozenBatchNorm2d`` by default; ``nn.BatchNorm2d`` computes
    the same function in eval mode). ``maskrcnn_resnet50_fpn_v2`` is built by torchvision's own builder, which
    fixes its widths and uses ``BatchNorm2d`` throughout, so only ``num_classes`` and the sizes apply to it.
    """
    if cfg.arch in RESNET_FPN_ARCHS:
        return build_resnet_fpn_maskrcnn(cfg, norm_layer=norm_layer, **maskrcnn_kwargs)
    if cfg.arch == "mobilenet_v3_large_fpn":
        return build_mobilenet_v3_fpn_maskrcnn(cfg, norm_layer=norm_layer, **maskrcnn_kwargs)
    if cfg.arch == "maskrcnn_resnet50_fpn_v2":
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        return maskrcnn_resnet50_fpn_v2(
            weights=None,
            weights_backbone=None,
            num_classes=cfg.num_classes,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            **maskrcnn_kwargs,
        )
    raise ValueError(f"unknown architecture {cfg.arch!r}; known: {', '.join(SUPPORTED_ARCHS)}")
