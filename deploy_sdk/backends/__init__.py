"""Runtime backends of :class:`deploy_sdk.Predictor`: each moves the graph contract's tensors and nothing else.

- :mod:`deploy_sdk.backends.onnxruntime`: ``OnnxRuntimeBackend`` (the ``.onnx`` file; CPU or CUDA provider)
- :mod:`deploy_sdk.backends.tensorrt`: ``TensorRTBackend`` (an engine file; CUDA; imports tensorrt lazily)
- :mod:`deploy_sdk.backends.torch`: ``TorchBackend`` (the PyTorch deployment module; imports torch lazily)

The backend modules are imported on use so that ``import deploy_sdk.backends`` needs neither torch nor tensorrt.
"""

from deploy_sdk.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend

__all__ = ["Backend", "INPUT_NAMES", "OUTPUT_NAMES"]
