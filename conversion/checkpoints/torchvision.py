"""The torchvision Mask R-CNN importer: recognize a torchvision state dict, build the model, load it strictly.

The architecture (backbone, head style, widths) and the number of classes are read from key names and tensor
shapes (:func:`detect_architecture`), a model of that architecture is built with torchvision's own builders, and
the weights are loaded strictly: missing, unexpected or mis-shaped keys are an error that names the architecture
assumed, never a silent ``strict=False``. fp16 weights are loaded as float32. Key names of torchvision < 0.13
are renamed first. A whole pickled ``MaskRCNN`` module is used as is (:func:`wrap_module`).

Other frameworks' importers (detectron2, MMDetection) are siblings of this module: each turns the tensors that
``checkpoints.files`` read into a ``LoadedModel``.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from deploy_sdk.conversion.architectures import ArchConfig, build_maskrcnn
from deploy_sdk.conversion.checkpoints.files import MAX_LISTED
from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel
from deploy_sdk.conversion.checkpoints.settings import read_inference_settings
from deploy_sdk.errors import CheckpointError, UnsupportedModelError

__all__ = [
    "detect_architecture",
    "family_problem",
    "rename_legacy_keys",
    "build_from_state_dict",
    "wrap_module",
    "set_sizes",
]


# ---------------------------------------------------------------------------------------------------------------
# what model is it


def family_problem(keys: Sequence[str]) -> Optional[str]:
    """Why a state dict is not a torchvision Mask R-CNN, or None when it looks like one."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)
    if has("backbone.bottom_up.") or has("proposal_generator."):
        family = "a detectron2 model; only torchvision Mask R-CNN checkpoints are supported so far"
    elif has("head.classification_head.module_list") or has("head.regression_head.module_list"):
        family = "an SSD / SSDlite detector (no RoI heads, no masks)"
    elif has("head.classification_head."):
        kind = "an FCOS detector" if has("head.regression_head.bbox_ctrness") else "a RetinaNet detector"
        family = f"{kind} (one-stage, no mask head)"
    elif has("roi_heads.keypoint_predictor.") or has("roi_heads.keypoint_head."):
        family = "a Keypoint R-CNN (keypoint head instead of a mask head)"
    elif has("roi_heads.box_predictor.") and not has("roi_heads.mask_predictor."):
        family = "a Faster R-CNN (boxes only, no roi_heads.mask_predictor)"
    elif not has("roi_heads.mask_predictor.") or not has("backbone."):
        if has("fc.weight") or has("classifier."):
            family = "an image classifier (no detection heads)"
        else:
            return (
                "not a torchvision Mask R-CNN state dict: expected keys such as backbone.body.*, rpn.head.*, "
                f"roi_heads.mask_predictor.*; found e.g. {', '.join(list(keys)[:3])}"
            )
    else:
        return None
    return f"this checkpoint is {family}, not a Mask R-CNN"


