"""ONNX Runtime backend: runs the exported ``.onnx`` file as is, on the CPU or the CUDA execution provider."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

from deploy_sdk.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend, check_threads, parse_device
from deploy_sdk.backends.onnxruntime_packages import cuda_provider_missing, warn_if_several_installed
from deploy_sdk.errors import DeploySdkError, EngineError, require
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["OnnxRuntimeBackend", "session_options"]

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def session_options(threads: Optional[int] = None) -> Any:
    """ONNX Runtime session options for this graph: all graph optimizations, ``threads`` intra-op threads.

    One inter-op thread: the graph is a chain with little branch parallelism, and extra pools only compete with
    the intra-op pool for the same cores.
    """
    ort = require("onnxruntime", "gpu", "the onnxruntime backend")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    threads = check_threads(threads)
    if threads:
        so.intra_op_num_threads = threads
    return so


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime ``InferenceSession`` on an exported deployment graph.

    ``device``: "cpu" (CPUExecutionProvider) or "cuda[:N]" (CUDAExecutionProvider, needs the ``onnxruntime-gpu``
    package). ``threads``: intra-op threads (default: ONNX Runtime's, one per physical core).
    ``InferenceSession.run`` may be called from several threads at once, so this backend is thread safe.
    """

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: os.PathLike[str] | str, device: str = "cpu", threads: Optional[int] = None):
        ort = require("onnxruntime", "gpu", "the onnxruntime backend")
        self.session = None
        threads = check_threads(threads)
        self.path = os.fspath(path)
        kind, index = parse_device(device)
        self.device = f"cuda:{index}" if kind == "cuda" else "cpu"
        if not os.path.isfile(self.path):
            raise EngineError(
                f"ONNX model not found: {self.path}; export one with: maskrcnn-deploy export CKPT -o MODEL.onnx"
            )
        warn_if_several_installed()
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise cuda_provider_missing("device='cuda' with the onnxruntime backend", ort.get_available_providers())
            providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(self.path, sess_options=session_options(threads), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid graphs
            raise EngineError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from exc
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, source=self.path)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if set(INPUT_NAMES) - set(inputs) or set(OUTPUT_NAMES) - outputs:
            raise EngineError(
                f"{self.path} is not a deployment graph: inputs {sorted(inputs)} / outputs {sorted(outputs)}, "
                f"expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        image_input = inputs["images"]
        if image_input.type not in _ORT_TYPES:
            raise EngineError(f"{self.path}: input 'images' is {image_input.type}; expected float32 or uint8")
        self.input_dtype = _ORT_TYPES[image_input.type]
        shape = list(image_input.shape)
        self.max_batch_size = shape[0] if isinstance(shape[0], int) else None
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.fixed_size = (shape[2], shape[3])
        elif self.metadata.fixed_height and self.metadata.fixed_width:
            self.fixed_size = (int(self.metadata.fixed_height), int(self.metadata.fixed_width))

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        if self.session is None:
            raise DeploySdkError(f"onnxruntime backend for {os.path.basename(self.path)} is closed")
        values = self.session.run(list(OUTPUT_NAMES), {"images": images, "image_sizes": image_sizes})
        return dict(zip(OUTPUT_NAMES, values))

    def close(self) -> None:
        self.session = None

    def describe(self) -> str:
        provider = self.session.get_providers()[0] if self.session else "(closed)"
        return f"onnxruntime {provider} {os.path.basename(self.path)}"
