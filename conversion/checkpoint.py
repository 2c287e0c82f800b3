"""Load a torchvision Mask R-CNN checkpoint, whatever form it was saved in, and refuse what does not fit.

Three input forms are read:

- a state dict (``.pth``/``.pt``), possibly nested under ``"model"``, ``"state_dict"`` or
  ``"model_state_dict"``, possibly with the ``"module."`` prefix of ``DataParallel``;
- a whole pickled ``MaskRCNN`` module (``torch.save(model)``), only when the caller trusts the file
  (``trust_checkpoint=True``, ``--trust-checkpoint``);
- ``.safetensors``, whose string metadata may carry ``arch``, ``num_classes``, ``class_names``, ``min_size``
  and ``max_size`` as JSON values (the shipped model's does).

Loading never runs code from the file unless asked to: ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers (and here also
``argparse.Namespace``, which torchvision's reference training script stores) and refuses any other Python
object. A file it refuses (a whole pickled module, or anything naming a function or class) is refused with a
``CheckpointError`` that names the globals the pickle references (read from the pickle's opcodes, not by
running it), unless ``trust_checkpoint=True``: only then is it unpickled with ``weights_only=False``, which runs
whatever code the file names, and a warning says so.

Weights holding NaN or Inf are refused: every floating-point tensor of the state dict (or of the trusted
module) is checked with ``torch.isfinite``, and the error names the offending tensors and how many values.

The architecture (backbone, head style, widths) and the number of classes are read from key names and tensor
shapes, a model of that architecture is built with torchvision's own builders, and the weights are loaded
strictly: missing, unexpected or mis-shaped keys are an error that names the architecture assumed, never a
silent ``strict=False``. fp16 weights are loaded as float32.

The inference settings (resize sizes, normalization, thresholds, RPN top-n, RoI poolers, anchors) are read back
from the built model and kept on :class:`LoadedModel`, so the export and the runtime use what the model itself
uses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from conversion.architectures import SUPPORTED_ARCHS, ArchConfig, build_maskrcnn
from deploy_sdk.errors import CheckpointError, UnsupportedModelError
from deploy_sdk.model_metadata import ModelMetadata

__all__ = [
    "LoadedModel",
    "InferenceSettings",
    "RoIAlignSettings",
    "load_checkpoint",
    "load_torchvision_model",
    "shipped_model_path",
    "detect_architecture",
    "read_inference_settings",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = Path("models") / "shapes_r18" / "model.safetensors"

# Nesting keys that training scripts commonly wrap a state dict in.
_NESTING_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net")
_MAX_LISTED = 5


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


@dataclass
class LoadedModel:
    """A loaded Mask R-CNN and what is known about it.

    ``model`` is a torchvision ``MaskRCNN`` in eval mode, float32, on the CPU. ``class_names[i]`` is the name of
    label id ``i``; ``[0]`` is ``"__background__"``. ``sha256`` is the checkpoint file's hash ("" for a model
    that came from memory). ``config`` is the rebuilt architecture (``None`` for a pickled module whose
    architecture was not recognized: it is then used as is).
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


# ---------------------------------------------------------------------------------------------------------------
# public entry points


def shipped_model_path() -> Path:
    """Path of the model shipped in the repository (``models/shapes_r18/model.safetensors``)."""
    path = _REPO_ROOT / SHIPPED_MODEL
    if not path.is_file():
        raise CheckpointError(
            f"the shipped model {path} is missing; it is produced by 'python models/train_shapes.py' "
            "(or restore it from the repository with git)"
        )
    return path


