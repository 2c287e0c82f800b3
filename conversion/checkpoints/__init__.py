"""Load a Mask R-CNN checkpoint, whatever form it was saved in, and refuse what does not fit.

Three input forms are read:

- a state dict (``.pth``/``.pt``), possibly nested under ``"model"``, ``"state_dict"`` or
  ``"model_state_dict"``, possibly with the ``"module."`` prefix of ``DataParallel``;
- a whole pickled ``MaskRCNN`` module (``torch.save(model)``), only when the caller trusts the file
  (``trust_checkpoint=True``, ``--trust-checkpoint``);
- ``.safetensors``, whose string metadata may carry ``arch``, ``num_classes``, ``class_names``, ``min_size``
  and ``max_size`` as JSON values (the shipped model's does).

One module per job:

- ``files``: reading ``.pth``/``.pt``/``.safetensors`` safely (``weights_only``, trust, what a refused pickle
  names), NaN/Inf refusal, unwrapping nested state dicts, the file's sha256;
- ``torchvision``: the torchvision Mask R-CNN importer (architecture from keys, build, strict load, legacy key
  names, wrapping a pickled module). Importers of other frameworks go next to it;
- ``class_names``: the names of the label ids (given, sidecar JSON, checkpoint, or ``class_<id>``);
- ``settings``: the inference settings read back from a built model;
- ``loaded_model``: :class:`LoadedModel`, what every importer returns;
- ``load``: :func:`load_checkpoint` (checks the arguments, reads the file, dispatches to the importer),
  :func:`load_torchvision_model`, :func:`shipped_model_path`.
"""

from deploy_sdk.conversion.checkpoints.load import (
    SHIPPED_MODEL,
    load_checkpoint,
    load_torchvision_model,
    shipped_model_path,
)
from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel
from deploy_sdk.conversion.checkpoints.settings import InferenceSettings, RoIAlignSettings, read_inference_settings
from deploy_sdk.conversion.checkpoints.torchvision import detect_architecture

__all__ = [
    "LoadedModel",
    "InferenceSettings",
    "RoIAlignSettings",
    "SHIPPED_MODEL",
    "load_checkpoint",
    "load_torchvision_model",
    "shipped_model_path",
    "detect_architecture",
    "read_inference_settings",
]
