"""Compatibility module: the checkpoint loader is the ``deploy_sdk.conversion.checkpoints`` package.

Re-exports its public names so that ``from deploy_sdk.conversion.checkpoint import load_checkpoint`` (and the
other names below) keeps working.
"""

from deploy_sdk.conversion.checkpoints import (
    SHIPPED_MODEL,
    InferenceSettings,
    LoadedModel,
    RoIAlignSettings,
    detect_architecture,
    load_checkpoint,
    load_torchvision_model,
    read_inference_settings,
    shipped_model_path,
)

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
