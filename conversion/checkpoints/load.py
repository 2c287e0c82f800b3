"""The entry points: load a checkpoint file (dispatching to the importer of its framework), wrap an in-memory
model, find the shipped model."""

from __future__ import annotations

import importlib
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from deploy_sdk.conversion.architectures import SUPPORTED_ARCHS
from deploy_sdk.conversion.checkpoints.class_names import resolve_class_names
from deploy_sdk.conversion.checkpoints.files import (
    NESTING_KEYS,
    check_finite,
    file_sha256,
    read_file,
    unwrap_state_dict,
)
from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel
from deploy_sdk.conversion.checkpoints.settings import read_inference_settings
from deploy_sdk.conversion.checkpoints.torchvision import build_from_state_dict, set_sizes, wrap_module
from deploy_sdk.errors import CheckpointError, UnsupportedModelError
from deploy_sdk.local_paths import refuse_url

__all__ = [
    "SHIPPED_MODEL",
    "IMPORTERS",
    "SOURCES",
    "ImportRequest",
    "detect_source",
    "shipped_model_path",
    "load_checkpoint",
    "load_torchvision_model",
]

# Importers of other frameworks' state dicts: --from name -> module. Each module has SOURCE (its name),
# looks_like(keys) -> bool (auto-detection from the key names) and import_state_dict(state, path, request) ->
# LoadedModel (docs/architecture.md, "Where to add ..."). torchvision is the fallback when none claims the keys.
IMPORTERS: Dict[str, str] = {
    "detectron2": "deploy_sdk.conversion.checkpoints.detectron2",
    "mmdet": "deploy_sdk.conversion.checkpoints.mmdet",
}
SOURCES = ("torchvision", *IMPORTERS)


@dataclass
class ImportRequest:
    """What the caller asked of an importer besides the weights: overrides, the framework config file, the
    file's own settings (``info``) and its whole top-level object (``raw``, e.g. MMDetection's ``meta``)."""

    arch: Optional[str] = None
    num_classes: Optional[int] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    config: Optional[Path] = None
    info: Dict[str, Any] = field(default_factory=dict)
    raw: Any = None


def detect_source(keys: Sequence[str]) -> str:
    """The framework whose key names a state dict has: the importer that claims them, else torchvision."""
    claimed = [name for name, module in IMPORTERS.items() if importlib.import_module(module).looks_like(keys)]
    if len(claimed) > 1:
        raise CheckpointError(f"the checkpoint's keys look like several frameworks ({', '.join(claimed)}); pass --from")
    return claimed[0] if claimed else "torchvision"


#: The shipped model's weights inside the ``deploy_sdk`` package, found with importlib.resources. The wheel holds the
#: files (deploy_sdk/models/shapes_r18/); in a checkout that folder is a link to models/shapes_r18/, the one copy in
#: the repository, so an editable install and a plain checkout find the same file.
SHIPPED_MODEL = PurePosixPath("models/shapes_r18/model.safetensors")


def shipped_model_path() -> Path:
    """Path of the shipped model's weights (``deploy_sdk/models/shapes_r18/model.safetensors``, the repository's
    ``models/shapes_r18/``), looked up in the installed package with importlib.resources: an install from a wheel
    and an editable install of a checkout both find it. A missing file raises CheckpointError saying how to get it.
    """
    import deploy_sdk

    resource = importlib.resources.files(deploy_sdk)
    for part in SHIPPED_MODEL.parts:
        resource = resource / part
    if not resource.is_file():
        raise CheckpointError(
            f"the shipped model deploy_sdk/{SHIPPED_MODEL} is missing from the installed package in "
            f"{Path(deploy_sdk.__file__).parent}; restore models/shapes_r18/ of the checkout with git (or train it: "
            "'python models/train_shapes.py') and reinstall from it (an editable install needs no reinstall), or "
            "pass the path of a checkpoint"
        )
    if not isinstance(resource, Path):
        raise CheckpointError(
            f"the shipped model {resource} is inside an archive, not a file on disk; install maskrcnn-deploy "
            "into a folder with pip, or pass the path of a checkpoint"
        )
    return resource.resolve()  # in a checkout: models/shapes_r18/model.safetensors, not the link


