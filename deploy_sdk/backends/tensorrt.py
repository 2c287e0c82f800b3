"""TensorRT backend: a serialized engine from ``maskrcnn-deploy build``, with the RoIAlign plugin loaded first.

Thin by design (it cannot run on machines without a GPU, so every line here is one fewer that is only tested on a
GPU machine): read the engine container (``deploy_sdk.engine_file``) and check it against this TensorRT and GPU,
load the plugin library into TensorRT's registry, deserialize, then per call ``set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3`` on the backend's own CUDA stream.

Device memory and streams come from torch (``torch.cuda``), which the GPU install has anyway for the predictor's
GPU mask pasting; outputs are returned as torch CUDA tensors so masks are pasted on the GPU.

- One execution context per stream: this backend owns one context and one stream. For concurrent inference on
  one GPU, create one backend (one ``Predictor``) per stream; a single backend serializes calls.
- Device buffers are allocated for the largest shape seen so far and reused; the host side uses a pinned staging
  buffer so the upload is an asynchronous DMA. Images the predictor pre-processed on this GPU
  (``deploy_sdk.preprocessing_torch``, the default for this backend) arrive as CUDA tensors and are copied device to
  device instead, ordered after the pre-processing stream.
- ``cuda_graphs=True`` captures one CUDA graph per (batch, height, width) and replays it. TensorRT refuses capture
  for engines with data-dependent shapes inside (NMS, NonZero); then the backend warns once and runs normally.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np

from deploy_sdk.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend, parse_device
from deploy_sdk.errors import DeploySdkError, EngineError, MissingDependencyError, PluginError, require
from deploy_sdk.plugins import MULTILEVEL_OP, PLUGIN_VERSION

# Type-checked against the tensorrt-stubs package (tests/deploy_sdk/backends/test_backends_tensorrt.py runs mypy).
if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["TensorRTBackend", "import_tensorrt", "load_plugin_library", "PLUGIN_CREATOR", "TENSORRT_HOW_TO"]

#: (op name, plugin version) of the creator the engine's RoIAlign layers are built and deserialized with: the
#: ONNX parser looks plugins up by the node's op name, this version and the empty namespace.
PLUGIN_CREATOR = (MULTILEVEL_OP, PLUGIN_VERSION)
_FIX_PLUGIN = (
    "install maskrcnn-deploy where nvcc and this TensorRT's headers are present, so that the library it compiles has "
    "the plugin (TENSORRT_INCLUDE_DIR=<TensorRT>/include pip install ...; in a source checkout "
    "TENSORRT_INCLUDE_DIR=<TensorRT>/include python -c 'import deploy_sdk.plugins as p; "
    "print(p.library_path(cuda=True))' builds it), or point MASKRCNN_DEPLOY_PLUGIN_LIBRARY at a matching build"
)


# Where TensorRT comes from: it is not a dependency of the base install, and not on every package index.
TENSORRT_HOW_TO = (
    "install TensorRT on a machine with an NVIDIA GPU and its driver (an engine runs only on the GPU type it was "
    "built on): pip install tensorrt (NVIDIA's wheels) or pip install 'maskrcnn-deploy[gpu]', or the TensorRT "
    "archives from developer.nvidia.com/tensorrt; without a GPU, run the .onnx file on ONNX Runtime or OpenVINO"
)


def import_tensorrt(purpose: str) -> Any:
    """The ``tensorrt`` module: the one import of TensorRT, for the backend and the engine builder alike.

    Without it, :class:`MissingDependencyError` in one line: ``purpose`` (what TensorRT was needed for, e.g. "the
    tensorrt backend", "maskrcnn-deploy build") needs TensorRT and a GPU, and where TensorRT comes from. A type-stub
    package (``tensorrt-stubs``) or a leftover directory can make ``import tensorrt`` succeed as an empty namespace
    package, without even a version; that counts as not installed. Cheap: call it before anything heavy is imported.
    """
    try:
        import tensorrt as trt_module
    except ImportError as exc:
        raise _missing_tensorrt(purpose, "is not installed") from exc
    if not hasattr(trt_module, "__version__"):
        raise _missing_tensorrt(purpose, "is not installed (only its type stubs were found)")
    return trt_module


def _missing_tensorrt(purpose: str, state: str) -> MissingDependencyError:
    error = MissingDependencyError("tensorrt", "gpu", purpose)
    error.args = (
        f"{purpose} needs TensorRT and an NVIDIA GPU; TensorRT (the 'tensorrt' package) {state}: {TENSORRT_HOW_TO}",
    )
    return error


def load_plugin_library(registry: trt.IPluginRegistry, library: Optional[os.PathLike] = None) -> str:
    """Load the RoIAlign plugin library into ``registry`` (a TensorRT ``IPluginRegistry``); return its path.

    ``library`` defaults to ``deploy_sdk.plugins.library_path(cuda=True)`` (the installed library). Raises
    :class:`PluginError` naming the plugin, the path searched and the fix when the library is missing, fails to
    load (e.g. built against another TensorRT: unresolved symbols), or does not register the creator.
    """
    name, version = PLUGIN_CREATOR
    if library is None:
        from deploy_sdk import plugins

        try:
            library = plugins.library_path(cuda=True)
        except PluginError as exc:
            raise PluginError(
                f"the TensorRT plugin '{name}' (version {version}) is not available: {exc}; {_FIX_PLUGIN}"
            ) from exc
    path = os.fspath(library)
    if not os.path.isfile(path):
        raise PluginError(f"the TensorRT plugin library for '{name}' was not found at {path}; {_FIX_PLUGIN}")
    error: Optional[Exception] = None
    handle: Any = None
    try:
        handle = registry.load_library(path)
    except Exception as exc:  # TensorRT raises RuntimeError/TypeError subclasses of its own
        error = exc
    if handle is None:
        detail = f" ({error})" if error else ""
        raise PluginError(
            f"TensorRT could not load the plugin library {path}{detail}; it was probably built against another "
            f"TensorRT version than the one installed; {_FIX_PLUGIN}"
        )
    if registry.get_creator(name, version, "") is None:
        raise PluginError(
            f"{path} loaded but registered no '{name}' version {version} creator: the library was built without "
            f"the TensorRT part (TensorRT headers were not found at build time); {_FIX_PLUGIN}"
        )
    return path


def _dims(dims: trt.Dims) -> Tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class TensorRTBackend(Backend):
    """Run a ``maskrcnn-deploy`` engine file on a CUDA GPU.

    ``path``: the engine file (header + plan, see ``deploy_sdk.engine_file``). ``device``: "cuda[:N]".
    ``plugin_library``: the RoIAlign plugin library (default: found or built by ``deploy_sdk.plugins``).
    ``cuda_graphs``: capture and replay a CUDA graph per input shape where TensorRT allows it.
    """

    name = "tensorrt"
    returns_torch = True
    device_inputs = True

    def __init__(
        self,
        path: os.PathLike[str] | str,
        device: str = "cuda",
        plugin_library: Optional[os.PathLike] = None,
        cuda_graphs: bool = False,
    ):
        kind, index = parse_device(device)
        if kind != "cuda":
            raise DeploySdkError(f"the tensorrt backend runs on a CUDA GPU; device={device!r} was asked")
        from deploy_sdk.engine_file import check_engine_compatible, current_gpu, read_engine_file

        self.path = os.fspath(path)
        header, plan = read_engine_file(self.path)  # EngineError for a missing/foreign/corrupt file, before TRT
        trt_mod = import_tensorrt("the tensorrt backend")
        torch = require("torch", "convert", "the tensorrt backend (CUDA buffers and streams)")
        if not torch.cuda.is_available():
            raise DeploySdkError("the tensorrt backend needs a CUDA GPU, but torch sees none")
        check_engine_compatible(header, trt_mod.__version__, current_gpu(index), source=self.path)
        self._trt, self._torch = trt_mod, torch
        self.device = f"cuda:{index}"
        self._device = torch.device(self.device)
        self.metadata = header.metadata
        self._logger: trt.ILogger = trt_mod.Logger(trt_mod.Logger.WARNING)
        self._runtime: trt.Runtime = trt_mod.Runtime(self._logger)
        self.plugin_library = load_plugin_library(self._runtime.get_plugin_registry(), plugin_library)
        with torch.cuda.device(self._device):
            engine: Optional[trt.ICudaEngine] = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"TensorRT could not deserialize {self.path}; rebuild it with maskrcnn-deploy build")
            self._engine: trt.ICudaEngine = engine
            self._context: trt.IExecutionContext = engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self._device)
        self._check_io()
        self._buffers: Dict[str, Any] = {}
        self._pinned: Optional[Any] = None
        self._cuda_graphs = bool(cuda_graphs)
        self._graphs: Dict[Tuple[int, ...], Any] = {}

    def _check_io(self) -> None:
        trt_mod, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt_mod.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt_mod.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(INPUT_NAMES) or set(OUTPUT_NAMES) - set(outputs):
            raise EngineError(
                f"{self.path}: engine tensors in {inputs} / out {outputs} do not follow the deployment graph contract "
                f"(in {list(INPUT_NAMES)}, out {list(OUTPUT_NAMES)})"
            )
        self._dtypes = {n: np.dtype(trt_mod.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.input_dtype = self._dtypes["images"].type
        lo, _, hi = (_dims(d) for d in engine.get_tensor_profile_shape("images", 0))
        self.max_batch_size = int(hi[0])
        self.min_batch_size = int(lo[0])
        self.fixed_size = (int(hi[2]), int(hi[3])) if (lo[2], lo[3]) == (hi[2], hi[3]) else None
        self._min_hw, self._max_hw = (int(lo[2]), int(lo[3])), (int(hi[2]), int(hi[3]))

    def check_inputs(self, images: np.ndarray, image_sizes: np.ndarray) -> None:
        super().check_inputs(images, image_sizes)
        b, _, h, w = images.shape
        if b < self.min_batch_size:
            raise DeploySdkError(
                f"tensorrt backend: batch {b} is below the engine profile's minimum {self.min_batch_size}"
            )
        if not (self._min_hw[0] <= h <= self._max_hw[0] and self._min_hw[1] <= w <= self._max_hw[1]):
            raise DeploySdkError(
                f"tensorrt backend: canvas {h}x{w} is outside the engine profile {self._min_hw}..{self._max_hw}; "
                "rebuild the engine with --min-shape/--max-shape covering it"
            )

    def _buffer(self, name: str, shape: Tuple[int, ...]) -> Any:
        """A device tensor of ``shape`` for ``name``, carved from a grow-only allocation reused across calls."""
        torch = self._torch
        count = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < count:
            dtype = getattr(torch, self._dtypes[name].name)
            buf = self._buffers[name] = torch.empty(count, dtype=dtype, device=self._device)
            self._graphs.clear()  # captured graphs hold the old addresses
        return buf[:count].view(shape)

    def _upload(self, device_buf: Any, host: np.ndarray) -> None:
        """Copy ``host`` to ``device_buf`` through a pinned staging buffer, asynchronously on the stream."""
        torch = self._torch
        nbytes = host.nbytes
        if self._pinned is None or self._pinned.numel() < nbytes:
            self._pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        staging = self._pinned[:nbytes].numpy()
        staging[:] = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        src = self._pinned[:nbytes].view(device_buf.dtype).view(device_buf.shape)
        device_buf.copy_(src, non_blocking=True)
        # The next upload reuses the staging buffer: wait until this copy has read it.
        self._stream.synchronize()

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        torch = self._torch
        if "_context" not in self.__dict__:
            raise DeploySdkError(f"tensorrt backend for {os.path.basename(self.path)} is closed")
        ctx = self._context
        # The stream the caller queued its work on (GPU pre-processing), read before switching to ours.
        caller_stream = torch.cuda.current_stream(self._device)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            inputs = {"images": images, "image_sizes": image_sizes}
            for name, value in inputs.items():
                shape = tuple(int(d) for d in value.shape)
                dev = self._buffer(name, shape)
                if isinstance(value, torch.Tensor):
                    # Pre-processed on this GPU (deploy_sdk.preprocessing_torch), on the caller's stream: order the
                    # device-to-device copy after that work. The copy keeps the engine's input address fixed, which
                    # captured CUDA graphs rely on.
                    self._stream.wait_stream(caller_stream)
                    dev.copy_(value, non_blocking=True)
                else:
                    self._upload(dev, value.astype(self._dtypes[name], copy=False))
                if not ctx.set_input_shape(name, shape):
                    raise EngineError(f"tensorrt backend: the engine rejected input shape {shape} for '{name}'")
                ctx.set_tensor_address(name, dev.data_ptr())
            outputs = {}
            for name in OUTPUT_NAMES:
                dev = self._buffer(name, _dims(ctx.get_tensor_shape(name)))
                ctx.set_tensor_address(name, dev.data_ptr())
                outputs[name] = dev
            self._execute(tuple(images.shape))
            # Buffers are reused by the next call: hand out copies, made on the same stream.
            result = {name: t.clone() for name, t in outputs.items()}
            self._stream.synchronize()
        return result

    def _execute(self, shape_key: Tuple[int, ...]) -> None:
        torch = self._torch
        handle = self._stream.cuda_stream
        graph = self._graphs.get(shape_key)
        if graph is not None:
            graph.replay()
            return
        if not self._context.execute_async_v3(handle):
            raise EngineError("tensorrt backend: execute_async_v3 failed (see the TensorRT log above)")
        if self._cuda_graphs:
            # Capture after one normal run, as TensorRT requires (it finishes shape-dependent setup on the first).
            try:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self._stream):
                    self._context.execute_async_v3(handle)
                self._graphs[shape_key] = g
            except Exception as exc:  # capture unsupported for this engine: stop trying
                self._cuda_graphs = False
                warnings.warn(
                    f"CUDA graph capture is not possible for this engine ({exc}); running without", stacklevel=2
                )

    def close(self) -> None:
        self._graphs.clear()
        self._buffers.clear()
        # Idempotent; a later infer() raises DeploySdkError instead of an AttributeError.
        self.__dict__.pop("_context", None)
        self.__dict__.pop("_engine", None)
