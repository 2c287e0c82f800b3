"""Mask R-CNN deployment SDK: run exported Mask R-CNN models on ONNX Runtime, TensorRT or PyTorch.

``import deploy_sdk`` needs only numpy, onnxruntime and Pillow; torch and tensorrt are imported by the backends
that use them.
"""

from __future__ import annotations

from deploy_sdk.errors import (
    CheckpointError,
    DeploySdkError,
    EngineError,
    InputImageError,
    MissingDependencyError,
    PluginError,
    UnsupportedModelError,
)
from deploy_sdk.version import __version__

__all__ = [
    "__version__",
    "DeploySdkError",
    "CheckpointError",
    "UnsupportedModelError",
    "InputImageError",
    "PluginError",
    "EngineError",
    "MissingDependencyError",
    "Predictor",
    "Detections",
]


def __getattr__(name: str):
    # Predictor and Detections live in modules that are imported on first use, so that `import deploy_sdk`
    # stays cheap for tools that only need the error types or the metadata format.
    if name == "Predictor":
        from deploy_sdk.predictor import Predictor

        return Predictor
    if name == "Detections":
        from deploy_sdk.detections import Detections

        return Detections
    raise AttributeError(f"module 'deploy_sdk' has no attribute {name!r}")