def detect_architecture(state: Mapping[str, torch.Tensor]) -> ArchConfig:
    """The ``ArchConfig`` a torchvision Mask R-CNN state dict was built with (sizes left at the defaults).

    Backbone from the body's key names (ResNet block type and depth of layer3; MobileNetV3 feature indices),
    the v2 head style from the normalization layers in FPN/RPN/box head, widths and classes from shapes.
    """
    keys = list(state)
    problem = family_problem(keys)
    if problem:
        raise UnsupportedModelError(problem)

    def shape(key: str) -> Tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"checkpoint lacks {key}, which every torchvision Mask R-CNN has")
        return tuple(state[key].shape)

    v2 = "backbone.fpn.inner_blocks.0.1.weight" in state or "roi_heads.box_head.0.0.weight" in state
    if "backbone.body.layer1.0.conv1.weight" in state:
        bottleneck = "backbone.body.layer1.0.conv3.weight" in state
        blocks = len({k.split(".")[3] for k in keys if k.startswith("backbone.body.layer3.")})
        depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get((bottleneck, blocks))
        if depth is None:
            raise UnsupportedModelError(
                f"ResNet backbone with {blocks} {'bottleneck' if bottleneck else 'basic'} blocks in layer3 is not "
                "supported (supported: ResNet-18/34/50/101)"
            )
        if v2:
            if depth != 50:
                raise UnsupportedModelError(f"the v2 heads are only supported on ResNet-50, not ResNet-{depth}")
            arch = "maskrcnn_resnet50_fpn_v2"
        else:
            arch = f"resnet{depth}_fpn"
    elif "backbone.body.0.0.weight" in state:
        last = max(int(k.split(".")[2]) for k in keys if re.match(r"backbone\.body\.\d+\.", k))
        if last != 16 or shape("backbone.body.0.0.weight")[0] != 16:
            raise UnsupportedModelError(
                "only the MobileNetV3-Large FPN backbone is supported among MobileNets "
                f"(this body ends at feature {last}; MobileNetV3-Large FPN ends at 16)"
            )
        arch = "mobilenet_v3_large_fpn"
    else:
        raise UnsupportedModelError(
            "unrecognized backbone (supported: ResNet-18/34/50/101 FPN, MobileNetV3-Large FPN); "
            f"first backbone keys: {', '.join([k for k in keys if k.startswith('backbone.')][:3])}"
        )

    num_classes = shape("roi_heads.box_predictor.cls_score.weight")[0]
    fpn = shape("backbone.fpn.inner_blocks.0.0.weight")[0]
    cfg = ArchConfig(arch=arch, num_classes=num_classes, fpn_channels=fpn)
    if not v2:
        cfg.box_head_dim = shape("roi_heads.box_head.fc7.weight")[0]
        dims: list[int] = []
        while f"roi_heads.mask_head.{len(dims)}.0.weight" in state:
            dims.append(shape(f"roi_heads.mask_head.{len(dims)}.0.weight")[0])
        if not dims:
            raise CheckpointError("checkpoint has a mask predictor but no roi_heads.mask_head.0.0.weight")
        cfg.mask_head_dims = tuple(dims)
        cfg.mask_predictor_dim = shape("roi_heads.mask_predictor.conv5_mask.weight")[1]
        if arch == "resnet50_fpn" and (fpn, cfg.box_head_dim, cfg.mask_head_dims, cfg.mask_predictor_dim) == (
            256,
            1024,
            (256,) * 4,
            256,
        ):
            cfg.arch = "maskrcnn_resnet50_fpn"  # exactly what torchvision's builder of that name makes
    return cfg


def rename_legacy_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Key names of torchvision < 0.13 mapped to today's (what torchvision's own _load_from_state_dict does)."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)", k)
        if m:
            k = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
        m = re.fullmatch(r"rpn\.head\.conv\.(weight|bias)", k)
        if m:
            k = f"rpn.head.conv.0.0.{m.group(1)}"
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# building and loading


def build_from_state_dict(
    state: Dict[str, torch.Tensor],
    path: Path,
    arch: Optional[str],
    num_classes: Optional[int],
    info: Dict[str, Any],
    min_size: Optional[int],
    max_size: Optional[int],
) -> LoadedModel:
    """Build the torchvision Mask R-CNN a state dict (as ``files.unwrap_state_dict`` returns it) was saved from
    and load it strictly. ``info``: the settings stored with the tensors (``min_size``/``max_size`` are used)."""
    state = rename_legacy_keys(state)
    problem = family_problem(list(state))
    if problem:
        raise UnsupportedModelError(f"{path}: {problem}")
    if arch is None:
        try:
            cfg = detect_architecture(state)
        except (UnsupportedModelError, CheckpointError) as exc:
            raise type(exc)(f"{path}: {exc}") from None
        how = "detected from the checkpoint's keys"
    else:
        try:
            detected: Optional[ArchConfig] = detect_architecture(state)
        except (UnsupportedModelError, CheckpointError):
            detected = None
        if detected is not None and _arch_family(detected.arch) == _arch_family(arch):
            cfg = detected
        else:
            # Build the asked architecture at its default widths; the strict key check below tells the user
            # precisely how the file differs from it.
            cfg = ArchConfig(arch=arch, num_classes=_num_classes_in(state) or 91)
        cfg.arch = arch
        how = "given by arch="
    ckpt_classes = cfg.num_classes
    if num_classes is not None and num_classes != ckpt_classes:
        raise CheckpointError(
            f"checkpoint has {ckpt_classes} classes in roi_heads.box_predictor but num_classes={num_classes} "
            "was given (the count includes the background)"
        )
    cfg.min_size = int(min_size or _info_int(info, "min_size") or cfg.min_size)
    cfg.max_size = int(max_size or _info_int(info, "max_size") or cfg.max_size)

    # A BatchNorm2d-built backbone stores num_batches_tracked; rebuild with the same layer type so the rebuilt
    # model is the very network that was saved (FrozenBatchNorm2d computes the same function in eval mode).
    batch_norm = any(k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in state)
    with _no_random_init():
        model = build_maskrcnn(cfg, norm_layer=nn.BatchNorm2d if batch_norm else None)
    _load_strict(model, state, f"{cfg.arch} ({how})", path)
    model.eval()
    return LoadedModel(
        model=model,
        arch=cfg.arch,
        num_classes=cfg.num_classes,
        class_names=[],
        sha256="",
        settings=read_inference_settings(model),
        source=str(path),
        config=cfg,
        form="safetensors" if path.suffix == ".safetensors" else "state dict",
    )


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip torch.nn.init's random fills while building: every tensor is overwritten by the strict load that
    follows, and filling ResNet-101 randomly costs seconds on a small CPU."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _arch_family(arch: str) -> str:
    return "resnet50" if arch in ("maskrcnn_resnet50_fpn", "resnet50_fpn") else arch


