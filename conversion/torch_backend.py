"""PyTorch backend of :class:`deploy_sdk.Predictor`: the export's ``DeploymentModule`` itself, eager, on the CPU or
a CUDA GPU.

For development (same graph logic as the ONNX file, debuggable in Python) and for GPU checks on machines without
TensorRT. It lives in the conversion layer, next to the module it runs; the runtime finds it by name through
:data:`deploy_sdk.backends.REGISTRY` (``backend="torch"``). torch and torchvision are imported when a backend is
made, so importing this module needs neither.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Union

import numpy as np

from deploy_sdk.backends.base import OUTPUT_NAMES, Backend, parse_device
from deploy_sdk.errors import DeploySdkError, require

if TYPE_CHECKING:
    from deploy_sdk.conversion.deploy_module import DeploymentModule

__all__ = ["TorchBackend", "DEFAULT_GRAPH_BATCH_SIZES"]

#: Batch buckets of the CUDA-graph path: a batch is padded up to the next of these (past the last: its own size).
DEFAULT_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class TorchBackend(Backend):
    """Runs ``deploy_sdk.conversion.deploy_module.DeploymentModule`` built from a checkpoint.

    ``model``: a checkpoint path (anything ``deploy_sdk.conversion.checkpoint.load_checkpoint`` reads) or an already
    loaded ``deploy_sdk.conversion.checkpoint.LoadedModel``. ``device``: "cpu" or "cuda[:N]". ``max_detections``: K
    of the outputs. ``threads``: torch intra-op threads (process-wide in PyTorch, so only set when asked).
    ``trust_checkpoint``: passed to ``load_checkpoint``; True lets a checkpoint path that is more than tensors (a
    whole pickled module) be unpickled, which runs code from the file. Only for files you trust; default False.
    On CUDA the outputs stay torch tensors on the GPU, so that the predictor pastes masks there too.

    Speed options (CUDA; see :mod:`deploy_sdk.conversion.torch_graphs`):

    - ``precision``: "fp32" (default), "fp16" or "bf16": backbone + FPN, the RPN head and the box and mask heads
      run in that dtype; box decoding, softmax, NMS and clipping stay fp32 (the fp16 ONNX graph's split). RoI
      pooling is this project's kernel either way (torch.ops.maskrcnn_deploy). Allowed on CPU too (bf16 is fast
      on CPUs with AMX/AVX512_BF16; fp16 convolutions on CPU are slow).
    - ``cuda_graphs``: capture those stages into CUDA graphs per (batch, canvas) bucket with static input
      buffers; the batch is padded up to the next of ``graph_batch_sizes`` (dummy images, outputs sliced off) and
      the RoI counts of the heads up to powers of two, so a handful of graphs serve every call. At most
      ``max_graphs`` graphs per stage are kept (LRU). The first call of a new bucket captures (slow); later calls
      replay. Needs ``device="cuda"``. ``graph_capture`` replaces CUDA-graph capture by another capture function
      (``torch_graphs.eager_capture`` runs the same bucket and buffer logic on the CPU; for tests).

    Numpy images are uploaded from a reused pinned host buffer with a non-blocking copy.
    """

    name = "torch"
    device_inputs = True

    def __init__(
        self,
        model: Union[str, os.PathLike[str], Any],
        device: str = "cpu",
        max_detections: int = 100,
        threads: Optional[int] = None,
        trust_checkpoint: bool = False,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        graph_batch_sizes: Sequence[int] = DEFAULT_GRAPH_BATCH_SIZES,
        max_graphs: int = 8,
        graph_capture: Optional[Any] = None,
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
        self._graph_capture = graph_capture
        # Checked before the checkpoint is read.
        self._check_speed_options(precision, cuda_graphs, graph_batch_sizes, max_graphs)
        if isinstance(model, (str, os.PathLike)):
            loaded = checkpoint.load_checkpoint(model, trust_checkpoint=trust_checkpoint)
            self.path = os.fspath(model)
        else:
            loaded = model
            self.path = getattr(loaded, "source", "<in memory>")
        self.metadata = loaded.metadata()
        self.module: Optional[DeploymentModule] = (
            deploy_module.DeploymentModule(loaded, max_detections=max_detections).eval().to(self._device)
        )
        self.input_dtype = np.float32
        self._setup_speed(precision, cuda_graphs, max_graphs)
        self._staging: Dict[tuple, Any] = {}  # shape -> (pinned host tensor, upload event)
        self._buckets_seen: set = set()

    def _check_speed_options(self, precision: str, cuda_graphs: bool, graph_batch_sizes, max_graphs) -> None:
        from deploy_sdk.conversion import torch_graphs

        try:
            torch_graphs.precision_dtype(precision)
        except ValueError as exc:
            raise DeploySdkError(f"torch backend: {exc}") from None
        if cuda_graphs and self._device.type != "cuda" and self._graph_capture is None:
            raise DeploySdkError(
                "cuda_graphs=True needs device='cuda' (CUDA graphs exist on NVIDIA GPUs only); drop cuda_graphs on CPU"
            )
        try:
            sizes = sorted({int(b) for b in graph_batch_sizes})
        except (TypeError, ValueError):
            sizes = []
        if not sizes or sizes[0] < 1:
            raise DeploySdkError(f"graph_batch_sizes must be positive integers, got {graph_batch_sizes!r}")
        self.graph_batch_sizes = tuple(sizes)
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise DeploySdkError(f"max_graphs must be a positive integer, got {max_graphs!r}")

    def _setup_speed(self, precision: str, cuda_graphs: bool, max_graphs: int) -> None:
        from deploy_sdk.conversion import torch_graphs

        dtype = torch_graphs.precision_dtype(precision)
        self.precision = str(precision).lower()
        self.cuda_graphs = bool(cuda_graphs)
        if dtype == self._torch.float32 and not self.cuda_graphs:
            return  # the module as it is
        capture = (self._graph_capture or torch_graphs.cuda_graph_capture) if self.cuda_graphs else None
        torch_graphs.wrap_stages(self._live_module(), dtype, capture, max_graphs=max_graphs)

    def graph_stages(self) -> Dict[str, Any]:
        """name -> :class:`~deploy_sdk.conversion.torch_graphs.ShapeBuckets` of the captured stages (empty
        without ``cuda_graphs``)."""
        out = {}
        for name, sub in self._live_module().named_children():
            buckets = getattr(sub, "buckets", None)
            if buckets is not None:
                out[name] = buckets
        return out

    def _upload(self, images: np.ndarray):
        """numpy -> device tensor; on CUDA through a reused pinned buffer with a non-blocking copy."""
        torch = self._torch
        if self._device.type != "cuda":
            return torch.from_numpy(images)
        key = (images.shape, images.dtype.str)
        staged = self._staging.get(key)
        if staged is None:
            if len(self._staging) >= 4:  # a few shapes in flight at most; drop the oldest buffer
                self._staging.pop(next(iter(self._staging)))
            staged = (torch.empty(images.shape, dtype=torch.from_numpy(images[:0]).dtype, pin_memory=True),
                      torch.cuda.Event())  # fmt: skip
            self._staging[key] = staged
        host, done = staged
        done.synchronize()  # the previous upload from this buffer has finished reading it
        host.numpy()[...] = images
        out = host.to(self._device, non_blocking=True)
        done.record()
        return out

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        torch = self._torch
        batch = int(images.shape[0])
        with torch.inference_mode():
            x = images if isinstance(images, torch.Tensor) else self._upload(images)
            sizes = torch.from_numpy(image_sizes).to(self._device, non_blocking=True)
            x, sizes = self._pad_batch(x, sizes)
            values = self._live_module()(x, sizes)
            if int(values[0].shape[0]) != batch:
                values = tuple(v[:batch] for v in values)
        if self.returns_torch:
            return dict(zip(OUTPUT_NAMES, values))
        return {n: v.numpy() for n, v in zip(OUTPUT_NAMES, values)}

    def _pad_batch(self, x, sizes):
        """With CUDA graphs: pad the batch to its bucket with blank images (every step of the module is per image,
        so they change nothing for the real ones; their outputs are sliced off)."""
        if not self.cuda_graphs:
            return x, sizes
        from deploy_sdk.conversion.torch_graphs import batch_bucket

        batch = int(x.shape[0])
        target = batch_bucket(batch, self.graph_batch_sizes)
        bucket = (target,) + tuple(int(d) for d in x.shape[2:])
        if bucket not in self._buckets_seen:
            self._buckets_seen.add(bucket)
            print(
                f"torch backend: capturing CUDA graphs for batch {target}, canvas {bucket[1]}x{bucket[2]} "
                f"({self.precision}); later calls of this size replay them",
                file=sys.stderr,
                flush=True,
            )
        if target == batch:
            return x, sizes
        torch = self._torch
        pad = target - batch
        x = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))])
        sizes = torch.cat([sizes, sizes[:1].expand(pad, 2)])
        return x, sizes

    def describe(self) -> str:
        extra = [self.precision] + (["CUDA graphs"] if self.cuda_graphs else [])
        return f"{self.name} on {self.device} ({', '.join(extra)})"

    def _live_module(self) -> DeploymentModule:
        if self.module is None:
            raise DeploySdkError("the torch backend is closed: create a new Predictor to run more images")
        return self.module

    def close(self) -> None:
        self._staging = {}
        self.module = None