def load_checkpoint(
    path: Union[str, Path],
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    class_names: Union[None, str, Path, Sequence[str]] = None,
    *,
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Load a Mask R-CNN checkpoint file.

    ``arch`` (one of ``SUPPORTED_ARCHS``) and ``num_classes`` (including the background) override detection;
    a ``num_classes`` that disagrees with the checkpoint's tensors is an error. ``class_names`` is a list (with
    or without the leading background) or the path of a JSON list; by default names come from
    ``<checkpoint>.classes.json``, then from the checkpoint, else ``class_<id>``. ``min_size``/``max_size``
    override the resize sizes recorded in the checkpoint (torchvision's 800/1333 when none are).

    Trust: by default nothing in the file is executed: ``.pth``/``.pt`` files are read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only) and safetensors files hold tensors
    only. A file the safe loader refuses, such as a whole pickled module (``torch.save(model)``), is refused
    with a ``CheckpointError`` naming ``--trust-checkpoint`` and how to re-save the weights. With
    ``trust_checkpoint=True`` such a file is unpickled with ``weights_only=False``, which runs any code the file
    contains (a ``UserWarning`` says so): pass it only for files you trust, e.g. ones you saved yourself.

    Raises ``CheckpointError`` (missing/unreadable file, not a checkpoint, a pickle refused as untrusted, NaN or
    Inf in a floating-point tensor, keys or shapes that do not fit, class-count mismatch) or
    ``UnsupportedModelError`` (another model family or an unsupported backbone).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if arch is not None and arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(f"unknown architecture '{arch}'; supported: {', '.join(SUPPORTED_ARCHS)}")
    if num_classes is not None and num_classes < 2:
        raise CheckpointError(f"num_classes={num_classes} is too small: it counts the background, so at least 2")
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if value is not None and value < 1:
            raise CheckpointError(f"{name}={value} must be a positive number of pixels")
    sha256 = _sha256(path)
    obj, info = _read_file(path, trust_checkpoint)

    # A whole module, possibly nested in a training checkpoint dict (whose other entries may name the classes).
    if isinstance(obj, Mapping):
        for key in _NESTING_KEYS:
            if isinstance(obj.get(key), nn.Module):
                info = {k: v for k, v in obj.items() if k != key and not isinstance(v, (nn.Module, torch.Tensor))}
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        _check_finite(obj.state_dict(), path)
        lm = _wrap_module(obj, str(path), arch, num_classes)
        lm.form = "pickled module"
        if min_size is not None or max_size is not None:
            _set_sizes(lm.model, min_size, max_size)
            lm.settings = read_inference_settings(lm.model)
    else:
        state, more_info = _unwrap_state_dict(obj, path)
        info = {**more_info, **info}
        lm = _build_from_state_dict(state, path, arch, num_classes, info, min_size, max_size)
    lm.sha256 = sha256
    lm.class_names = _resolve_class_names(class_names, path, info.get("class_names"), lm.num_classes)
    return lm


def load_torchvision_model(model: MaskRCNN, class_names: Union[None, str, Path, Sequence[str]] = None) -> LoadedModel:
    """Wrap an in-memory torchvision ``MaskRCNN`` (it is switched to eval mode and float32 on the CPU)."""
    lm = _wrap_module(model, "<in memory>", None, None)
    lm.class_names = _resolve_class_names(class_names, None, None, lm.num_classes)
    return lm


# ---------------------------------------------------------------------------------------------------------------
# reading files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= path.stat().st_size - 8