def _num_classes_in(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    t = state.get("roi_heads.box_predictor.cls_score.weight")
    return int(t.shape[0]) if t is not None else None


def _info_int(info: Dict[str, Any], key: str) -> Optional[int]:
    value: Any = info.get(key)
    if isinstance(value, (list, tuple)) and value:  # torchvision stores min_size as a tuple
        value = value[-1]
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint metadata {key}={value!r} is not an integer") from None


def _load_strict(model: nn.Module, state: Dict[str, torch.Tensor], assumed: str, path: Path) -> None:
    """load_state_dict(strict=True) after our own check, whose error lists the first offending keys."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    # num_batches_tracked only matters for training; keep the model's own where the file has none.
    for k, v in expected.items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:MAX_LISTED])}{more}")
        raise CheckpointError(
            f"{path} does not fit architecture {assumed}: {'; '.join(parts)}. "
            "Pass the right arch= / --arch, or check that the file is a complete Mask R-CNN checkpoint"
        )
    converted = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(converted, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# a whole module


def wrap_module(obj: nn.Module, source: str, arch: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    """A ``LoadedModel`` around a torchvision ``MaskRCNN`` module (switched to eval mode, float32, CPU)."""
    if not isinstance(obj, MaskRCNN):
        problem = family_problem(list(obj.state_dict()))
        if problem and not problem.startswith("not "):
            raise UnsupportedModelError(f"{source}: {problem}")
        raise UnsupportedModelError(
            f"{source} holds a {type(obj).__module__}.{type(obj).__name__} module; "
            "only torchvision MaskRCNN models are supported"
        )
    model = obj.float().cpu().eval()
    n = int(model.roi_heads.box_predictor.cls_score.out_features)
    if num_classes is not None and num_classes != n:
        raise CheckpointError(
            f"checkpoint has {n} classes in roi_heads.box_predictor but num_classes={num_classes} was given "
            "(the count includes the background)"
        )
    try:
        detected = detect_architecture(model.state_dict()).arch
    except (UnsupportedModelError, CheckpointError):
        detected = "custom"  # a MaskRCNN of another backbone still runs as the reference; export may refuse it
    if arch is not None and _arch_family(arch) != _arch_family(detected):
        raise CheckpointError(f"{source} holds a {detected} Mask R-CNN, but arch='{arch}' was given")
    return LoadedModel(
        model=model,
        arch=arch or detected,
        num_classes=n,
        class_names=[],
        sha256="",
        settings=read_inference_settings(model),
        source=source,
    )


def set_sizes(model: MaskRCNN, min_size: Optional[int], max_size: Optional[int]) -> None:
    """Override the resize sizes of a built model's transform."""
    if min_size is not None:
        model.transform.min_size = (int(min_size),)
    if max_size is not None:
        model.transform.max_size = int(max_size)
