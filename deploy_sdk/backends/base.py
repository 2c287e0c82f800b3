"""The runner interface every backend implements (Polygraphy-style: the base class checks, the backend computes).

A backend owns one live model (an ONNX Runtime session, a TensorRT engine and its execution context, a PyTorch
module) and does one thing: move the contract's input tensors in and its five output tensors out. Resizing,
padding, batching and mapping results back to image pixels happen once, in :class:`deploy_sdk.Predictor`.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from deploy_sdk.errors import DeploySdkError, EngineError
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["Backend", "PendingResult", "INPUT_NAMES", "OUTPUT_NAMES", "parse_device", "check_threads"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "labels", "masks")


def parse_device(device: str) -> Tuple[str, int]:
    """``"cpu"`` → ("cpu", 0); ``"cuda"`` / ``"cuda:1"`` → ("cuda", index). Anything else is an error."""
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda" or text == "gpu":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise DeploySdkError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def check_threads(threads: Any) -> Optional[int]:
    """``threads`` as an int (None or 0: the backend's default), or :class:`DeploySdkError` naming it."""
    if threads is None:
        return None
    try:
        value = operator.index(threads)  # ints and numpy ints; not floats, strings or bools
    except TypeError:
        value = None
    if value is None or isinstance(threads, bool) or value < 0:
        raise DeploySdkError(
            f"threads must be a positive integer (or None / 0 for the backend's default), got {threads!r}"
        )
    return value


def _is_torch_tensor(obj: Any) -> bool:
    # By module name, so that numpy-only installs never import torch here.
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


class PendingResult:
    """The outputs of one batch given to :meth:`Backend.submit`, once :meth:`result` is called.

    ``wait`` is called at most once, by the first :meth:`result`, and returns the outputs or raises; later calls
    give the same outputs or raise the same error. Backends that run the batch at once (every backend without an
    inference-request pool) pass a function that returns what they already computed.
    """

    __slots__ = ("_wait", "_check", "_outputs", "_error")

    def __init__(self, wait: Callable[[], Dict[str, Any]], check: Callable[[Dict[str, Any]], Dict[str, Any]]):
        self._wait: Optional[Callable[[], Dict[str, Any]]] = wait
        self._check = check
        self._outputs: Optional[Dict[str, Any]] = None
        self._error: Optional[BaseException] = None

    def result(self) -> Dict[str, Any]:
        """The batch's outputs (as :meth:`Backend.infer` returns them); blocks until they are there."""
        if self._wait is not None:
            wait, self._wait = self._wait, None
            try:
                self._outputs = self._check(wait())
            except BaseException as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        assert self._outputs is not None
        return self._outputs


class Backend:
    """Base class of the runtime backends.

    Subclasses set, in their constructor:

    - ``metadata``: the model's :class:`ModelMetadata`
    - ``input_dtype``: numpy dtype of the ``images`` input (float32 or uint8)
    - ``max_batch_size``: the largest batch the model accepts (``None`` = any)
    - ``fixed_size``: (H, W) when the canvas size is fixed by the model, else ``None``

    and implement :meth:`_infer`. ``thread_safe`` says whether :meth:`infer` may run concurrently from several
    threads; when False the :class:`Predictor` serializes calls (an ONNX Runtime session allows concurrent
    ``run``; a TensorRT execution context or a CUDA stream does not).

    Outputs are numpy arrays, except that GPU backends may return torch tensors on their device (the predictor
    then pastes masks on the GPU); ``returns_torch`` says which. ``device_inputs`` says that :meth:`infer` also
    takes ``images`` as a torch tensor already on the backend's device (the predictor then pre-processes there,
    see :mod:`deploy_sdk.preprocessing_torch`).
    """

    name = "base"
    thread_safe = False
    returns_torch = False
    device_inputs = False

    metadata: ModelMetadata
    input_dtype: Any = np.float32
    max_batch_size: Optional[int] = None
    fixed_size: Optional[Tuple[int, int]] = None
    device: str = "cpu"
    async_depth: int = 1

    def infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        """Run the graph on one batch.

        - ``images``: [B, 3, H, W] ``input_dtype`` 0–255 RGB canvas (resized images top-left, zero padding); a
          numpy array, or (``device_inputs`` backends) a torch tensor on the backend's device
        - ``image_sizes``: [B, 2] int64 (height, width) of each valid resized region
        - returns ``{"num_detections": [B] int32, "boxes": [B, K, 4] float32 x1 y1 x2 y2 canvas pixels,
          "scores": [B, K] float32, "labels": [B, K] int32, "masks": [B, K, M, M] float32 probabilities}``
        """
        self.check_inputs(images, image_sizes)
        return self._check_outputs(self._infer(images, image_sizes), int(images.shape[0]))

    def submit(self, images: np.ndarray, image_sizes: np.ndarray) -> PendingResult:
        """Start inference of one batch; ``.result()`` of the returned handle gives what :meth:`infer` would.

        The inputs are checked now (a bad batch raises here). Backends with ``async_depth > 1`` return while the
        batch runs, and the arrays must not be changed until ``.result()`` returns; the others run it now.
        """
        self.check_inputs(images, image_sizes)
        batch = int(images.shape[0])
        wait = self._start(images, image_sizes)
        return PendingResult(wait, lambda outputs: self._check_outputs(outputs, batch))

    def _start(self, images: np.ndarray, image_sizes: np.ndarray) -> Callable[[], Dict[str, Any]]:
        """Start one (already checked) batch; return a function that waits for and returns its outputs.

        Default: run it now (so its errors raise from :meth:`submit`). Pool-based backends override this."""
        outputs = self._infer(images, image_sizes)
        return lambda: outputs

    def _check_outputs(self, outputs: Dict[str, Any], batch: int) -> Dict[str, Any]:
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise EngineError(f"{self.name} backend: the model did not return the outputs {missing}")
        for n in OUTPUT_NAMES:
            if tuple(outputs[n].shape[:1]) != (batch,):
                raise EngineError(
                    f"{self.name} backend: output '{n}' has shape {tuple(outputs[n].shape)}, expected batch {batch} "
                    "first; the model does not follow the deployment graph contract"
                )
        return outputs

    def check_inputs(self, images: np.ndarray, image_sizes: np.ndarray) -> None:
        """Raise :class:`DeploySdkError` naming the problem if the batch does not fit this model."""
        on_device = self.device_inputs and _is_torch_tensor(images)
        if not (isinstance(images, np.ndarray) or on_device) or images.ndim != 4 or images.shape[1] != 3:
            raise DeploySdkError(
                f"{self.name} backend: images must be a [B, 3, H, W] array, got "
                f"{getattr(images, 'shape', type(images).__name__)}"
            )
        dtype = str(images.dtype).replace("torch.", "") if on_device else images.dtype
        if np.dtype(dtype) != np.dtype(self.input_dtype):
            raise DeploySdkError(
                f"{self.name} backend: images are {dtype} but the model takes {np.dtype(self.input_dtype)}"
            )
        if on_device and str(images.device) != self.device:
            raise DeploySdkError(
                f"{self.name} backend: images are a tensor on {images.device} but the backend runs on {self.device}"
            )
        b, _, h, w = (int(d) for d in images.shape)
        if b < 1:
            raise DeploySdkError(f"{self.name} backend: empty batch")
        if not isinstance(image_sizes, np.ndarray) or image_sizes.shape != (b, 2) or image_sizes.dtype != np.int64:
            raise DeploySdkError(
                f"{self.name} backend: image_sizes must be [{b}, 2] int64, got "
                f"{getattr(image_sizes, 'shape', None)} {getattr(image_sizes, 'dtype', type(image_sizes).__name__)}"
            )
        if (image_sizes < 1).any() or (image_sizes[:, 0] > h).any() or (image_sizes[:, 1] > w).any():
            raise DeploySdkError(
                f"{self.name} backend: image_sizes {image_sizes.tolist()} must lie within the {h}x{w} canvas"
            )
        if self.max_batch_size is not None and b > self.max_batch_size:
            raise DeploySdkError(
                f"{self.name} backend: batch of {b} exceeds the model's maximum batch size {self.max_batch_size}"
            )
        if self.fixed_size is not None and (h, w) != tuple(self.fixed_size):
            raise DeploySdkError(
                f"{self.name} backend: canvas {h}x{w} given, but the model was built for {self.fixed_size[0]}x"
                f"{self.fixed_size[1]} only"
            )
        divisible = int(getattr(self.metadata, "size_divisible", 1) or 1)
        if self.fixed_size is None and (h % divisible or w % divisible):
            raise DeploySdkError(
                f"{self.name} backend: canvas {h}x{w} is not a multiple of {divisible} as the model requires"
            )

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources (sessions, device memory). The backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.name} on {self.device}"
