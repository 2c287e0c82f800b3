"""`Predictor`: images in (any count, any size), `Detections` out, on ONNX Runtime, OpenVINO, TensorRT or PyTorch.

The predictor does everything that is the same for every backend: validate and decode images, resize them as the
model's preprocessing says (torchvision's resize, reproduced in numpy), pad them into a canvas, split inputs into
backend-sized batches, map boxes back to original image pixels and paste masks. A backend only moves tensors
(:class:`deploy_sdk.backends.base.Backend`).

Thread safety: one ``Predictor`` may be shared by several threads. Pre- and post-processing keep no shared state;
calls into the backend are serialized by a lock unless the backend allows concurrent calls (ONNX Runtime and
OpenVINO do).
Results do not depend on how calls interleave. ``last_stage_times`` is the one exception: it describes the most
recent call to finish, from whichever thread.
"""

from __future__ import annotations

import collections
import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, overload

import numpy as np

from deploy_sdk.backends import REGISTRY as _BACKEND_REGISTRY
from deploy_sdk.backends import backend_class
from deploy_sdk.backends.base import Backend, check_threads
from deploy_sdk.detections import FULL_MASK_WARN_BYTES, Detections, encode_rle
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.local_paths import refuse_url
from deploy_sdk.mask_paste import MASK_THRESHOLD, paste_masks, paste_masks_cropped, paste_masks_torch
from deploy_sdk.model_metadata import ModelMetadata
from deploy_sdk.preprocessing import (
    PreparedBatch,
    boxes_to_original,
    check_resizable,
    load_image,
    model_layout,
    prepare_batch,
)

__all__ = ["Predictor", "BACKENDS", "MASK_FORMATS"]

BACKENDS = ("auto",) + tuple(_BACKEND_REGISTRY)  # ("auto", "onnxruntime", "tensorrt", "openvino", "torch")
MASK_FORMATS = ("full", "box", "rle", "none")
PREPROCESS_MODES = ("auto", "numpy", "torch")
_ONNX_SUFFIXES = (".onnx",)
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# detectron2's model zoo ships .pkl files (plain pickles of numpy arrays, read by a restricted unpickler)
CHECKPOINT_SUFFIXES = _CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".pkl")

ImageInput = Any  # numpy array, path, or PIL image


def _torch_synchronize(device: Any) -> None:
    import torch

    torch.cuda.synchronize(device)


def _backend_for(model: Any, backend: str) -> str:
    if backend != "auto":
        return backend
    suffix = Path(os.fspath(model)).suffix.lower()
    if suffix in _ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in _ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix in _CHECKPOINT_SUFFIXES:
        return "torch"
    raise DeploySdkError(
        f"cannot tell the backend from the file name {os.fspath(model)!r}: use a .onnx file (onnxruntime), "
        f"a TensorRT engine {'/'.join(_ENGINE_SUFFIXES)} (tensorrt) or a checkpoint "
        f"{'/'.join(_CHECKPOINT_SUFFIXES)} (torch), or name the backend: backend= in Python, --backend on the "
        "command line"
    )


def _positive_batch_size(batch_size: Any, default: int) -> int:
    if batch_size is None:
        return default
    try:
        size = operator.index(batch_size)
    except TypeError:
        size = None
    if size is None or isinstance(batch_size, bool) or size < 1:
        raise DeploySdkError(f"batch_size must be a positive integer, got {batch_size!r}")
    return size


def _open_backend(
    model: Any,
    backend: str,
    device: str,
    threads: Optional[int],
    trust_checkpoint: bool = False,
    options: Optional[Dict[str, Any]] = None,
) -> Backend:
    options = dict(options or {})
    if isinstance(model, Backend):
        if options:
            raise DeploySdkError(
                "backend_options apply when the Predictor opens the model; pass them to the "
                f"{type(model).__name__} you constructed instead"
            )
        return model
    if backend not in BACKENDS:
        raise DeploySdkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(model, (str, os.PathLike)):
        if backend in ("auto", "torch") and hasattr(model, "model") and hasattr(model, "metadata"):
            return backend_class("torch")(model, device=device, threads=threads)
        raise DeploySdkError(
            f"model must be a file path (or a Backend / loaded checkpoint), got {type(model).__name__}"
        )
    refuse_url(model, "model")
    if not os.path.exists(os.fspath(model)):
        raise DeploySdkError(f"model file not found: {os.fspath(model)}")
    kind = _backend_for(model, backend)
    cls = backend_class(kind)  # imported now: torch only for the torch backend
    try:
        if kind == "tensorrt":
            return cls(model, device=device, **options)
        if kind == "torch":
            return cls(model, device=device, threads=threads, trust_checkpoint=trust_checkpoint, **options)
        return cls(model, device=device, threads=threads, **options)
    except TypeError as exc:
        if options and "unexpected keyword argument" in str(exc):
            raise DeploySdkError(
                f"backend_options {sorted(options)}: the {kind} backend does not take {str(exc).rpartition(' ')[2]}"
            ) from exc
        raise