def load_checkpoint(
    path: Union[str, os.PathLike[str]],
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    class_names: Union[None, str, Path, Sequence[str]] = None,
    *,
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
    trust_checkpoint: bool = False,
    source: Optional[str] = None,
    config: Union[None, str, Path] = None,
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

    ``source`` (``--from``) names the training framework (one of :data:`SOURCES`); by default it is detected from
    the state dict's key names (``LoadedModel.semantics.source`` says which). ``config`` is the framework's own
    config file (detectron2: ``config.yaml``), read as data, never executed. ``.pkl`` files (detectron2's model zoo)
    are plain pickles of numpy arrays, read with a restricted unpickler (``checkpoints.numpy_pickle``).

    Raises ``CheckpointError`` (missing/unreadable file, not a checkpoint, a pickle refused as untrusted, NaN or
    Inf in a floating-point tensor, keys or shapes that do not fit, class-count mismatch) or
    ``UnsupportedModelError`` (another model family or an unsupported backbone).
    """
    refuse_url(path, "checkpoint")
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
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"--from {source!r} is not a known source; known: {', '.join(SOURCES)}")
    if config is not None and not Path(config).is_file():
        raise CheckpointError(f"config file not found: {config}")
    sha256 = file_sha256(path)
    info: Dict[str, Any]
    if path.suffix == ".pkl":
        from deploy_sdk.conversion.checkpoints.numpy_pickle import numpy_to_torch, read_numpy_pickle

        obj, info = numpy_to_torch(read_numpy_pickle(path)), {}
    else:
        # Keep this call directly in load_checkpoint: the trust warning's stacklevel counts the frames up to here.
        obj, info = read_file(path, trust_checkpoint)
    raw = obj

    # A whole module, possibly nested in a training checkpoint dict (whose other entries may name the classes).
    if isinstance(obj, Mapping):
        for key in NESTING_KEYS:
            if isinstance(obj.get(key), nn.Module):
                info = {k: v for k, v in obj.items() if k != key and not isinstance(v, (nn.Module, torch.Tensor))}
                obj = obj[key]
                break
    # A pickled module is torchvision's; a state dict goes to the importer of --from, else of its key names.
    if isinstance(obj, nn.Module):
        if source not in (None, "torchvision"):
            raise CheckpointError(f"{path} holds a pickled torch module, not a {source} checkpoint")
        check_finite(obj.state_dict(), path)
        lm = wrap_module(obj, str(path), arch, num_classes)
        lm.form = "pickled module"
        if min_size is not None or max_size is not None:
            set_sizes(lm.model, min_size, max_size)
            lm.settings = read_inference_settings(lm.model)
    else:
        state, more_info = unwrap_state_dict(obj, path)
        info = {**more_info, **info}
        chosen = source or detect_source(list(state))
        if chosen == "torchvision":
            if config is not None:
                raise CheckpointError("--config applies to detectron2 / MMDetection checkpoints, not torchvision ones")
            lm = build_from_state_dict(state, path, arch, num_classes, info, min_size, max_size)
        else:
            importer = importlib.import_module(IMPORTERS[chosen])
            request = ImportRequest(arch, num_classes, min_size, max_size, Path(config) if config else None, info, raw)
            lm = importer.import_state_dict(state, path, request)
    lm.sha256 = sha256
    lm.class_names = resolve_class_names(class_names, path, info.get("class_names"), lm.num_classes)
    return lm


def load_torchvision_model(model: MaskRCNN, class_names: Union[None, str, Path, Sequence[str]] = None) -> LoadedModel:
    """Wrap an in-memory torchvision ``MaskRCNN`` (it is switched to eval mode and float32 on the CPU)."""
    lm = wrap_module(model, "<in memory>", None, None)
    lm.class_names = resolve_class_names(class_names, None, None, lm.num_classes)
    return lm