def _read_file(path: Path, trust_checkpoint: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """(object, info): the tensors/object in the file and the settings recorded with them."""
    if _is_safetensors(path):
        return _read_safetensors(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} is not a valid safetensors file (bad header); is the file complete?")
    return _torch_load(path, trust_checkpoint), {}


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError for truncated files
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    info: Dict[str, Any] = {}
    for key, value in raw_meta.items():
        try:
            info[key] = json.loads(value)
        except (TypeError, ValueError):
            info[key] = value  # a plain string, as other tools write metadata
    return tensors, info


def _torch_load(path: Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; ``weights_only=False`` only when the caller trusts the file."""
    try:
        with _extra_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        safe_error: BaseException = exc
    except Exception as exc:
        # On arbitrary bytes the (safe) unpickler fails with whatever it trips on: IndexError, EOFError,
        # RuntimeError, ... All of them mean the same thing here.
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or safetensors file ({_first_line(exc)})") from exc

    # The safe loader refused the file. Find out what it names, from the pickle's opcodes (nothing is run).
    names = _pickled_globals(path, safe_error)
    if not names:  # not refused for naming code: the bytes are not a pickle torch can read
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint or safetensors file ({_safe_loader_reason(safe_error)})"
        ) from safe_error
    if not trust_checkpoint:
        family = _other_detector_in(names)
        if family:
            raise UnsupportedModelError(f"{path} is a pickled torchvision {family[0]} module: this checkpoint is "
                                        f"{family[1]}, not a Mask R-CNN")
        listed = sorted(names, key=_global_rank)
        more = f" and {len(listed) - _MAX_LISTED} more" if len(listed) > _MAX_LISTED else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects, not only tensors (it references "
            f"{', '.join(listed[:_MAX_LISTED])}{more}); refusing to unpickle it, because unpickling runs code named "
            "by the file. If you trust the file (e.g. a whole model saved with torch.save(model)), pass "
            "--trust-checkpoint (trust_checkpoint=True); better, re-save the weights as a state dict "
            "(torch.save(model.state_dict(), path)) or as safetensors (safetensors.torch.save_file(model.state_dict(), "
            "path))"
        ) from None

    warnings.warn(
        f"trust_checkpoint (--trust-checkpoint): unpickling {path} with torch.load(weights_only=False), which runs "
        "any code the file contains; do this only for files you trust",
        UserWarning,
        stacklevel=4,  # the caller of load_checkpoint
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"cannot unpickle {path} ({_first_line(exc)}; safe loader said: {_safe_loader_reason(safe_error)})"
        ) from exc


def _extra_safe_globals() -> contextlib.AbstractContextManager:
    """Let the safe loader also build ``argparse.Namespace``: torchvision's reference training script saves its
    arguments as ``{"model": ..., "optimizer": ..., "args": Namespace(...)}``. The safe loader only sets data
    attributes on it (no ``__setstate__``, no code), so allowing it does not let the file run anything."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _pickled_globals(path: Path, safe_error: BaseException) -> List[str]:
    """The globals (classes, functions) a pickle refused by the safe loader references; [] when unknown.

    For a zip checkpoint, torch lists them by scanning the pickle's opcodes; for a legacy (non-zip) file, the
    safe loader's own message names the one it stopped at."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # a zip that is not a torch checkpoint, or a damaged one: fall back to the message
            pass
    return re.findall(r"\b(?:GLOBAL|Unsupported class) ([\w.]+)", str(safe_error))[:1]


# torchvision detection classes that are not Mask R-CNN, and what they are (see _family_problem).
_OTHER_DETECTORS = {
    "FasterRCNN": "a Faster R-CNN (boxes only, no mask head)",
    "KeypointRCNN": "a Keypoint R-CNN (keypoint head instead of a mask head)",
    "RetinaNet": "a RetinaNet detector (one-stage, no mask head)",
    "FCOS": "an FCOS detector (one-stage, no mask head)",
    "SSD": "an SSD / SSDlite detector (no RoI heads, no masks)",
}


def _other_detector_in(names: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(class, description) when a pickle's globals name a torchvision detector other than Mask R-CNN."""
    classes = {n.rsplit(".", 1)[-1] for n in names if n.startswith("torchvision.models.detection.")}
    if "MaskRCNN" in classes:
        return None
    for cls, what in _OTHER_DETECTORS.items():
        if cls in classes:
            return cls, what
    return None


def _global_rank(name: str) -> Tuple[int, str]:
    """Order in which refused globals are listed: code from outside torch/torchvision first (the suspicious
    part), then the model class, then the rest."""
    if name.split(".")[0] not in ("torch", "torchvision"):
        return 0, name
    if name.startswith("torchvision.models.detection.") and name.rsplit(".", 1)[-1] in ("MaskRCNN", *_OTHER_DETECTORS):
        return 1, name
    return 2, name


def _safe_loader_reason(exc: BaseException) -> str:
    """The useful line of torch's weights-only error (it starts with paragraphs on how to bypass the check)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if m:
        return m.group(1).strip()[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "(1)", "(2)", "Check the "))]
    return (useful or lines or [type(exc).__name__])[0][:200]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unwrap_state_dict(obj: Any, path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors of a (possibly nested) state dict, and any settings stored next to them."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a MaskRCNN module; "
            "save the model with torch.save(model.state_dict(), path)"
        )
    info: Dict[str, Any] = {}
    for _ in range(3):  # {"model": {"state_dict": {...}}} happens
        nested = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        info.update({k: v for k, v in obj.items() if k != nested and not isinstance(v, (Mapping, torch.Tensor))})
        obj = obj[nested]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:_MAX_LISTED]))}); "
            "it is not a model checkpoint"
        )
    _check_finite(tensors, path)
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return _rename_legacy_keys(tensors), info


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse NaN/Inf in any floating-point tensor, naming the first offending tensors and their counts."""
    bad: List[Tuple[str, int]] = []
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append((key, int(t.numel() - torch.isfinite(t).sum())))
    if not bad:
        return
    total = sum(n for _, n in bad)
    if len(bad) == 1:
        where = f"'{bad[0][0]}'"
    else:
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        where = f"{len(bad)} tensors: " + ", ".join(f"'{k}' ({n})" for k, n in bad[:_MAX_LISTED]) + more
    raise CheckpointError(
        f"{path}: {total} non-finite value{'s' if total != 1 else ''} (NaN/Inf) in {where}; "
        "the weights are corrupt or training diverged"
    )


def _rename_legacy_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
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
# what model is it


def _family_problem(keys: Sequence[str]) -> Optional[str]:
    """Why a state dict is not a torchvision Mask R-CNN, or None when it looks like one."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
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
    return None


def detect_architecture(state: Mapping[str, torch.Tensor]) -> ArchConfig:
    """The ``ArchConfig`` a torchvision Mask R-CNN state dict was built with (sizes left at the defaults).

    Backbone from the body's key names (ResNet block type and depth of layer3; MobileNetV3 feature indices),
    the v2 head style from the normalization layers in FPN/RPN/box head, widths and classes from shapes.
    """
    keys = list(state)
    problem = _family_problem(keys)
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
        dims = []
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


def _build_from_state_dict(
    state: Dict[str, torch.Tensor],
    path: Path,
    arch: Optional[str],
    num_classes: Optional[int],
    info: Dict[str, Any],
    min_size: Optional[int],
    max_size: Optional[int],
) -> LoadedModel:
    problem = _family_problem(list(state))
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
            cfg = detect_architecture(state)
            same_family = _arch_family(cfg.arch) == _arch_family(arch)
        except (UnsupportedModelError, CheckpointError):
            cfg, same_family = None, False
        if cfg is None or not same_family:
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
    value = info.get(key)
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
                more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:_MAX_LISTED])}{more}")
        raise CheckpointError(
            f"{path} does not fit architecture {assumed}: {'; '.join(parts)}. "
            "Pass the right arch= / --arch, or check that the file is a complete Mask R-CNN checkpoint"
        )
    converted = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(converted, strict=True)


def _wrap_module(obj: nn.Module, source: str, arch: Optional[str], num_classes: Optional[int]) -> LoadedModel:
    if not isinstance(obj, MaskRCNN):
        problem = _family_problem(list(obj.state_dict()))
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


def _set_sizes(model: MaskRCNN, min_size: Optional[int], max_size: Optional[int]) -> None:
    if min_size is not None:
        model.transform.min_size = (int(min_size),)
    if max_size is not None:
        model.transform.max_size = int(max_size)


# ---------------------------------------------------------------------------------------------------------------
# settings and names


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


def _resolve_class_names(
    given: Union[None, str, Path, Sequence[str]],
    path: Optional[Path],
    from_checkpoint: Optional[Sequence[str]],
    num_classes: int,
) -> List[str]:
    """Names indexed by label id, background first: ``given``, a sidecar JSON, the checkpoint, else class_<id>."""
    origin = "class_names"
    names: Optional[Sequence[str]] = None
    if isinstance(given, (str, Path)):
        names, origin = _read_names_json(Path(given)), str(given)
    elif given is not None:
        names = list(given)
    elif path is not None:
        for sidecar in (Path(str(path) + ".classes.json"), path.with_suffix(".classes.json")):
            if sidecar.is_file():
                names, origin = _read_names_json(sidecar), str(sidecar)
                break
    if names is None and from_checkpoint is not None:
        names, origin = from_checkpoint, "the checkpoint's class_names"
    if names is None:
        return ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    names = [str(n) for n in names]
    if len(names) == num_classes - 1:  # given without the background
        names = ["__background__"] + names
    if len(names) != num_classes:
        raise CheckpointError(
            f"{origin} lists {len(names)} names but the model has {num_classes} classes including the background "
            f"({num_classes - 1} without it)"
        )
    return names


def _read_names_json(path: Path) -> List[str]:
    if not path.is_file():
        raise CheckpointError(f"class names file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read class names from {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("class_names", data.get("classes"))
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise CheckpointError(
            f"{path} must hold a JSON list of class names (or {{\"class_names\": [...]}}), index = label id"
        )
    return data