class Predictor:
    """Run a Mask R-CNN deployment model on images.

    - ``model``: an exported ``.onnx`` file, a TensorRT engine file (``maskrcnn-deploy build``), a checkpoint (runs
      the PyTorch deployment module), or an already constructed :class:`~deploy_sdk.backends.base.Backend`.
    - ``backend``: "auto" (from the file name), "onnxruntime", "openvino", "tensorrt" or "torch". "auto" picks
      onnxruntime for a ``.onnx`` file; ``backend="openvino"`` runs the same file on OpenVINO (the ``openvino``
      extra), often the fastest CPU path.
    - ``device``: "cpu" or "cuda[:N]"; for the openvino backend "cpu" or "gpu[:N]" (an Intel GPU).
    - ``batch_size``: images per backend call (capped by the model's maximum batch).
    - ``score_threshold``: drop detections scoring below this; the graph already applies the model's own threshold
      (``metadata.score_threshold``), so only a higher value changes anything. Default: no extra filtering.
    - ``mask_format``: "full" ([N, H, W] bool, the default), "box" (box-cropped), "rle" (COCO RLE) or "none"; see
      :mod:`deploy_sdk.detections`. Full masks cost H * W bytes per detection: 100 detections on a 6000x4000
      photograph are 2.4 GB. :meth:`predict` warns once (per predictor) when the full masks of one call exceed
      ``full_mask_warn_bytes`` (default :data:`deploy_sdk.detections.FULL_MASK_WARN_BYTES`, 512 MiB); use "box"
      or "rle" for large images.
    - ``channel_order``: "rgb" or "bgr", for numpy array inputs (files and PIL images carry their own).
    - ``threads``: intra-op threads of the backend, a positive integer; None or 0: the backend's default.
      ``preprocess_workers``: threads of :meth:`predict_iter`.
    - ``preprocess``: where images are resized and padded. "numpy" (on the CPU); "torch" (with torch on the
      backend's device: the GPU for the tensorrt backend and the torch backend on CUDA, so only uint8 images are
      uploaded; needs a backend that takes device tensors); "auto" (default): "torch" when the backend runs on a
      CUDA device and takes device tensors, else "numpy". Both give the same canvas up to float rounding.
    - ``trust_checkpoint``: for a checkpoint run by the torch backend, allow a file that is more than tensors (a
      whole pickled module) to be unpickled, which runs code from the file; only for files you trust. Default
      False: such files are refused. Ignored by the other backends.
    - ``backend_options``: further keyword arguments of the backend's constructor, e.g. for openvino
      ``{"performance_hint": "throughput", "num_requests": 4, "inference_precision": "bf16"}`` (see
      :class:`deploy_sdk.backends.openvino.OpenVinoBackend`).
    """

    def __init__(
        self,
        model: Any,
        backend: str = "auto",
        device: str = "cpu",
        batch_size: int = 4,
        score_threshold: Optional[float] = None,
        mask_format: str = "full",
        channel_order: str = "rgb",
        threads: Optional[int] = None,
        preprocess_workers: int = 2,
        preprocess: str = "auto",
        trust_checkpoint: bool = False,
        backend_options: Optional[Dict[str, Any]] = None,
    ):
        if int(batch_size) < 1:
            raise DeploySdkError(f"batch_size must be at least 1, got {batch_size}")
        if mask_format not in MASK_FORMATS:
            raise DeploySdkError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
        if channel_order not in ("rgb", "bgr"):
            raise DeploySdkError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
            raise DeploySdkError(f"score_threshold must be in 0..1, got {score_threshold}")
        if preprocess not in PREPROCESS_MODES:
            raise DeploySdkError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {preprocess!r}")
        threads = check_threads(threads)
        self._closed = False
        self.backend: Backend = _open_backend(model, backend, device, threads, bool(trust_checkpoint), backend_options)
        if preprocess == "torch" and not self.backend.device_inputs:
            name = self.backend.name
            self.close()
            raise DeploySdkError(
                f"preprocess='torch' needs a backend that takes device tensors (tensorrt, torch); the {name} backend "
                "takes numpy arrays: use preprocess='numpy' or 'auto'"
            )
        on_gpu = str(self.backend.device).startswith("cuda")
        if preprocess == "auto":
            preprocess = "torch" if on_gpu and self.backend.device_inputs else "numpy"
        self.preprocess = preprocess
        self._sync_after_preprocess = preprocess == "torch" and on_gpu
        self.backend_name = self.backend.name
        self.metadata: ModelMetadata = self.backend.metadata
        limit = self.backend.max_batch_size
        self.batch_size = int(min(batch_size, limit) if limit else batch_size)
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.mask_format = mask_format
        self.channel_order = channel_order
        self.preprocess_workers = max(1, int(preprocess_workers))
        self._lock = threading.Lock()
        self.last_stage_times: Dict[str, float] = {}
        self.full_mask_warn_bytes = FULL_MASK_WARN_BYTES
        self._warned_full_masks = False

    # ------------------------------------------------------------------------------------------------------------
    # A list or tuple gives a list; anything else (ImageInput is Any) one Detections, or a list for a [N, H, W, 3]
    # array.
    @overload
    def predict(self, images: Union[List[ImageInput], Tuple[ImageInput, ...]]) -> List[Detections]: ...
    @overload
    def predict(self, images: ImageInput) -> Union[Detections, List[Detections]]: ...
    def predict(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Union[Detections, List[Detections]]:
        """Detect instances in one image or a sequence of images.

        One image (a [H, W, 3] / [H, W] array, a path or a PIL image) gives one :class:`Detections`; a list/tuple
        (or a [N, H, W, 3] array) gives a list, one per input, in order (an empty list gives an empty list). Inputs
        may differ in size; they are split into batches of ``batch_size``. Bad inputs raise
        :class:`~deploy_sdk.InputImageError` naming the image.

        Memory: images are decoded batch by batch, just before their batch is inferred (the same path as
        :meth:`predict_iter`, without its read-ahead threads), so at most ``batch_size`` decoded images are held at
        a time, whatever the length of the list; a bad image is therefore reported when its batch is reached. The
        returned list holds every result, though: with ``mask_format="full"`` each detection carries an [H, W]
        mask of its image, so for large runs use ``mask_format="rle"`` or ``"box"`` (memory bounded by the
        objects, not the images) or ``"none"``, or stream with :meth:`predict_iter`.
        """
        self._check_open()
        single, items = self._as_list(images)
        times = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        results: List[Detections] = []
        for chunk in self._chunks(items, self.batch_size):
            t0 = time.perf_counter()
            batch = self._load_and_prepare(chunk)
            if self._sync_after_preprocess:
                # GPU work is queued asynchronously: wait for it so that the stage times say where time went.
                _torch_synchronize(batch.images.device)
            t1 = time.perf_counter()
            outputs = self._infer(batch)
            t2 = time.perf_counter()
            results.extend(self._postprocess(batch, outputs))
            t3 = time.perf_counter()
            times["preprocess"] += (t1 - t0) * 1e3
            times["inference"] += (t2 - t1) * 1e3
            times["postprocess"] += (t3 - t2) * 1e3
        self.last_stage_times = times
        self._check_full_mask_memory(results)
        return results[0] if single else results

    @overload
    def __call__(self, images: Union[List[ImageInput], Tuple[ImageInput, ...]]) -> List[Detections]: ...
    @overload
    def __call__(self, images: ImageInput) -> Union[Detections, List[Detections]]: ...
    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Union[Detections, List[Detections]]:
        """``predictor(images)`` is :meth:`predict`."""
        return self.predict(images)

    def warmup(self, runs: int = 1, image_size: Optional[Tuple[int, int]] = None) -> List[float]:
        """Run ``runs`` batches of ``batch_size`` blank images through the whole pipeline, so that the first real
        call does not pay for lazy initialization (ONNX Runtime's and OpenVINO's first-run kernel choices,
        TensorRT's context and CUDA's memory pools). ``image_size`` (height, width) defaults to the model's
        canvas: its fixed size, else ``min_size`` x ``min_size``. Returns the milliseconds of each run."""
        self._check_open()
        if image_size is None:
            fixed = self.backend.fixed_size
            side = int(self.metadata.min_size)
            image_size = (int(fixed[0]), int(fixed[1])) if fixed else (side, side)
        blank = np.zeros((int(image_size[0]), int(image_size[1]), 3), np.uint8)
        times = []
        for _ in range(max(1, int(runs))):
            t0 = time.perf_counter()
            self.predict([blank] * self.batch_size)
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def _check_full_mask_memory(self, results: List[Detections]) -> None:
        if self._warned_full_masks or self.mask_format != "full":
            return
        total = sum(int(d.masks.nbytes) for d in results if d.masks is not None)
        if total > self.full_mask_warn_bytes:
            import warnings

            self._warned_full_masks = True
            warnings.warn(
                f"the full masks of this predict call take {total / 2**20:.0f} MiB (mask_format='full' stores "
                "H x W bytes per detection); use Predictor(..., mask_format='box') or 'rle' (memory grows with "
                "the objects, not the image), or predict_iter. Warned once per Predictor.",
                UserWarning,
                stacklevel=3,
            )

    def predict_iter(self, images: Iterable[ImageInput], batch_size: Optional[int] = None) -> Iterator[Detections]:
        """Stream detections for an iterable of images (paths, arrays, PIL images), one per input, in order.

        Decoding and resizing of upcoming batches run in ``preprocess_workers`` threads while the current batch is
        inferred, so for file inputs the backend rarely waits for the disk or the decoder. A backend with a pool of
        inference requests (openvino: ``backend.async_depth`` > 1) gets the next batches submitted before the
        current one's results are post-processed, so its inference runs back to back and overlaps the mask
        pasting; results still come out in input order. At most ``preprocess_workers + async_depth`` batches are in
        flight, so memory stays bounded for endless iterables.
        Arguments are checked at the call (a bad ``batch_size`` or a closed predictor raises here, not at the
        first ``next()``); images are decoded as the iteration reaches them.
        """
        self._check_open()
        size = _positive_batch_size(batch_size, self.batch_size)
        if self.backend.max_batch_size:
            size = min(size, self.backend.max_batch_size)
        return self._stream(images, size)

    def _stream(self, images: Iterable[ImageInput], size: int) -> Iterator[Detections]:
        chunks = self._chunks(images, size)
        pending: Deque[Any] = collections.deque()  # pre-processing futures, in input order
        running: Deque[Tuple[PreparedBatch, Any]] = collections.deque()  # submitted batches, in input order
        depth = max(1, int(getattr(self.backend, "async_depth", 1) or 1))
        with ThreadPoolExecutor(max_workers=self.preprocess_workers, thread_name_prefix="maskrcnn-pre") as pool:
            try:
                for chunk in chunks:
                    pending.append(pool.submit(self._load_and_prepare, chunk))
                    if len(pending) > self.preprocess_workers:
                        running.append(self._submit(pending.popleft().result()))
                        if len(running) >= depth:
                            yield from self._collect(*running.popleft())
                while pending:
                    running.append(self._submit(pending.popleft().result()))
                    if len(running) >= depth:
                        yield from self._collect(*running.popleft())
                while running:
                    yield from self._collect(*running.popleft())
            finally:
                for fut in pending:
                    fut.cancel()
                for _, handle in running:  # stopped early: let the backend's requests finish and return to it
                    try:
                        handle.result()
                    except Exception:
                        pass

    # ------------------------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DeploySdkError("predictor is closed: create a new Predictor to run more images")

    @staticmethod
    def _as_list(images: Any) -> Tuple[bool, List[Any]]:
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return False, list(images)
            return True, [images]
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            return True, [images]
        return False, list(images)

    @staticmethod
    def _name(img: Any, index: int) -> str:
        return f"image {index} ({os.fspath(img)})" if isinstance(img, (str, os.PathLike)) else f"image {index}"

    @staticmethod
    def _chunks(images: Iterable[ImageInput], size: int) -> Iterator[List[Tuple[int, Any]]]:
        chunk: List[Tuple[int, Any]] = []
        for i, img in enumerate(images):
            chunk.append((i, img))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _load_and_prepare(self, chunk: List[Tuple[int, Any]]) -> PreparedBatch:
        loaded = []
        for i, img in chunk:
            what = self._name(img, i)
            arr = load_image(img, self.channel_order, what=what)
            check_resizable(arr.shape[0], arr.shape[1], int(self.metadata.min_size), int(self.metadata.max_size), what)
            loaded.append(arr)
        batch = self._prepare(loaded)
        batch.sources = [img for _, img in chunk]  # for Detections.source
        return batch

    def _submit(self, batch: PreparedBatch) -> Tuple[PreparedBatch, Any]:
        self._check_open()  # a predict_iter still running when close() was called
        if self.backend.thread_safe:
            return batch, self.backend.submit(batch.images, batch.image_sizes)
        with self._lock:
            return batch, self.backend.submit(batch.images, batch.image_sizes)

    def _collect(self, batch: PreparedBatch, handle: Any) -> List[Detections]:
        outputs = handle.result()
        self._check_open()
        results = self._postprocess(batch, outputs)
        self._check_full_mask_memory(results)
        return results

    def _prepare(self, images: List[np.ndarray]) -> PreparedBatch:
        layout, resize = model_layout(self.metadata, self.backend.fixed_size, self.backend.input_dtype)
        if self.preprocess == "torch" and resize == "torchvision":
            from deploy_sdk.preprocessing_torch import prepare_batch_torch

            return prepare_batch_torch(images, device=self.backend.device, **layout)
        return prepare_batch(images, resize=resize, **layout)

    def _infer(self, batch: PreparedBatch) -> Dict[str, Any]:
        if self.backend.thread_safe:
            return self.backend.infer(batch.images, batch.image_sizes)
        with self._lock:
            return self.backend.infer(batch.images, batch.image_sizes)

    def _postprocess(self, batch: PreparedBatch, outputs: Dict[str, Any]) -> List[Detections]:
        on_device = self.backend.returns_torch
        if on_device:
            import torch
        host = {k: (v.cpu().numpy() if on_device else np.asarray(v)) for k, v in outputs.items() if k != "masks"}
        masks_all = outputs["masks"]
        results = []
        for i, original in enumerate(batch.original_sizes):
            resized = (int(batch.image_sizes[i, 0]), int(batch.image_sizes[i, 1]))
            n = int(host["num_detections"][i])
            scores = host["scores"][i, :n].astype(np.float32)
            keep = np.arange(n)
            if self.score_threshold is not None:
                keep = np.flatnonzero(scores >= self.score_threshold)
            boxes = boxes_to_original(host["boxes"][i, keep], resized, original)
            if self.metadata.extra.get("drop_empty_boxes"):  # detectron2's detector_postprocess
                from deploy_sdk.resize_modes import clip_nonempty

                boxes, nonempty = clip_nonempty(boxes, original)
                keep, boxes = keep[nonempty], boxes[nonempty]
            det = Detections(
                boxes=boxes,
                scores=scores[keep],
                labels=host["labels"][i, keep].astype(np.int64),
                masks=None,
                class_names=list(self.metadata.class_names),
                image_size=original,
                source=batch.sources[i] if batch.sources is not None else None,
                source_channel_order=self.channel_order,
            )
            if self.mask_format != "none":
                index = torch.as_tensor(keep, device=masks_all.device) if on_device else keep
                self._attach_masks(det, masks_all[i][index], original)
            results.append(det)
        return results

    def _attach_masks(self, det: Detections, probs: Any, original: Tuple[int, int]) -> None:
        """Paste ``probs`` [n, M, M] into ``det`` in the predictor's mask format (on the GPU for torch outputs)."""
        paste = str(self.metadata.extra.get("mask_paste", "torchvision"))  # the framework's paste (mask_paste)
        if self.backend.returns_torch:
            import torch

            boxes = torch.from_numpy(det.boxes).to(probs.device)
            det.masks = paste_masks_torch(probs, boxes, original, MASK_THRESHOLD, mode=paste).cpu().numpy()
            if self.mask_format != "full":
                self._convert_full(det)
            return
        probs = np.asarray(probs, dtype=np.float32)
        if self.mask_format == "full":
            det.masks = paste_masks(probs, det.boxes, original, mode=paste)
        elif self.mask_format == "box":
            det.mask_crops, det.mask_offsets = paste_masks_cropped(probs, det.boxes, original, mode=paste)
        else:
            crops, offsets = paste_masks_cropped(probs, det.boxes, original, mode=paste)
            det.mask_crops, det.mask_offsets = crops, offsets
            det.rles = det._rles_from_masks()
            det.mask_crops, det.mask_offsets = None, None

    def _convert_full(self, det: Detections) -> None:
        """Turn GPU-pasted full masks into the box or RLE form."""
        full = det.masks
        assert full is not None
        if self.mask_format == "rle":
            det.rles = [encode_rle(m) for m in full]
        else:
            crops, offsets = [], np.zeros((len(full), 2), np.int64)
            for i, m in enumerate(full):
                ys, xs = np.nonzero(m)
                if ys.size == 0:
                    crops.append(np.zeros((0, 0), bool))
                    continue
                y0, x0 = int(ys.min()), int(xs.min())
                crops.append(m[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1].copy())
                offsets[i] = (x0, y0)
            det.mask_crops, det.mask_offsets = crops, offsets
        det.masks = None

    # ------------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend. Later calls to :meth:`predict` / :meth:`predict_iter` raise DeploySdkError;
        closing twice is harmless."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Predictor({self.backend.describe()}, batch_size={self.batch_size}, mask_format={self.mask_format!r}, "
            f"preprocess={self.preprocess!r}, "
            f"classes={len(self.metadata.class_names)})"
        )
