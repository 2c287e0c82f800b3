"""PyTorch backend of :class:`deploy_sdk.Predictor`: the export's ``DeploymentModule`` itself, eager, on the CPU or
a CUDA GPU.

For development (same graph logic as the ONNX file, debuggable in Python) and for GPU checks on machines without
TensorRT. It lives in the conversion layer, next to the module it runs; the runtime finds it by name through
:data:`deploy_sdk.backends.BACKENDS` (``backend="torch"``). torch and torchvision are imported when a backend is
made, so importing this module needs neither.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np

from deploy_sdk.backends.base import OUTPUT_NAMES, Backend, parse_device
from deploy_sdk.errors import DeploySdkError, require

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Runs ``deploy_sdk.conversion.deploy_module.DeploymentModule`` built from a checkpoint.

    ``model``: a checkpoint path (anything ``deploy_sdk.conversion.checkpoint.load_checkpoint`` reads) or an already loaded
    ``deploy_sdk.conversion.checkpoint.LoadedModel``. ``device``: "cpu" or "cuda[:N]". ``max_detections``: K of the outputs.
    ``threads``: torch intra-op threads (process-wide in PyTorch, so only set when asked).
    ``trust_checkpoint``: passed to ``load_checkpoint``; True lets a checkpoint path that is more than tensors (a
    whole pickled module) be unpickled, which runs code from the file. Only for files you trust; default False.
    On CUDA the outputs stay torch tensors on the GPU, so that the predictor pastes masks there too.
    """

    name = "torch"
    device_inputs = True

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]", Any],
        device: str = "cpu",
        max_detections: int = 100,
        threads: Optional[int] = None,
        trust_checkpoint: bool = False,
    ):
        purpose = "the torch backend"
        torch = require("torch", "convert", purpose)
        require("torchvision", "convert", purpose)
        require("onnx", "convert", purpose)  # the deployment module's RoIAlign carries its ONNX function
        from deploy_sdk.conversion import checkpoint, deploy_module
        self._torch = torch
        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise DeploySdkError("device='cuda' was asked for the torch backend, but torch sees no CUDA GPU")
        self._device = torch.device(f"cuda:{index}" if kind == "cuda" else "cpu")
        self.device = str(self._device)
        self.returns_torch = kind == "cuda"
        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(model, (str, os.PathLike)):
            loaded = checkpoint.load_checkpoint(model, trust_checkpoint=trust_checkpoint)
            self.path = os.fspath(model)
        else:
            loaded = model
            self.path = getattr(loaded, "source", "<in memory>")
        self.metadata = loaded.metadata()
        self.module = deploy_module.DeploymentModule(loaded, max_detections=max_detections).eval().to(self._device)
        self.input_dtype = np.float32

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        torch = self._torch
        with torch.inference_mode():
            x = images if isinstance(images, torch.Tensor) else torch.from_numpy(images).to(self._device)
            sizes = torch.from_numpy(image_sizes).to(self._device)
            values = self.module(x, sizes)
        if self.returns_torch:
            return dict(zip(OUTPUT_NAMES, values))
        return {n: v.numpy() for n, v in zip(OUTPUT_NAMES, values)}

    def close(self) -> None:
        self.module = None
