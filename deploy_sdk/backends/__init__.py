"""Runtime backends of :class:`deploy_sdk.Predictor`: each moves the graph contract's tensors and nothing else.

- :mod:`deploy_sdk.backends.onnxruntime`: ``OnnxRuntimeBackend`` (the ``.onnx`` file; CPU or CUDA provider)
- :mod:`deploy_sdk.backends.tensorrt`: ``TensorRTBackend`` (an engine file; CUDA; imports tensorrt lazily)
- :mod:`deploy_sdk.backends.openvino`: ``OpenVinoBackend`` (the ``.onnx`` file, inlined in memory; CPU or Intel GPU;
  imports openvino and onnx lazily; needs the ``openvino`` extra)
- :mod:`deploy_sdk.conversion.torch_backend`: ``TorchBackend`` (the PyTorch deployment module; part of the
  conversion layer, next to the module it runs; needs the ``convert`` extra)

The predictor finds a backend class by name in :data:`REGISTRY` ("module:Class" strings) and imports its module
on use, so that ``import deploy_sdk.backends`` needs neither torch nor tensorrt, and the runtime layer never
imports the conversion layer: only this table names it.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict

from deploy_sdk.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend
from deploy_sdk.errors import DeploySdkError, MissingDependencyError

__all__ = ["Backend", "INPUT_NAMES", "OUTPUT_NAMES", "REGISTRY", "backend_class"]

# Backend name -> "module:Class". The module is imported only when a backend of that name is made.
REGISTRY: Dict[str, str] = {
    "onnxruntime": "deploy_sdk.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "deploy_sdk.backends.tensorrt:TensorRTBackend",
    "openvino": "deploy_sdk.backends.openvino:OpenVinoBackend",
    "torch": "deploy_sdk.conversion.torch_backend:TorchBackend",
}

# The pip extra that provides what a backend's module needs (named when that module cannot be imported).
_EXTRAS: Dict[str, str] = {"onnxruntime": "", "tensorrt": "gpu", "openvino": "openvino", "torch": "convert"}


def backend_class(name: str) -> Callable[..., Backend]:
    """The class registered as backend ``name``, its module imported now.

    Raises :class:`DeploySdkError` for a name that is not registered, and :class:`MissingDependencyError` naming
    the pip extra when the module (or a package it needs) is not installed.
    """
    try:
        target = REGISTRY[name]
    except KeyError:
        raise DeploySdkError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(name)
        if not extra:
            raise  # a module of the base install: a broken installation, keep the traceback
        missing = getattr(exc, "name", None) or module_name
        raise MissingDependencyError(missing, extra, f"the {name} backend") from exc
    return getattr(module, class_name)
