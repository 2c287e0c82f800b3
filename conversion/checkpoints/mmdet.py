"""The MMDetection 3.x Mask R-CNN importer (``mask-rcnn_r50_fpn`` / ``r101_fpn`` and custom class counts).

An MMDetection checkpoint (mmengine's ``save_checkpoint``) is ``{"meta": {...}, "state_dict": {...}, ...}``:
``meta["dataset_meta"]["classes"]`` names the classes (2.x files: ``meta["CLASSES"]``) and ``meta["cfg"]`` holds
the training config as Python text, which is read here as data (:func:`read_config`: literals and ``dict(...)``
only, nothing evaluated); without it MMDetection's ``mask-rcnn_r50_fpn`` defaults apply (:data:`DEFAULTS`). The
logs and optimizer state next to the weights are never unpickled as objects (``checkpoints.training_state``).

What MMDetection does at inference (``mmdet/models``, ``mmcv/ops``, ``mmengine``), and how it is reproduced:

- ``DetDataPreprocessor``: RGB (``bgr_to_rgb=True``) 0-255, mean [123.675, 116.28, 103.53], std [58.395, 57.12,
  57.375], zero padding after normalization to a multiple of 32: metadata ``image_mean``/``image_std`` = those / 255
  (caffe-style configs, BGR: the first convolution's input channels are reversed, mean/std written in RGB order).
- ResNet ``style='pytorch'``: the stride on the 3x3 (torchvision's); ``'caffe'``: on the 1x1.
- ``AnchorGenerator``: fixed strides [4, 8, 16, 32, 64], base size = stride, ``scales=[8]``, ratios [0.5, 1, 2],
  ``center_offset`` 0, never rounded: the cell anchors are computed as MMDetection computes them.
- RPN: sigmoid, ``nms_pre`` 1000 per level, NMS 0.7 per level, ``max_per_img`` 1000, ``min_bbox_size`` 0 meaning
  width and height ``> 0``; ``DeltaXYWHBBoxCoder`` stds [1, 1, 1, 1] (box head [0.1, 0.1, 0.2, 0.2], i.e.
  torchvision weights 10, 10, 5, 5), clip ``|log(16/1000)|``.
- ``SingleRoIExtractor``: mmcv ``RoIAlign`` 7x7 / 14x14, ``sampling_ratio`` 0, ``aligned=True``; level
  ``floor(log2(sqrt(area) / 56 + 1e-6))`` (the op contract's ``floor(4 + log2(sqrt(area) / 224) + 1e-6)``, equal
  but for boxes within ~1e-6 of a level boundary).
- ``Shared2FCBBoxHead``: softmax with the background LAST, class-specific regression without a background column:
  reordered to torchvision's background-first layout (zero regression rows / mask channel for the background);
  label id = MMDetection's 0-based label + 1. ``score_thr`` 0.05 (``>``), NMS 0.5, ``max_per_img`` 100, no small-box
  filter. ``FCNMaskHead`` 28x28, pasted with ``_do_paste_mask`` (``grid_sample``, half-pixel), ``>= 0.5``.

- Test ``Resize`` (keep ratio, scale ``(1333, 800)`` by default): runtime mode ``"mmcv_cv2"``
  (``deploy_sdk/resize_modes.py``): sizes ``int(side * factor + 0.5)``, the uint8 image resized by OpenCV bilinear.

Known differences, documented rather than reproduced: ``delta2bbox`` also clamps ``dw, dh`` below at
``-|log(16/1000)|``, which only changes boxes of deltas below -4.1 (an untrained model's); the level epsilon above.

Refused with :class:`UnsupportedModelError`: Cascade / HTC / PointRend / Mask Scoring heads, deformable convs
(DCN), GN (or other normalized) heads and backbones, ResNeXt (grouped convs), ResNet-V1d deep stems, basic-block
ResNets, FPNs with extra convs, RPNs with several convs, sigmoid classifiers, one-stage detectors, class-agnostic
mask heads, non-zero coder means, resize without keeping the ratio.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from deploy_sdk.conversion.architectures import FpnMaskRCNNSpec, build_fpn_maskrcnn
from deploy_sdk.conversion.checkpoints.files import MAX_LISTED
from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel
from deploy_sdk.conversion.checkpoints.settings import FrameworkSemantics, read_inference_settings
from deploy_sdk.conversion.checkpoints.training_state import InertStandIn
from deploy_sdk.errors import CheckpointError, UnsupportedModelError

__all__ = ["SOURCE", "DEFAULTS", "looks_like", "read_config", "import_state_dict"]

SOURCE = "mmdet"

# MMDetection 3.3.0's configs/_base_/models/mask-rcnn_r50_fpn.py and the COCO test pipeline, as far as inference
# goes: what applies when a checkpoint carries no config.
DEFAULTS: Dict[str, Any] = {
    "type": "MaskRCNN",
    "data_preprocessor": {
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "bgr_to_rgb": True,
        "pad_size_divisor": 32,
    },
    "backbone": {"type": "ResNet", "style": "pytorch", "dcn": None, "norm_cfg": {"type": "BN"}},
    "neck": {"type": "FPN", "num_outs": 5, "add_extra_convs": False, "start_level": 0},
    "rpn_head": {
        "type": "RPNHead",
        "anchor_generator": {
            "type": "AnchorGenerator",
            "scales": [8],
            "ratios": [0.5, 1.0, 2.0],
            "strides": [4, 8, 16, 32, 64],
            "center_offset": 0.0,
        },
        "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": [1.0] * 4},
    },
    "roi_head": {
        "type": "StandardRoIHead",
        "bbox_roi_extractor": {
            "type": "SingleRoIExtractor",
            "finest_scale": 56,
            "roi_layer": {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0, "aligned": True},
            "featmap_strides": [4, 8, 16, 32],
        },
        "bbox_head": {
            "type": "Shared2FCBBoxHead",
            "reg_class_agnostic": False,
            "bbox_coder": {
                "type": "DeltaXYWHBBoxCoder",
                "target_means": [0.0] * 4,
                "target_stds": [0.1, 0.1, 0.2, 0.2],
            },
            "loss_cls": {"use_sigmoid": False},
        },
        "mask_roi_extractor": {
            "type": "SingleRoIExtractor",
            "finest_scale": 56,
            "roi_layer": {"type": "RoIAlign", "output_size": 14, "sampling_ratio": 0, "aligned": True},
            "featmap_strides": [4, 8, 16, 32],
        },
        "mask_head": {"type": "FCNMaskHead", "class_agnostic": False},
    },
    "test_cfg": {
        "rpn": {"nms_pre": 1000, "max_per_img": 1000, "nms": {"type": "nms", "iou_threshold": 0.7}, "min_bbox_size": 0},
        "rcnn": {
            "score_thr": 0.05,
            "nms": {"type": "nms", "iou_threshold": 0.5},
            "max_per_img": 100,
            "mask_thr_binary": 0.5,
        },
    },
    "resize": {"scale": [1333, 800], "keep_ratio": True},
}

# Key-name prefixes only MMDetection detectors have (torchvision: rpn.head / roi_heads; detectron2:
# proposal_generator.rpn_head / backbone.bottom_up).
_MARKERS = ("rpn_head.", "roi_head.", "neck.lateral_convs.", "bbox_head.")


def looks_like(keys: Sequence[str]) -> bool:
    """Whether a state dict's keys are MMDetection's (``backbone`` / ``neck`` / ``rpn_head`` / ``roi_head``)."""
    return any(k.startswith(_MARKERS) for k in keys)


# ---------------------------------------------------------------------------------------------------------------
# config (meta["cfg"]: the config as Python text, read as literals)


def _literal(node: ast.AST) -> Any:
    """A config value: constants, lists, tuples, dicts and ``dict(k=v)`` calls; anything else raises ValueError."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):  # kept a tuple: MMDetection's own code tells them apart (Resize scale)
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {ast.dump(node)[:60]}")


