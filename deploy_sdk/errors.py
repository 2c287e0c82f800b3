"""The SDK's error hierarchy.

Every error the SDK raises on purpose derives from :class:`DeploySdkError`. The CLI prints those as one line on
stderr and exits non-zero; anything else is a bug and keeps its traceback. Messages say what was asked, what
was found, and what to do.
"""

from __future__ import annotations

__all__ = [
    "DeploySdkError",
    "CheckpointError",
    "UnsupportedModelError",
    "InputImageError",
    "PluginError",
    "EngineError",
    "MissingDependencyError",
]


class DeploySdkError(Exception):
    """Root of every error the SDK raises on purpose."""


class CheckpointError(DeploySdkError):
    """A checkpoint file is missing, unreadable, corrupt, or does not match the architecture asked for."""


class UnsupportedModelError(DeploySdkError):
    """The model is of a family or configuration this SDK does not support (yet)."""


class InputImageError(DeploySdkError):
    """An input image has the wrong type, dtype, shape or channel count, or is empty or too large."""


class PluginError(DeploySdkError):
    """The RoIAlign plugin library is missing, cannot be built, or does not match the TensorRT in use."""


class EngineError(DeploySdkError):
    """A TensorRT engine or ONNX model file is missing, corrupt, or was built for another TensorRT version or GPU."""


class MissingDependencyError(DeploySdkError):
    """An optional dependency (torch, tensorrt, ...) is needed for what was asked but is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed; "
            f"install it with: pip install 'maskrcnn-deploy[{extra}]'"
        )


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
