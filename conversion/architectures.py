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
    "FpnMaskRCNNSpec",
    "build_fpn_maskrcnn",
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


@dataclass
class FpnMaskRCNNSpec:
    """Everything :func:`build_fpn_maskrcnn` needs to build a bottleneck-ResNet-FPN Mask R-CNN of another framework
    (detectron2, MMDetection) out of torchvision modules, at any widths.

    Widths: the stem has ``stem_channels``; stage i (0..3) outputs ``res2_channels * 2**i`` with a bottleneck of
    ``bottleneck_channels * 2**i``. ``stride_in_1x1``: a stage's stride sits on the first block's 1x1 conv
    (detectron2's MSRA ``STRIDE_IN_1X1``, MMDetection's ``style='caffe'``) instead of its 3x3 (torchvision, and
    MMDetection's ``style='pytorch'``). ``cell_anchors``: per RPN level the [A, 4] anchors around (0, 0), unrounded
    (set on torchvision's generator in place of its rounded ones). ``image_mean``/``image_std``: RGB, 0-1 units.
    ``aligned``: half-pixel RoIAlign (``AlignedMultiScaleRoIAlign``) instead of torchvision's legacy one.
    ``num_classes`` includes the background, which is class 0 (importers reorder weights to this layout).
    """

    num_classes: int
    blocks_per_stage: Tuple[int, ...] = (3, 4, 6, 3)
    stem_channels: int = 64
    res2_channels: int = 256
    bottleneck_channels: int = 64
    stride_in_1x1: bool = False
    frozen_bn: bool = True
    fpn_channels: int = 256
    anchor_sizes: Tuple[Tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: Tuple[Tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5
    cell_anchors: Optional[Sequence[Sequence[Sequence[float]]]] = None
    box_pool_size: int = 7
    mask_pool_size: int = 14
    box_sampling_ratio: int = 0
    mask_sampling_ratio: int = 0
    aligned: bool = True
    box_head_dim: int = 1024
    mask_head_dims: Tuple[int, ...] = (256, 256, 256, 256)
    mask_predictor_dim: int = 256
    min_size: int = 800
    max_size: int = 1333
    image_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0
    rpn_weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    box_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)


def _bottleneck_stage(in_ch: int, out_ch: int, mid: int, blocks: int, stride: int, stride_in_1x1: bool, norm):
    """One ResNet stage of torchvision ``Bottleneck`` blocks at explicit widths and stride placement."""
    layers = []
    for j in range(blocks):
        s = stride if j == 0 else 1
        down = None
        if j == 0 and (s != 1 or in_ch != out_ch):
            down = nn.Sequential(resnet.conv1x1(in_ch, out_ch, s), norm(out_ch))
        block = resnet.Bottleneck(in_ch, max(out_ch // resnet.Bottleneck.expansion, 1), s, down, norm_layer=norm)
        # Rebuild the three convolutions at the exact widths (torchvision derives them from `planes`).
        block.conv1 = resnet.conv1x1(in_ch, mid, s if stride_in_1x1 else 1)
        block.bn1 = norm(mid)
        block.conv2 = resnet.conv3x3(mid, mid, 1 if stride_in_1x1 else s)
        block.bn2 = norm(mid)
        block.conv3 = resnet.conv1x1(mid, out_ch)
        block.bn3 = norm(out_ch)
        block.stride = s
        layers.append(block)
        in_ch = out_ch
    return nn.Sequential(*layers)


def build_fpn_maskrcnn(spec: FpnMaskRCNNSpec) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` (random weights) with the shapes and inference settings of ``spec``."""
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    from deploy_sdk.conversion.checkpoints.settings import AlignedMultiScaleRoIAlign

    norm = misc_ops.FrozenBatchNorm2d if spec.frozen_bn else nn.BatchNorm2d
    if len(spec.blocks_per_stage) != 4:
        raise ValueError(f"a ResNet-FPN has 4 stages, got {len(spec.blocks_per_stage)}")
    body = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], norm_layer=norm)
    body.conv1 = nn.Conv2d(3, spec.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = norm(spec.stem_channels)
    in_ch = spec.stem_channels
    outs = []
    for i, blocks in enumerate(spec.blocks_per_stage):
        out_ch = spec.res2_channels * 2**i
        stage = _bottleneck_stage(
            in_ch, out_ch, spec.bottleneck_channels * 2**i, blocks, 1 if i == 0 else 2, spec.stride_in_1x1, norm
        )
        setattr(body, f"layer{i + 1}", stage)
        outs.append(out_ch)
        in_ch = out_ch
    del body.fc, body.avgpool
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=outs,
        out_channels=spec.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(
        tuple(tuple(int(round(v)) for v in level) for level in spec.anchor_sizes),
        tuple(tuple(float(r) for r in level) for level in spec.aspect_ratios),
    )
    if spec.cell_anchors is not None:
        anchors.cell_anchors = [torch.tensor(c, dtype=torch.float32).reshape(-1, 4) for c in spec.cell_anchors]
    num_anchors = int(anchors.cell_anchors[0].shape[0])
    if any(int(c.shape[0]) != num_anchors for c in anchors.cell_anchors):
        raise ValueError("every RPN level needs the same number of anchors per location")
    pool = AlignedMultiScaleRoIAlign if spec.aligned else MultiScaleRoIAlign
    names = ["0", "1", "2", "3"]
    c = spec.fpn_channels
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=spec.min_size,
        max_size=spec.max_size,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, num_anchors),
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n,
        rpn_nms_thresh=spec.rpn_nms_thresh,
        box_roi_pool=pool(names, spec.box_pool_size, spec.box_sampling_ratio),
        box_head=TwoMLPHead(c * spec.box_pool_size**2, spec.box_head_dim),
        box_predictor=FastRCNNPredictor(spec.box_head_dim, spec.num_classes),
        box_score_thresh=spec.box_score_thresh,
        box_nms_thresh=spec.box_nms_thresh,
        box_detections_per_img=spec.detections_per_img,
        bbox_reg_weights=spec.box_weights,
        mask_roi_pool=pool(names, spec.mask_pool_size, spec.mask_sampling_ratio),
        mask_head=MaskRCNNHeads(c, list(spec.mask_head_dims), 1),
        mask_predictor=MaskRCNNPredictor(
            spec.mask_head_dims[-1] if spec.mask_head_dims else c, spec.mask_predictor_dim, spec.num_classes
        ),
    )
    model.rpn.min_size = float(spec.rpn_min_size)
    model.rpn.box_coder.weights = tuple(float(w) for w in spec.rpn_weights)
    return model.eval()
