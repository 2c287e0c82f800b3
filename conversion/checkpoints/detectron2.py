"""The detectron2 importer: Mask R-CNN R-FPN checkpoints of detectron2 (model zoo or trained), onto torchvision modules.

What is read: the weights (a ``.pkl`` of numpy arrays, read by ``numpy_pickle`` with only numpy's reconstruction
globals, or a ``.pth`` read by ``torch.load(weights_only=True)``), nested under ``"model"``, with detectron2's key
names; and the config (``--config config.yaml``: ``yaml.safe_load``, ``_BASE_`` files resolved relative to it, never
executed; a Python LazyConfig is refused), else the model-zoo defaults of ``mask_rcnn_R_50_FPN_3x.yaml``
(:data:`MODEL_ZOO_DEFAULTS`, from detectron2's ``config/defaults.py`` and ``Base-RCNN-FPN.yaml``).

detectron2's inference (``GeneralizedRCNN.inference`` with ``DefaultPredictor``), as reproduced, from its source:

- input: ``INPUT.FORMAT`` (BGR) 0-255, ``(x - PIXEL_MEAN) / PIXEL_STD`` (MSRA: [103.53, 116.28, 123.675],
  [1, 1, 1]); the graph input stays RGB: conv1's input channels are reversed and the metadata mean/std are the
  same numbers in RGB order / 255; padding (zeros, after normalizing) to a multiple of 32 (the FPN's
  ``size_divisibility``);
- resize: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``: ``int(side * scale + 0.5)``, Pillow bilinear on
  the uint8 image (runtime resize mode ``pil_bilinear``);
- ResNet bottlenecks with ``STRIDE_IN_1X1`` (the stride on the first block's 1x1 conv; True for MSRA weights),
  FrozenBN (eps 1e-5), FPN sum fusion with nearest 2x upsampling, P6 = max-pool(P5, 1, stride 2);
- anchors: ``DefaultAnchorGenerator``: cell anchors ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``, centred at
  0, not rounded; fixed strides 4..64, shifts ``(i + OFFSET) * stride`` (OFFSET 0.0);
- RPN: per level top ``PRE_NMS_TOPK_TEST`` logits, decode with ``RPN.BBOX_REG_WEIGHTS`` (clamp log(1000/16)), clip,
  keep width and height ``> PROPOSAL_GENERATOR.MIN_SIZE`` (0: ``Boxes.nonempty``), NMS per level at
  ``RPN.NMS_THRESH``, the best ``POST_NMS_TOPK_TEST`` per image;
- box head: ``ROIAlignV2`` (``aligned=True``, sampling ``POOLER_SAMPLING_RATIO`` 0 = adaptive), level
  ``floor(4 + log2(sqrt(area) / 224 + 1e-8))``; two FCs; softmax over K + 1 logits with the background LAST;
  class-specific boxes (no background column) decoded with (10, 10, 5, 5), clipped; score ``> 0.05``; no
  small-box filter; class-wise NMS 0.5; top ``TEST.DETECTIONS_PER_IMAGE``;
- mask head: 4 convs, deconv, per-class 1x1 (no background channel), sigmoid of the predicted class, pasted with
  ``paste_masks_in_image`` (``grid_sample`` at pixel centres, ``>= 0.5``); ``detector_postprocess`` scales boxes
  to the original size, clips, and drops empty boxes.

Class ids: detectron2 class ``c`` (0-based, background = K) is SDK label ``c + 1`` (background 0), so a
detectron2 user subtracts 1 (``FrameworkSemantics.label_offset`` = 1, in the metadata).

Where the graph differs, by construction: the FPN level of a box uses the op contract's
``floor(4 + log2(sqrt(area) / 224) + 1e-6)``; the two differ only for boxes whose ``sqrt(area) / 224`` lies
within a relative 7e-7 below a power of two (a few float32 values per level boundary).

Refused (``UnsupportedModelError``, naming the variant): Cascade R-CNN, PointRend, deformable convolutions,
GroupNorm / SyncBN-with-norm FPN or heads, ResNeXt groups, dilated res5, box heads with convolutions, sigmoid /
federated-loss classifiers, non-FPN (C4/DC5) backbones, other meta-architectures, Python LazyConfigs.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from deploy_sdk.conversion.architectures import FpnMaskRCNNSpec, build_fpn_maskrcnn
from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel
from deploy_sdk.conversion.checkpoints.settings import FrameworkSemantics, read_inference_settings
from deploy_sdk.errors import CheckpointError, UnsupportedModelError

__all__ = [
    "SOURCE",
    "MODEL_ZOO_DEFAULTS",
    "looks_like",
    "import_state_dict",
    "read_config",
    "cell_anchors",
]

SOURCE = "detectron2"

# The config values that matter at inference, as detectron2's model zoo Mask R-CNN R50-FPN 3x has them
# (config/defaults.py overridden by Base-RCNN-FPN.yaml and mask_rcnn_R_50_FPN_3x.yaml).
MODEL_ZOO_DEFAULTS: Dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": True,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.FUSE_TYPE": "sum",
    "MODEL.PROPOSAL_GENERATOR.NAME": "RPN",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": 0,
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.HEAD_NAME": "StandardRPNHead",
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.RPN.CONV_DIMS": [-1],
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": False,
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": False,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}

# Key names only detectron2 uses (FPN laterals, its RPN's generator name, its ResNet's bottom_up).
_D2_MARKERS = ("backbone.bottom_up.", "proposal_generator.rpn_head.", "backbone.fpn_lateral")


def looks_like(keys: Sequence[str]) -> bool:
    """Whether a state dict's keys are detectron2's (GeneralizedRCNN naming)."""
    return any(k.startswith(m) for k in keys for m in _D2_MARKERS)


# ---------------------------------------------------------------------------------------------------------------
# config


def read_config(path: Optional[Path]) -> Tuple[Dict[str, Any], List[str]]:
    """(values, files): :data:`MODEL_ZOO_DEFAULTS` overridden by a detectron2 YAML config and its ``_BASE_`` chain.

    Only the keys of MODEL_ZOO_DEFAULTS and the refused-variant markers are looked at; nothing is executed."""
    values = dict(MODEL_ZOO_DEFAULTS)
    if path is None:
        return values, []
    path = Path(path)
    if path.suffix == ".py":
        raise UnsupportedModelError(
            f"{path} is a detectron2 LazyConfig (Python); it is code and is not executed here. Pass the YAML config "
            "the training wrote (output/config.yaml) or none (model-zoo defaults)"
        )
    files: List[str] = []
    flat = _read_yaml_chain(path, files, depth=0)
    values.update(flat)
    return values, files


def _read_yaml_chain(path: Path, files: List[str], depth: int) -> Dict[str, Any]:
    import yaml

    if depth > 8:
        raise CheckpointError(f"{path}: _BASE_ chain deeper than 8 files; is it circular?")
    if not path.is_file():
        raise CheckpointError(f"detectron2 config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read detectron2 config {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a detectron2 YAML config (a mapping at the top level)")
    files.append(str(path))
    out: Dict[str, Any] = {}
    base = data.pop("_BASE_", None)
    if base is not None:
        if not isinstance(base, str) or "://" in base:
            raise CheckpointError(
                f"{path}: _BASE_ {base!r} is not a local file; pass the merged config the training wrote "
                "(output/config.yaml has no _BASE_)"
            )
        out.update(_read_yaml_chain((path.parent / base).resolve(), files, depth + 1))
    out.update(_flatten(data))
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _refusals(cfg: Mapping[str, Any]) -> Optional[str]:
    """What in a config makes the model something this importer does not reproduce; None when supported."""
    if cfg["MODEL.META_ARCHITECTURE"] != "GeneralizedRCNN":
        return f"meta-architecture {cfg['MODEL.META_ARCHITECTURE']} is not supported (only GeneralizedRCNN Mask R-CNN)"
    if not cfg["MODEL.MASK_ON"]:
        return "MODEL.MASK_ON is False: a Faster R-CNN without a mask head is not supported"
    if cfg.get("MODEL.KEYPOINT_ON"):
        return "keypoint heads (MODEL.KEYPOINT_ON) are not supported"
    if cfg["MODEL.BACKBONE.NAME"] != "build_resnet_fpn_backbone":
        return f"backbone {cfg['MODEL.BACKBONE.NAME']} is not supported (only build_resnet_fpn_backbone: R50/R101-FPN)"
    if "Cascade" in str(cfg["MODEL.ROI_HEADS.NAME"]):
        return "Cascade R-CNN (CascadeROIHeads) is not supported"
    if cfg["MODEL.ROI_HEADS.NAME"] != "StandardROIHeads":
        return f"ROI heads {cfg['MODEL.ROI_HEADS.NAME']} are not supported (only StandardROIHeads)"
    if cfg["MODEL.ROI_MASK_HEAD.NAME"] != "MaskRCNNConvUpsampleHead":
        what = "PointRend" if "Point" in str(cfg["MODEL.ROI_MASK_HEAD.NAME"]) else cfg["MODEL.ROI_MASK_HEAD.NAME"]
        return f"mask head {what} is not supported (only MaskRCNNConvUpsampleHead)"
    if any(bool(v) for v in cfg["MODEL.RESNETS.DEFORM_ON_PER_STAGE"]):
        return "deformable convolutions (MODEL.RESNETS.DEFORM_ON_PER_STAGE) are not supported"
    for key in ("MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        if cfg[key]:
            return (
                f"{key} = {cfg[key]!r}: normalization layers in the FPN or the heads (GN heads, LSJ baselines) "
                "are not supported"
            )
    if cfg["MODEL.RESNETS.NORM"] not in ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN"):
        norm = cfg["MODEL.RESNETS.NORM"]
        return f"MODEL.RESNETS.NORM = {norm!r} (e.g. GroupNorm) is not supported (FrozenBN or BN only)"
    if int(cfg["MODEL.RESNETS.NUM_GROUPS"]) != 1:
        return "ResNeXt backbones (MODEL.RESNETS.NUM_GROUPS > 1) are not supported"
    if int(cfg["MODEL.RESNETS.RES5_DILATION"]) != 1:
        return "a dilated res5 (MODEL.RESNETS.RES5_DILATION) is not supported"
    if cfg["MODEL.FPN.FUSE_TYPE"] != "sum":
        return f"FPN fuse type {cfg['MODEL.FPN.FUSE_TYPE']!r} is not supported (sum only)"
    if cfg["MODEL.PROPOSAL_GENERATOR.NAME"] != "RPN" or cfg["MODEL.RPN.HEAD_NAME"] != "StandardRPNHead":
        return "only the standard RPN (StandardRPNHead) is supported"
    if list(cfg["MODEL.RPN.CONV_DIMS"]) != [-1]:
        return "MODEL.RPN.CONV_DIMS other than [-1] (more RPN convolutions) is not supported"
    if cfg["MODEL.ANCHOR_GENERATOR.NAME"] != "DefaultAnchorGenerator":
        return f"anchor generator {cfg['MODEL.ANCHOR_GENERATOR.NAME']} is not supported (rotated anchors?)"
    if [str(f) for f in cfg["MODEL.RPN.IN_FEATURES"]] != ["p2", "p3", "p4", "p5", "p6"]:
        return f"MODEL.RPN.IN_FEATURES {cfg['MODEL.RPN.IN_FEATURES']} is not supported (p2..p6)"
    if [str(f) for f in cfg["MODEL.ROI_HEADS.IN_FEATURES"]] != ["p2", "p3", "p4", "p5"]:
        return f"MODEL.ROI_HEADS.IN_FEATURES {cfg['MODEL.ROI_HEADS.IN_FEATURES']} is not supported (p2..p5)"
    if cfg["MODEL.ROI_BOX_HEAD.NAME"] != "FastRCNNConvFCHead" or int(cfg["MODEL.ROI_BOX_HEAD.NUM_CONV"]) != 0:
        return "box heads with convolutions (e.g. 4conv1fc) are not supported (2fc only)"
    if int(cfg["MODEL.ROI_BOX_HEAD.NUM_FC"]) != 2:
        return f"a box head of {cfg['MODEL.ROI_BOX_HEAD.NUM_FC']} FC layers is not supported (2 only)"
    if cfg["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE"] or cfg["MODEL.ROI_BOX_HEAD.USE_FED_LOSS"]:
        return "sigmoid / federated-loss classifiers (USE_SIGMOID_CE, USE_FED_LOSS, e.g. LVIS) are not supported"
    types = {cfg["MODEL.ROI_BOX_HEAD.POOLER_TYPE"], cfg["MODEL.ROI_MASK_HEAD.POOLER_TYPE"]}
    if not types <= {"ROIAlignV2", "ROIAlign"} or len(types) != 1:
        return f"RoI pooler types {sorted(types)} are not supported (ROIAlignV2 or ROIAlign, the same for both heads)"
    if str(cfg["INPUT.FORMAT"]).upper() not in ("BGR", "RGB"):
        return f"INPUT.FORMAT {cfg['INPUT.FORMAT']!r} is not supported (BGR or RGB)"
    if int(cfg["INPUT.MIN_SIZE_TEST"]) <= 0:
        return "INPUT.MIN_SIZE_TEST = 0 (no resize at test time) is not supported"
    return None


def _key_refusals(keys: Sequence[str]) -> Optional[str]:
    """Variants recognizable from key names alone (so a checkpoint without its config is refused too)."""
    checks = [
        (r"^roi_heads\.box_(head|predictor)\.\d+\.", "Cascade R-CNN (one box head per stage) is not supported"),
        (r"^roi_heads\.mask_(point|coarse)_head\.", "PointRend mask heads are not supported"),
        (r"\.conv2_offset\.|\.conv2\.offset|_offset\.weight$", "deformable convolutions are not supported"),
        (
            r"^backbone\.fpn_(lateral|output)\d\.norm\.",
            "normalization layers in the FPN (GN / SyncBN FPN) are not supported",
        ),
        (
            r"^roi_heads\.(box|mask)_head\.\w+\.norm\.",
            "normalization layers in the box or mask head (GN heads) are not supported",
        ),
        (r"^roi_heads\.box_head\.conv\d", "box heads with convolutions (e.g. 4conv1fc) are not supported"),
        (r"^roi_heads\.keypoint_head\.", "keypoint heads are not supported"),
    ]
    for pattern, message in checks:
        if any(re.search(pattern, k) for k in keys):
            return message
    if any(k.startswith("backbone.bottom_up.stages.") or k.startswith("backbone.net.") for k in keys):
        return "non-ResNet backbones (RegNet, ViTDet, ...) are not supported"
    if not any(k.startswith("roi_heads.mask_head.") for k in keys):
        return "the checkpoint has no mask head (a Faster R-CNN); only Mask R-CNN is supported"
    if "backbone.bottom_up.res2.0.conv3.weight" not in keys and "backbone.bottom_up.res2.0.conv2.weight" in keys:
        return "ResNet-18/34 (basic blocks) backbones are not supported (bottleneck R50/R101 only)"
    if not any(k.startswith("backbone.fpn_lateral") for k in keys):
        return "a backbone without FPN (C4 / DC5) is not supported (FPN only)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# anchors


def cell_anchors(
    sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]], levels: int
) -> List[List[List[float]]]:
    """detectron2 ``DefaultAnchorGenerator.generate_cell_anchors`` per level (size-major, ratio-minor), unrounded:
    ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``, box ``(-w/2, -h/2, w/2, h/2)``; a single list broadcasts."""
    sizes = list(sizes) * levels if len(sizes) == 1 else list(sizes)
    ratios = list(ratios) * levels if len(ratios) == 1 else list(ratios)
    if len(sizes) != levels or len(ratios) != levels:
        raise UnsupportedModelError(f"anchor SIZES/ASPECT_RATIOS must list 1 or {levels} levels")
    out = []
    for level_sizes, level_ratios in zip(sizes, ratios):
        cells = []
        for size in level_sizes:
            area = float(size) ** 2
            for ratio in level_ratios:
                w = math.sqrt(area / float(ratio))
                h = float(ratio) * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        out.append(cells)
    return out


# ---------------------------------------------------------------------------------------------------------------
# import


def import_state_dict(state: Dict[str, torch.Tensor], path: Path, request: Any) -> LoadedModel:
    """A ``LoadedModel`` from a detectron2 state dict (``request``: ``checkpoints.load.ImportRequest``)."""
    keys = list(state)
    problem = _key_refusals(keys)
    if problem:
        raise UnsupportedModelError(f"{path}: detectron2 checkpoint: {problem}")
    cfg, config_files = read_config(request.config)
    problem = _refusals(cfg)
    if problem:
        raise UnsupportedModelError(f"{path}: detectron2 config: {problem}")
    if request.arch is not None:
        raise CheckpointError(
            "--arch names torchvision architectures; a detectron2 model's comes from its keys and config"
        )

    state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
    stages = _blocks_per_stage(state, path)
    num_classes = _shape(state, "roi_heads.box_predictor.cls_score.weight", path)[0]  # K + 1, background last
    if request.num_classes is not None and request.num_classes != num_classes:
        raise CheckpointError(
            f"checkpoint has {num_classes} classes in roi_heads.box_predictor.cls_score (K + 1, background included) "
            f"but num_classes={request.num_classes} was given"
        )
    cfg_classes = int(cfg["MODEL.ROI_HEADS.NUM_CLASSES"])
    if request.config is not None and cfg_classes + 1 != num_classes:
        raise CheckpointError(
            f"{path} has {num_classes - 1} classes but the config says MODEL.ROI_HEADS.NUM_CLASSES = {cfg_classes}; "
            "is it the config of this checkpoint?"
        )
    fmt = str(cfg["INPUT.FORMAT"]).upper()
    mean = [float(v) for v in cfg["MODEL.PIXEL_MEAN"]]
    std = [float(v) for v in cfg["MODEL.PIXEL_STD"]]
    if len(mean) != 3 or len(std) != 3:
        raise UnsupportedModelError(f"MODEL.PIXEL_MEAN/PIXEL_STD must have 3 values (got {mean}, {std})")
    mean_rgb, std_rgb = (mean[::-1], std[::-1]) if fmt == "BGR" else (mean, std)
    image_mean = (mean_rgb[0] / 255.0, mean_rgb[1] / 255.0, mean_rgb[2] / 255.0)
    image_std = (std_rgb[0] / 255.0, std_rgb[1] / 255.0, std_rgb[2] / 255.0)
    sizes = cfg["MODEL.ANCHOR_GENERATOR.SIZES"]
    ratios = cfg["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]
    cells = cell_anchors(sizes, ratios, 5)
    stem = _shape(state, "backbone.bottom_up.stem.conv1.weight", path)[0]
    res2 = _shape(state, "backbone.bottom_up.res2.0.conv3.weight", path)[0]
    mid = _shape(state, "backbone.bottom_up.res2.0.conv1.weight", path)[0]
    fpn = _shape(state, "backbone.fpn_lateral2.weight", path)[0]
    mask_convs = sorted(
        int(m.group(1)) for k in keys for m in [re.match(r"roi_heads\.mask_head\.mask_fcn(\d+)\.weight$", k)] if m
    )
    box_res = int(cfg["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"])
    mask_res = int(cfg["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"])
    spec = FpnMaskRCNNSpec(
        num_classes=num_classes,
        blocks_per_stage=tuple(stages),
        stem_channels=stem,
        res2_channels=res2,
        bottleneck_channels=mid,
        stride_in_1x1=bool(cfg["MODEL.RESNETS.STRIDE_IN_1X1"]),
        frozen_bn=True,
        fpn_channels=fpn,
        anchor_sizes=tuple(tuple(s) for s in (sizes * 5 if len(sizes) == 1 else sizes)),
        aspect_ratios=tuple(tuple(r) for r in (ratios * 5 if len(ratios) == 1 else ratios)),
        cell_anchors=cells,
        box_pool_size=box_res,
        mask_pool_size=mask_res,
        box_sampling_ratio=int(cfg["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"]),
        mask_sampling_ratio=int(cfg["MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO"]),
        aligned=cfg["MODEL.ROI_BOX_HEAD.POOLER_TYPE"] == "ROIAlignV2",
        box_head_dim=_shape(state, "roi_heads.box_head.fc1.weight", path)[0],
        mask_head_dims=tuple(_shape(state, f"roi_heads.mask_head.mask_fcn{i}.weight", path)[0] for i in mask_convs),
        mask_predictor_dim=_shape(state, "roi_heads.mask_head.deconv.weight", path)[1],
        min_size=int(request.min_size or cfg["INPUT.MIN_SIZE_TEST"]),
        max_size=int(request.max_size or cfg["INPUT.MAX_SIZE_TEST"]),
        image_mean=image_mean,
        image_std=image_std,
        rpn_pre_nms_top_n=int(cfg["MODEL.RPN.PRE_NMS_TOPK_TEST"]),
        rpn_post_nms_top_n=int(cfg["MODEL.RPN.POST_NMS_TOPK_TEST"]),
        rpn_nms_thresh=float(cfg["MODEL.RPN.NMS_THRESH"]),
        rpn_min_size=float(cfg["MODEL.PROPOSAL_GENERATOR.MIN_SIZE"]),
        rpn_weights=_box_weights(cfg, "MODEL.RPN.BBOX_REG_WEIGHTS"),
        box_score_thresh=float(cfg["MODEL.ROI_HEADS.SCORE_THRESH_TEST"]),
        box_nms_thresh=float(cfg["MODEL.ROI_HEADS.NMS_THRESH_TEST"]),
        detections_per_img=int(cfg["TEST.DETECTIONS_PER_IMAGE"]),
        box_weights=_box_weights(cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"),
    )
    from deploy_sdk.conversion.checkpoints.torchvision import _no_random_init

    with _no_random_init():
        model = build_fpn_maskrcnn(spec)
    mapped = _map_weights(state, stages, mask_convs, num_classes, flip_input=fmt == "BGR", path=path)
    _load_exact(model, mapped, path)
    model.eval()

    semantics = FrameworkSemantics(
        source=SOURCE,
        input_channel_order=fmt.lower(),
        pixel_mean=mean,
        pixel_std=std,
        anchor_strides=[4, 8, 16, 32, 64],
        anchor_offset=float(cfg["MODEL.ANCHOR_GENERATOR.OFFSET"]),
        rpn_min_box_size=float(cfg["MODEL.PROPOSAL_GENERATOR.MIN_SIZE"]),
        rpn_min_box_strict=True,
        box_min_size=None,
        label_offset=1,
        resize="pil_bilinear",
        mask_paste="grid_sample",
        drop_empty_boxes=True,
        level_formula="floor(4 + log2(sqrt(area) / 224 + 1e-8))",
        config={
            **{k: copy.deepcopy(cfg[k]) for k in MODEL_ZOO_DEFAULTS},
            "config_files": config_files,
            "class_layout": "detectron2: background last; SDK label = detectron2 class id + 1",
        },
    )
    arch = f"detectron2_R{_depth(stages)}_FPN"
    return LoadedModel(
        model=model,
        arch=arch,
        num_classes=num_classes,
        class_names=[],
        sha256="",
        settings=read_inference_settings(model),
        source=str(path),
        config=None,
        form="detectron2 " + ("pickle (.pkl)" if Path(path).suffix == ".pkl" else "state dict"),
        semantics=semantics,
    )


def _box_weights(cfg: Mapping[str, Any], key: str) -> Tuple[float, float, float, float]:
    """The (dx, dy, dw, dh) weights of a box coder in the config."""
    weights = [float(w) for w in cfg[key]]
    if len(weights) != 4:
        raise UnsupportedModelError(f"{key} must have 4 values (dx, dy, dw, dh weights), got {weights}")
    return weights[0], weights[1], weights[2], weights[3]


_DEPTHS: Dict[Tuple[int, ...], str] = {(3, 4, 6, 3): "50", (3, 4, 23, 3): "101", (3, 8, 36, 3): "152"}


def _depth(stages: Sequence[int]) -> str:
    return _DEPTHS.get(tuple(stages), "-" + "-".join(map(str, stages)))


def _shape(state: Mapping[str, torch.Tensor], key: str, path: Path) -> Tuple[int, ...]:
    t = state.get(key)
    if t is None:
        raise CheckpointError(f"{path}: detectron2 checkpoint lacks '{key}'; is it a complete Mask R-CNN R-FPN model?")
    return tuple(int(v) for v in t.shape)


def _blocks_per_stage(state: Mapping[str, torch.Tensor], path: Path) -> List[int]:
    stages = []
    for s in range(2, 6):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"backbone\.bottom_up\.res{s}\.(\d+)\.", k)] if m}
        if not blocks or blocks != set(range(len(blocks))):
            raise CheckpointError(f"{path}: detectron2 checkpoint has no complete stage res{s}")
        stages.append(len(blocks))
    return stages


def _norm(out: Dict[str, torch.Tensor], state: Mapping[str, torch.Tensor], src: str, dst: str) -> None:
    """FrozenBN / BN parameters; detectron2 fills missing running stats of old checkpoints with 0 / 1."""
    weight = state[src + ".weight"]
    out[dst + ".weight"] = weight
    out[dst + ".bias"] = state[src + ".bias"]
    out[dst + ".running_mean"] = state.get(src + ".running_mean", torch.zeros_like(weight))
    out[dst + ".running_var"] = state.get(src + ".running_var", torch.ones_like(weight))


def _map_weights(
    state: Dict[str, torch.Tensor],
    stages: Sequence[int],
    mask_convs: Sequence[int],
    num_classes: int,
    flip_input: bool,
    path: Path,
) -> Dict[str, torch.Tensor]:
    """detectron2 key names and layouts -> the torchvision model's (see the module docstring)."""
    used: set = set()
    src = _Tracking(state, used)
    out: Dict[str, torch.Tensor] = {}
    try:
        conv1 = src["backbone.bottom_up.stem.conv1.weight"]
        out["backbone.body.conv1.weight"] = conv1.flip(1) if flip_input else conv1  # BGR input -> RGB input
        _norm(out, src, "backbone.bottom_up.stem.conv1.norm", "backbone.body.bn1")
        for s, blocks in enumerate(stages):
            for b in range(blocks):
                d2 = f"backbone.bottom_up.res{s + 2}.{b}"
                tv = f"backbone.body.layer{s + 1}.{b}"
                for i in (1, 2, 3):
                    out[f"{tv}.conv{i}.weight"] = src[f"{d2}.conv{i}.weight"]
                    _norm(out, src, f"{d2}.conv{i}.norm", f"{tv}.bn{i}")
                if f"{d2}.shortcut.weight" in state:
                    out[f"{tv}.downsample.0.weight"] = src[f"{d2}.shortcut.weight"]
                    _norm(out, src, f"{d2}.shortcut.norm", f"{tv}.downsample.1")
        for i in range(4):
            for what, tv in (("lateral", "inner_blocks"), ("output", "layer_blocks")):
                for p in ("weight", "bias"):
                    out[f"backbone.fpn.{tv}.{i}.0.{p}"] = src[f"backbone.fpn_{what}{i + 2}.{p}"]
        rpn = "proposal_generator.rpn_head"
        for d2, tv in (("conv", "conv.0.0"), ("objectness_logits", "cls_logits"), ("anchor_deltas", "bbox_pred")):
            for p in ("weight", "bias"):
                out[f"rpn.head.{tv}.{p}"] = src[f"{rpn}.{d2}.{p}"]
        for d2, tv in (("fc1", "fc6"), ("fc2", "fc7")):
            for p in ("weight", "bias"):
                out[f"roi_heads.box_head.{tv}.{p}"] = src[f"roi_heads.box_head.{d2}.{p}"]
        k = num_classes - 1
        for p in ("weight", "bias"):
            cls = src[f"roi_heads.box_predictor.cls_score.{p}"]  # [K + 1, ...], background last
            out[f"roi_heads.box_predictor.cls_score.{p}"] = torch.cat([cls[k:], cls[:k]], 0)
            reg = src[f"roi_heads.box_predictor.bbox_pred.{p}"]  # [K * 4, ...] or [4, ...] class-agnostic
            if reg.shape[0] == 4:
                reg = reg.repeat((k,) + (1,) * (reg.dim() - 1))
            elif reg.shape[0] != 4 * k:
                raise CheckpointError(
                    f"{path}: roi_heads.box_predictor.bbox_pred has {reg.shape[0]} rows; expected {4 * k} "
                    f"(class-specific) or 4 (class-agnostic) for {k} classes"
                )
            out[f"roi_heads.box_predictor.bbox_pred.{p}"] = torch.cat([torch.zeros_like(reg[:4]), reg], 0)
        for j, i in enumerate(mask_convs):
            for p in ("weight", "bias"):
                out[f"roi_heads.mask_head.{j}.0.{p}"] = src[f"roi_heads.mask_head.mask_fcn{i}.{p}"]
        for p in ("weight", "bias"):
            out[f"roi_heads.mask_predictor.conv5_mask.{p}"] = src[f"roi_heads.mask_head.deconv.{p}"]
            logits = src[f"roi_heads.mask_head.predictor.{p}"]  # [K, ...] or [1, ...] class-agnostic
            if logits.shape[0] == 1 and k != 1:
                logits = logits.repeat((k,) + (1,) * (logits.dim() - 1))
            out[f"roi_heads.mask_predictor.mask_fcn_logits.{p}"] = torch.cat([torch.zeros_like(logits[:1]), logits], 0)
    except KeyError as exc:
        raise CheckpointError(
            f"{path}: detectron2 checkpoint lacks {exc}; is it a complete Mask R-CNN R-FPN model?"
        ) from None
    ignored = {"pixel_mean", "pixel_std"}
    unused = [k for k in state if k not in used and k not in ignored and not k.endswith("num_batches_tracked")]
    if unused:
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise UnsupportedModelError(
            f"{path}: detectron2 checkpoint has weights this importer does not map ({', '.join(unused[:5])}{more}); "
            "the model has parts beyond a Mask R-CNN R-FPN"
        )
    return out


class _Tracking(dict):
    """A read-only view of the state dict that records which keys were read."""

    def __init__(self, state: Mapping[str, torch.Tensor], used: set):
        super().__init__(state)
        self._used = used

    def __getitem__(self, key: str) -> torch.Tensor:
        value = super().__getitem__(key)
        self._used.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default


def _load_exact(model: torch.nn.Module, mapped: Dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped]
    extra = [k for k in mapped if k not in expected]
    misshaped = [
        f"{k} ({list(mapped[k].shape)} vs {list(v.shape)})"
        for k, v in expected.items()
        if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    ]
    if missing or extra or misshaped:
        raise CheckpointError(
            f"{path}: detectron2 weights do not fit the rebuilt Mask R-CNN (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, mis-shaped {misshaped[:3]}); is the config the checkpoint's?"
        )
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