def read_config(text: Any) -> Dict[str, Any]:
    """The top-level assignments of an mmengine config text whose values are literals (others are skipped).

    The text is parsed, never executed: only constants, lists, tuples, dicts and ``dict(...)`` are read."""
    if not isinstance(text, str):
        return {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    out: Dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = _literal(stmt.value)
            except ValueError:
                continue
    return out


def _merge(default: Any, given: Any) -> Any:
    if isinstance(default, dict) and isinstance(given, dict):
        merged = dict(default)
        for k, v in given.items():
            merged[k] = _merge(default.get(k), v)
        return merged
    return default if given is None else given


def _test_resize(cfg: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``Resize`` step of the test pipeline (``test_pipeline`` or ``test_dataloader.dataset.pipeline``)."""
    pipeline = cfg.get("test_pipeline")
    if not isinstance(pipeline, list):
        loader = cfg.get("test_dataloader") or {}
        pipeline = (loader.get("dataset") or {}).get("pipeline") if isinstance(loader, dict) else None
    for step in pipeline or []:
        if isinstance(step, dict) and step.get("type") in ("Resize", "mmdet.Resize"):
            return step
    return None


def model_config(meta: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool]:
    """(the model config merged over :data:`DEFAULTS`, whether the checkpoint carried a config)."""
    cfg = read_config(meta.get("cfg") if isinstance(meta, Mapping) else None)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    merged = _merge(DEFAULTS, dict(model or {}))
    resize = _test_resize(cfg)
    if resize is not None:
        merged["resize"] = _merge(DEFAULTS["resize"], resize)
    return merged, model is not None


# ---------------------------------------------------------------------------------------------------------------
# what is refused


def _key_refusals(keys: Sequence[str]) -> Optional[str]:
    has = lambda text: any(text in k for k in keys)
    if not any(k.startswith("roi_head.") for k in keys):
        if any(k.startswith("bbox_head.") for k in keys):
            return "a one-stage detector (bbox_head without RoI heads, no masks); only Mask R-CNN is supported"
        return "no roi_head.* keys: not a two-stage MMDetection detector"
    if re.search(r"roi_head\.(bbox_head|mask_head)\.\d+\.", "\n".join(keys)):
        return "Cascade Mask R-CNN / HTC (several RoI-head stages) is not supported (single-stage Mask R-CNN only)"
    if has("roi_head.semantic_head."):
        return "Hybrid Task Cascade (semantic head) is not supported"
    if has("roi_head.mask_iou_head."):
        return "Mask Scoring R-CNN (mask IoU head) is not supported"
    if has("roi_head.point_head.") or has("roi_head.mask_head.fcs."):
        return "PointRend is not supported"
    if not any(k.startswith("roi_head.mask_head.") for k in keys):
        return "the checkpoint has no mask head (a Faster R-CNN); only Mask R-CNN is supported"
    if has("conv_offset") or has(".conv2.conv."):
        return "deformable convolutions (DCN) are not supported"
    if any(re.search(r"(^|\.)gn\d*\.", k) for k in keys):
        return "GroupNorm (GN) layers are not supported (BN backbones with plain-conv heads only)"
    if has(".bn.") and any(k.startswith(("neck.", "rpn_head.", "roi_head.")) and ".bn." in k for k in keys):
        return "normalized (BN/SyncBN) FPN or heads are not supported (plain-conv heads only)"
    if has("backbone.stem."):
        return "ResNet-V1d (deep stem) backbones are not supported"
    if has("roi_head.bbox_head.shared_convs.") or has("roi_head.bbox_head.cls_convs."):
        return "box heads with convolutions (e.g. Shared4Conv1FCBBoxHead) are not supported (Shared2FCBBoxHead only)"
    if has("rpn_head.rpn_conv.0."):
        return "an RPN head with several convolutions is not supported"
    if not has("backbone.layer1.0.conv1.weight"):
        return "the backbone is not a ResNet (supported: ResNet-50/101 with FPN)"
    if not has("backbone.layer1.0.conv3.weight"):
        return "ResNet-18/34 (basic blocks) backbones are not supported (bottleneck R50/R101 only)"
    if not has("neck.lateral_convs.0.conv.weight"):
        return "the neck is not an FPN (FPN only)"
    return None


def _config_refusals(cfg: Mapping[str, Any]) -> Optional[str]:
    checks = [
        (cfg["type"] == "MaskRCNN", f"detector type {cfg['type']} is not supported (MaskRCNN only)"),
        (
            cfg["backbone"].get("type") == "ResNet",
            f"backbone {cfg['backbone'].get('type')} is not supported (ResNet only)",
        ),
        (cfg["backbone"].get("dcn") is None, "deformable convolutions (DCN) are not supported"),
        (not cfg["backbone"].get("plugins"), "backbone plugins (GCB, attention, ...) are not supported"),
        (
            (cfg["backbone"].get("norm_cfg") or {}).get("type", "BN") in ("BN", "SyncBN"),
            f"backbone norm {(cfg['backbone'].get('norm_cfg') or {}).get('type')} is not supported (BN only)",
        ),
        (cfg["backbone"].get("style", "pytorch") in ("pytorch", "caffe"), "unknown ResNet style"),
        (
            cfg["neck"].get("type") == "FPN"
            and not cfg["neck"].get("add_extra_convs")
            and int(cfg["neck"].get("num_outs", 5)) == 5
            and int(cfg["neck"].get("start_level", 0)) == 0,
            "only an FPN with 5 outputs, max-pooled P6 and no extra convs is supported",
        ),
        (cfg["rpn_head"].get("type") == "RPNHead", f"RPN head {cfg['rpn_head'].get('type')} is not supported"),
        (cfg["rpn_head"]["anchor_generator"].get("type") == "AnchorGenerator", "only AnchorGenerator is supported"),
        (
            cfg["roi_head"].get("type") == "StandardRoIHead",
            f"RoI head {cfg['roi_head'].get('type')} is not supported (StandardRoIHead only; no Cascade, HTC, "
            "PointRend, Mask Scoring)",
        ),
        (
            cfg["roi_head"]["bbox_head"].get("type") in ("Shared2FCBBoxHead", "ConvFCBBoxHead"),
            f"box head {cfg['roi_head']['bbox_head'].get('type')} is not supported (Shared2FCBBoxHead only)",
        ),
        (
            not (cfg["roi_head"]["bbox_head"].get("loss_cls") or {}).get("use_sigmoid"),
            "a sigmoid box classifier is not supported (softmax only)",
        ),
        (
            cfg["roi_head"]["mask_head"].get("type") == "FCNMaskHead",
            f"mask head {cfg['roi_head']['mask_head'].get('type')} is not supported (FCNMaskHead only)",
        ),
        (not cfg["roi_head"]["mask_head"].get("class_agnostic"), "class-agnostic mask heads are not supported"),
        (cfg["roi_head"]["mask_head"].get("norm_cfg") is None, "normalized (GN) mask heads are not supported"),
        (bool(cfg["resize"].get("keep_ratio", True)), "a test Resize without keep_ratio is not supported"),
    ]
    for ext in ("bbox_roi_extractor", "mask_roi_extractor"):
        e = cfg["roi_head"][ext]
        checks.append(
            (
                e.get("type") == "SingleRoIExtractor"
                and (e.get("roi_layer") or {}).get("type") == "RoIAlign"
                and int(e.get("finest_scale", 56)) == 56
                and list(e.get("featmap_strides")) == [4, 8, 16, 32],
                f"{ext}: only SingleRoIExtractor with RoIAlign, finest_scale 56, strides 4-32 is supported",
            )
        )
    for coder in (cfg["rpn_head"]["bbox_coder"], cfg["roi_head"]["bbox_head"]["bbox_coder"]):
        checks.append(
            (
                coder.get("type") == "DeltaXYWHBBoxCoder" and not any(coder.get("target_means") or []),
                "only DeltaXYWHBBoxCoder with zero target_means is supported",
            )
        )
    for ok, why in checks:
        if not ok:
            return why
    return None


# ---------------------------------------------------------------------------------------------------------------
# import


def _shape(state: Mapping[str, torch.Tensor], key: str, path: Path) -> Tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{path}: MMDetection checkpoint lacks {key}, which every Mask R-CNN FPN has")
    return tuple(state[key].shape)


def _class_names(meta: Any, path: Path) -> Optional[List[str]]:
    if not isinstance(meta, Mapping):
        return None
    dataset = meta.get("dataset_meta")
    classes = dataset.get("classes") if isinstance(dataset, Mapping) else None
    if classes is None:
        classes = meta.get("CLASSES")  # MMDetection 2.x
    if classes is None or isinstance(classes, InertStandIn):
        return None
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: meta.dataset_meta.classes must be a list of class names")
    return list(classes)


def _refuse_non_tensors(state: Any, path: Path) -> None:
    """The weights must all be tensors: a numpy array or another object in ``state_dict`` (read as an inert stand-in,
    ``checkpoints.training_state``) would otherwise be dropped and the model built without it."""
    if not isinstance(state, Mapping):
        return
    odd = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        more = f" and {len(odd) - MAX_LISTED} more" if len(odd) > MAX_LISTED else ""
        raise CheckpointError(
            f"{path}: state_dict entries are not tensors: {', '.join(odd[:MAX_LISTED])}{more} (numpy arrays or "
            "pickled objects, not read); re-save the weights as tensors (torch.save({'state_dict': "
            "{k: torch.as_tensor(v) for k, v in state_dict.items()}, 'meta': meta}, path))"
        )


def cell_anchors(anchor_cfg: Mapping[str, Any]) -> List[List[List[float]]]:
    """MMDetection ``AnchorGenerator.gen_single_level_base_anchors`` per level (ratio-major, scale-minor), float32
    arithmetic as there, unrounded; base size = stride, centre ``center_offset * stride``."""
    out = []
    ratios = torch.tensor([float(r) for r in anchor_cfg["ratios"]])
    scales = torch.tensor([float(s) for s in anchor_cfg["scales"]])
    for stride in anchor_cfg["strides"]:
        base = float(stride)
        center = float(anchor_cfg.get("center_offset") or 0.0) * base
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (base * w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (base * h_ratios[:, None] * scales[None, :]).view(-1)
        cells = torch.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], dim=-1)
        out.append(cells.tolist())
    return out


def import_state_dict(state: Dict[str, torch.Tensor], path: Path, request: Any) -> LoadedModel:
    """A ``LoadedModel`` from an MMDetection state dict (``request``: ``checkpoints.load.ImportRequest``; its
    ``raw`` is the whole checkpoint, whose ``meta`` gives the config and the class names)."""
    keys = list(state)
    problem = _key_refusals(keys)
    if problem:
        raise UnsupportedModelError(f"{path}: MMDetection checkpoint: {problem}")
    if request.config is not None:
        raise CheckpointError(
            "--config takes a detectron2 config.yaml; an MMDetection checkpoint carries its config in meta.cfg"
        )
    if request.arch is not None:
        raise CheckpointError(
            "--arch names torchvision architectures; an MMDetection model's comes from its keys and meta.cfg"
        )
    raw = request.raw if isinstance(request.raw, Mapping) else {}
    _refuse_non_tensors(raw.get("state_dict"), path)
    meta_obj = raw.get("meta")
    meta: Mapping[str, Any] = meta_obj if isinstance(meta_obj, Mapping) else {}
    cfg, had_config = model_config(meta)
    problem = _config_refusals(cfg)
    if problem:
        raise UnsupportedModelError(f"{path}: MMDetection config: {problem}")
    state = {k: v for k, v in state.items() if not k.startswith("data_preprocessor.")}

    stages = []
    for i in range(1, 5):
        blocks = {int(k.split(".")[2]) for k in keys if k.startswith(f"backbone.layer{i}.")}
        if not blocks:
            raise CheckpointError(f"{path}: MMDetection checkpoint lacks backbone.layer{i}")
        stages.append(max(blocks) + 1)
    stem = _shape(state, "backbone.conv1.weight", path)[0]
    res2 = _shape(state, "backbone.layer1.0.conv3.weight", path)[0]
    mid = _shape(state, "backbone.layer1.0.conv1.weight", path)[0]
    for i in range(4):
        conv2 = _shape(state, f"backbone.layer{i + 1}.0.conv2.weight", path)
        if conv2[1] != conv2[0]:
            raise UnsupportedModelError(
                f"{path}: MMDetection checkpoint: grouped 3x3 convolutions (ResNeXt) are not supported (ResNet only)"
            )
        if conv2[0] != mid * 2**i or _shape(state, f"backbone.layer{i + 1}.0.conv3.weight", path)[0] != res2 * 2**i:
            raise UnsupportedModelError(f"{path}: MMDetection checkpoint: stage widths do not double per stage")
    fpn = _shape(state, "neck.lateral_convs.0.conv.weight", path)[0]
    cls_rows = _shape(state, "roi_head.bbox_head.fc_cls.weight", path)[0]  # K + 1, background last
    num_classes = cls_rows  # SDK layout: background first, same count
    if request.num_classes is not None and request.num_classes != num_classes:
        raise CheckpointError(
            f"checkpoint has {num_classes} classes in roi_head.bbox_head.fc_cls (K + 1, background included) but "
            f"num_classes={request.num_classes} was given"
        )
    reg_rows = _shape(state, "roi_head.bbox_head.fc_reg.weight", path)[0]
    agnostic = bool(cfg["roi_head"]["bbox_head"].get("reg_class_agnostic")) or reg_rows == 4
    if reg_rows not in (4, 4 * (num_classes - 1)):
        raise CheckpointError(f"{path}: roi_head.bbox_head.fc_reg has {reg_rows} rows; expected 4 x {num_classes - 1}")
    mask_convs = sorted({int(k.split(".")[3]) for k in keys if k.startswith("roi_head.mask_head.convs.")})
    logits = _shape(state, "roi_head.mask_head.conv_logits.weight", path)[0]
    if logits != num_classes - 1:
        raise UnsupportedModelError(
            f"{path}: the mask head predicts {logits} masks for {num_classes - 1} classes "
            "(class-agnostic mask heads are not supported)"
        )
    box_in = _shape(state, "roi_head.bbox_head.shared_fcs.0.weight", path)[1]
    box_pool = int(round(math.sqrt(box_in / fpn)))
    if box_pool * box_pool * fpn != box_in:
        raise CheckpointError(f"{path}: shared_fcs.0 takes {box_in} inputs, not {fpn} x n x n")

    dp = cfg["data_preprocessor"]
    mean = [float(v) for v in dp.get("mean") or DEFAULTS["data_preprocessor"]["mean"]]
    std = [float(v) for v in dp.get("std") or DEFAULTS["data_preprocessor"]["std"]]
    if len(mean) != 3 or len(std) != 3 or not all(v > 0 for v in std):
        raise UnsupportedModelError(
            f"{path}: data_preprocessor mean/std must have 3 values, std positive (got {mean}, {std})"
        )
    # The loaded image is BGR (cv2); bgr_to_rgb turns it RGB before normalizing with mean/std in that order.
    rgb_model = bool(dp.get("bgr_to_rgb")) and not bool(dp.get("rgb_to_bgr"))
    mean_rgb, std_rgb = (mean, std) if rgb_model else (mean[::-1], std[::-1])
    anchor_cfg = cfg["rpn_head"]["anchor_generator"]
    strides = [int(s) for s in anchor_cfg["strides"]]
    if strides != [4, 8, 16, 32, 64]:
        raise UnsupportedModelError(f"{path}: anchor strides {strides} are not supported ([4, 8, 16, 32, 64] only)")
    cells = cell_anchors(anchor_cfg)
    scale = [int(v) for v in cfg["resize"].get("scale") or DEFAULTS["resize"]["scale"]]
    test = cfg["test_cfg"]
    rpn_t, rcnn_t = test["rpn"], test["rcnn"]
    box_ext, mask_ext = cfg["roi_head"]["bbox_roi_extractor"], cfg["roi_head"]["mask_roi_extractor"]
    box_layer, mask_layer = box_ext["roi_layer"], mask_ext["roi_layer"]
    aligned = bool(box_layer.get("aligned", True))
    if aligned != bool(mask_layer.get("aligned", True)):
        raise UnsupportedModelError(f"{path}: box and mask RoIAlign differ in 'aligned'")
    if int(box_layer.get("output_size", 7)) != box_pool:
        raise CheckpointError(
            f"{path}: config RoIAlign output_size {box_layer.get('output_size')} does not fit "
            f"shared_fcs.0 ({box_pool}x{box_pool})"
        )
    rpn_stds = [float(s) for s in cfg["rpn_head"]["bbox_coder"]["target_stds"]]
    box_stds = [float(s) for s in cfg["roi_head"]["bbox_head"]["bbox_coder"]["target_stds"]]
    if len(rpn_stds) != 4 or len(box_stds) != 4 or not all(v > 0 for v in rpn_stds + box_stds):
        raise UnsupportedModelError(
            f"{path}: bbox_coder target_stds must be 4 positive values (got {rpn_stds}, {box_stds})"
        )
    min_bbox = float(rpn_t.get("min_bbox_size", -1))
    spec = FpnMaskRCNNSpec(
        num_classes=num_classes,
        blocks_per_stage=tuple(stages),
        stem_channels=stem,
        res2_channels=res2,
        bottleneck_channels=mid,
        stride_in_1x1=cfg["backbone"].get("style", "pytorch") == "caffe",
        frozen_bn=True,
        fpn_channels=fpn,
        anchor_sizes=tuple((float(s) * float(anchor_cfg["scales"][0]),) for s in strides),
        aspect_ratios=tuple(tuple(float(r) for r in anchor_cfg["ratios"]) for _ in strides),
        cell_anchors=cells,
        box_pool_size=box_pool,
        mask_pool_size=int(mask_layer.get("output_size", 14)),
        box_sampling_ratio=int(box_layer.get("sampling_ratio", 0)),
        mask_sampling_ratio=int(mask_layer.get("sampling_ratio", 0)),
        aligned=aligned,
        box_head_dim=_shape(state, "roi_head.bbox_head.shared_fcs.1.weight", path)[0],
        mask_head_dims=tuple(_shape(state, f"roi_head.mask_head.convs.{i}.conv.weight", path)[0] for i in mask_convs),
        mask_predictor_dim=_shape(state, "roi_head.mask_head.upsample.weight", path)[1],
        min_size=int(request.min_size or min(scale)),
        max_size=int(request.max_size or max(scale)),
        image_mean=(mean_rgb[0] / 255.0, mean_rgb[1] / 255.0, mean_rgb[2] / 255.0),
        image_std=(std_rgb[0] / 255.0, std_rgb[1] / 255.0, std_rgb[2] / 255.0),
        rpn_pre_nms_top_n=int(rpn_t.get("nms_pre", 1000)),
        rpn_post_nms_top_n=int(rpn_t.get("max_per_img", 1000)),
        rpn_nms_thresh=float(rpn_t["nms"]["iou_threshold"]),
        rpn_min_size=max(min_bbox, 0.0),
        rpn_weights=(1.0 / rpn_stds[0], 1.0 / rpn_stds[1], 1.0 / rpn_stds[2], 1.0 / rpn_stds[3]),
        box_score_thresh=float(rcnn_t.get("score_thr", 0.05)),
        box_nms_thresh=float(rcnn_t["nms"]["iou_threshold"]),
        detections_per_img=int(rcnn_t.get("max_per_img", 100)),
        box_weights=(1.0 / box_stds[0], 1.0 / box_stds[1], 1.0 / box_stds[2], 1.0 / box_stds[3]),
    )
    from deploy_sdk.conversion.checkpoints.torchvision import _no_random_init

    with _no_random_init():
        model = build_fpn_maskrcnn(spec)
    try:
        mapped = _map_weights(state, stages, mask_convs, num_classes, agnostic, flip_input=not rgb_model)
    except KeyError as exc:
        raise CheckpointError(
            f"{path}: MMDetection checkpoint lacks {exc.args[0]}, which a Mask R-CNN FPN with these stages has"
        ) from None
    _load_exact(model, mapped, path)
    model.eval()

    semantics = FrameworkSemantics(
        source=SOURCE,
        input_channel_order="rgb" if rgb_model else "bgr",
        pixel_mean=mean,
        pixel_std=std,
        anchor_strides=strides,
        anchor_offset=0.0,  # MMDetection's center_offset is in the cell anchors already
        rpn_min_box_size=max(min_bbox, 0.0),
        rpn_min_box_strict=min_bbox >= 0,
        box_min_size=None,
        label_offset=1,
        resize="mmcv_cv2",
        mask_paste="grid_sample",
        drop_empty_boxes=False,
        level_formula="floor(log2(sqrt(area) / 56 + 1e-6)) + 2",
        config={
            "config_in_checkpoint": had_config,
            "test_resize": {
                "scale": scale,
                "keep_ratio": True,
                "backend": "cv2",
                "interpolation": "bilinear",
                "size": "int(side * scale + 0.5)",
            },
            "style": cfg["backbone"].get("style", "pytorch"),
            "depth": cfg["backbone"].get("depth"),
            "bgr_to_rgb": bool(dp.get("bgr_to_rgb")),
            "test_cfg": test,
            "rpn_target_stds": rpn_stds,
            "bbox_target_stds": box_stds,
            "reg_class_agnostic": agnostic,
            "roi_align_aligned": aligned,
            "finest_scale": 56,
            "mask_thr_binary": float(rcnn_t.get("mask_thr_binary", 0.5)),
        },
    )
    names = _class_names(meta, path)
    if names is not None:
        request.info.setdefault("class_names", names)  # load_checkpoint resolves names from the file's info
    depths: Dict[Tuple[int, ...], str] = {(3, 4, 6, 3): "r50", (3, 4, 23, 3): "r101", (3, 8, 36, 3): "r152"}
    depth = depths.get(tuple(stages), "custom")
    return LoadedModel(
        model=model,
        arch=f"mmdet_mask-rcnn_{depth}_fpn",
        num_classes=num_classes,
        class_names=[],
        sha256="",
        settings=read_inference_settings(model),
        source=str(path),
        config=None,
        form="MMDetection checkpoint",
        semantics=semantics,
    )


def _map_weights(
    state: Mapping[str, torch.Tensor],
    stages: Sequence[int],
    mask_convs: Sequence[int],
    num_classes: int,
    agnostic: bool,
    flip_input: bool,
) -> Dict[str, torch.Tensor]:
    """MMDetection key names -> the torchvision model's, background moved from last to first."""
    out: Dict[str, torch.Tensor] = {}
    used = set()

    def take(src: str, dst: str) -> None:
        out[dst] = state[src].float()
        used.add(src)

    def norm(src: str, dst: str) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            take(f"{src}.{p}", f"{dst}.{p}")
        used.add(f"{src}.num_batches_tracked")

    take("backbone.conv1.weight", "backbone.body.conv1.weight")
    if flip_input:  # a BGR model: the graph takes RGB, so the first convolution reads its channels reversed
        out["backbone.body.conv1.weight"] = out["backbone.body.conv1.weight"].flip(1)
    norm("backbone.bn1", "backbone.body.bn1")
    for i, blocks in enumerate(stages, start=1):
        for j in range(blocks):
            src, dst = f"backbone.layer{i}.{j}", f"backbone.body.layer{i}.{j}"
            for c in (1, 2, 3):
                take(f"{src}.conv{c}.weight", f"{dst}.conv{c}.weight")
                norm(f"{src}.bn{c}", f"{dst}.bn{c}")
            if f"{src}.downsample.0.weight" in state:
                take(f"{src}.downsample.0.weight", f"{dst}.downsample.0.weight")
                norm(f"{src}.downsample.1", f"{dst}.downsample.1")
    for i in range(4):
        for p in ("weight", "bias"):
            take(f"neck.lateral_convs.{i}.conv.{p}", f"backbone.fpn.inner_blocks.{i}.0.{p}")
            take(f"neck.fpn_convs.{i}.conv.{p}", f"backbone.fpn.layer_blocks.{i}.0.{p}")
    for p in ("weight", "bias"):
        take(f"rpn_head.rpn_conv.{p}", f"rpn.head.conv.0.0.{p}")
        take(f"rpn_head.rpn_cls.{p}", f"rpn.head.cls_logits.{p}")
        take(f"rpn_head.rpn_reg.{p}", f"rpn.head.bbox_pred.{p}")
        take(f"roi_head.bbox_head.shared_fcs.0.{p}", f"roi_heads.box_head.fc6.{p}")
        take(f"roi_head.bbox_head.shared_fcs.1.{p}", f"roi_heads.box_head.fc7.{p}")
        cls = state[f"roi_head.bbox_head.fc_cls.{p}"].float()
        out[f"roi_heads.box_predictor.cls_score.{p}"] = torch.cat([cls[-1:], cls[:-1]])  # background last -> first
        reg = state[f"roi_head.bbox_head.fc_reg.{p}"].float()
        if agnostic:  # one box for all classes: every class decodes the same deltas
            reg = reg.repeat((num_classes - 1,) + (1,) * (reg.dim() - 1))
        out[f"roi_heads.box_predictor.bbox_pred.{p}"] = torch.cat([torch.zeros_like(reg[:4]), reg])
        for i in mask_convs:
            take(f"roi_head.mask_head.convs.{i}.conv.{p}", f"roi_heads.mask_head.{i}.0.{p}")
        take(f"roi_head.mask_head.upsample.{p}", f"roi_heads.mask_predictor.conv5_mask.{p}")
        logits = state[f"roi_head.mask_head.conv_logits.{p}"].float()
        out[f"roi_heads.mask_predictor.mask_fcn_logits.{p}"] = torch.cat([torch.zeros_like(logits[:1]), logits])
        used.update(
            {f"roi_head.bbox_head.fc_cls.{p}", f"roi_head.bbox_head.fc_reg.{p}", f"roi_head.mask_head.conv_logits.{p}"}
        )
    left = [k for k in state if k not in used]
    if left:
        more = f" and {len(left) - MAX_LISTED} more" if len(left) > MAX_LISTED else ""
        raise UnsupportedModelError(
            f"the checkpoint has weights a Mask R-CNN R50/R101-FPN does not: {', '.join(left[:MAX_LISTED])}{more}"
        )
    return out


def _load_exact(model: torch.nn.Module, mapped: Dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    misshaped = [
        f"{k} ({list(mapped[k].shape)} vs {list(v.shape)})"
        for k, v in expected.items()
        if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    ]
    if missing or misshaped:
        raise CheckpointError(
            f"{path}: MMDetection weights do not fit the rebuilt Mask R-CNN: missing {missing[:MAX_LISTED]}, "
            f"mis-shaped {misshaped[:MAX_LISTED]}"
        )
    for k, v in expected.items():
        if k not in mapped:
            mapped[k] = v
    model.load_state_dict(mapped, strict=True)
