"""The online service: a Ray Serve application around :class:`~deploy_sdk.Predictor`.

Endpoints (relative to the application's route prefix):

- ``POST /predict``: one encoded image as the body, or several as multipart/form-data; ``?mask_format=`` ``rle``
  (default), ``box`` or ``none``. Answers the JSON of :mod:`deploy_sdk.serving.codec`.
- ``GET /healthz``: ``{"status": "ok", "replica": ID, "images": N, "model_calls": M, "largest_batch": B}`` (the
  answering replica's counts since it started: how well requests are being batched).
- ``GET /metadata``: model file, class names, precision, backend, batching settings, SDK versions.

What Ray does and what this module does: Ray Serve owns the HTTP proxy, the routing of requests to replicas,
replica restarts and autoscaling; ``@serve.batch`` gathers the images of concurrent requests (each image of a
multipart request is one item) into one :meth:`Predictor.predict` call of up to ``max_batch_size`` images, waiting
at most ``batch_wait_ms`` for a batch to fill. This module decodes and validates requests, runs the model and
encodes the answer. A request is validated completely (body size, content type, decodable image, pixel count,
aspect ratio the model can resize) before it joins a batch, so a bad request gets its 4xx and never fails the
batch it would have shared with good ones. A replica that dies mid-batch (killed, out of memory) fails the requests
it held with a 5xx from Ray's proxy, never with another request's answer: each answer travels on the future of
its own item. Ray restarts the replica.

An answer never depends on which other requests shared its batch: images batched together are padded to one
canvas, and the padding below and right of an image changes its detections (the normalized padding is not zero
inside the network), so a batch is split by canvas size (the resized size rounded up to the model's multiple of
32) and each group runs as one model call. An image then sees exactly the canvas it would see alone, and the
answer is bit-identical to ``Predictor.predict(image)`` (checked in the tests). Traffic of one image size, the usual
case of a camera or a pipeline, batches fully; mixed sizes batch per size.

Ray (``ray[serve]``, the ``serve`` extra) is imported when :func:`build_app` is called, never at import time.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from deploy_sdk.errors import DeploySdkError, require
from deploy_sdk.serving.codec import RequestError, RequestLimits, check_mask_format, decode_request, detections_to_json

__all__ = ["ServiceSpec", "build_app", "DEFAULT_APP_NAME"]

DEFAULT_APP_NAME = "maskrcnn"


@dataclass
class ServiceSpec:
    """Everything a replica needs to open its model; plain data, shipped to every replica by Ray."""

    model: str
    backend: str = "auto"
    device: str = "cpu"
    threads: Optional[int] = None
    score_threshold: Optional[float] = None
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    limits: RequestLimits = field(default_factory=RequestLimits)
    backend_options: Dict[str, Any] = field(default_factory=dict)


def _serve_module():
    return require("ray.serve", "serve", "the online service (maskrcnn-deploy serve, deploy_sdk.serving.build_app)")


def build_app(
    model: Any,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: Optional[int] = None,
    score_threshold: Optional[float] = None,
    max_batch_size: int = 8,
    batch_wait_ms: float = 10.0,
    replicas: int = 1,
    autoscaling: Optional[Tuple[int, int]] = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    limits: Optional[RequestLimits] = None,
    max_ongoing_requests: Optional[int] = None,
    graceful_shutdown_timeout_s: float = 20.0,
    deployment_name: str = "MaskRCNN",
    backend_options: Optional[Dict[str, Any]] = None,
):
    """A Ray Serve application (``serve.run(build_app(...))``) serving ``model`` at ``/predict``, ``/healthz``,
    ``/metadata``.

    - ``model``: a model file (``.onnx``, ``.engine``, a checkpoint) that every replica can read: the path is made
      absolute here; on a multi-node cluster it must exist on every node (shared storage).
    - ``max_batch_size`` / ``batch_wait_ms``: dynamic batching across concurrent requests (``@serve.batch``).
    - ``replicas``, or ``autoscaling=(min, max)`` replicas (Ray Serve scales on ongoing requests per replica,
      targetting one full batch each).
    - ``num_cpus`` / ``num_gpus``: Ray resources per replica (``num_gpus`` for the GPU backends: tensorrt,
      onnxruntime with ``device="cuda"``); ``threads``: intra-op threads of the backend.
    - ``limits``: what one request may carry (:class:`~deploy_sdk.serving.codec.RequestLimits`).
    - ``max_ongoing_requests``: requests a replica accepts at once (default 4 batches' worth); beyond that Ray
      queues them at the proxy.
    - ``graceful_shutdown_timeout_s``: how long a stopping replica may finish its requests.
    """
    serve = _serve_module()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser().resolve()
        if not path.exists():
            raise DeploySdkError(f"model file not found: {model}")
        model = str(path)
    if int(max_batch_size) < 1:
        raise DeploySdkError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if not float(batch_wait_ms) >= 0.0:
        raise DeploySdkError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
    if autoscaling is None and int(replicas) < 1:
        raise DeploySdkError(f"replicas must be at least 1, got {replicas}")
    if (
        autoscaling is not None
        and not 0 <= int(autoscaling[0]) <= int(autoscaling[1])
        or (autoscaling is not None and int(autoscaling[1]) < 1)
    ):
        raise DeploySdkError(f"autoscaling bounds must be 0 <= min <= max, max >= 1, got {autoscaling}")
    spec = ServiceSpec(
        model=model,
        backend=backend,
        device=device,
        threads=threads,
        score_threshold=score_threshold,
        max_batch_size=int(max_batch_size),
        batch_wait_ms=float(batch_wait_ms),
        limits=limits or RequestLimits(),
        backend_options=dict(backend_options or {}),
    )
    options: Dict[str, Any] = {
        "name": deployment_name,
        "ray_actor_options": {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)},
        # Enough requests per replica to fill a batch while the previous one runs.
        "max_ongoing_requests": int(max_ongoing_requests or max(4 * spec.max_batch_size, 8)),
        "graceful_shutdown_timeout_s": float(graceful_shutdown_timeout_s),
        "health_check_period_s": 5.0,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = {
            "min_replicas": int(autoscaling[0]),
            "max_replicas": int(autoscaling[1]),
            "target_ongoing_requests": spec.max_batch_size,
        }
    else:
        options["num_replicas"] = int(replicas)
    return serve.deployment(**options)(_deployment_class()).bind(spec)


def _deployment_class():
    """The replica class, defined when Ray is there (the ``@serve.batch`` decorator needs it)."""
    from ray import serve
    from starlette.responses import Response

    def json_response(data: Any, status: int = 200) -> Response:
        return Response(json.dumps(data, separators=(",", ":")), status_code=status, media_type="application/json")

    class MaskRCNNService:
        """One replica: one :class:`~deploy_sdk.Predictor`, batches of up to ``max_batch_size`` images."""

        def __init__(self, spec: ServiceSpec):
            from deploy_sdk.predictor import Predictor

            self._spec = spec
            # Box-cropped masks: the cheapest form to turn into either JSON form (no [N, H, W] arrays).
            self._predictor = Predictor(
                spec.model,
                backend=spec.backend,
                device=spec.device,
                batch_size=spec.max_batch_size,
                score_threshold=spec.score_threshold,
                threads=spec.threads,
                mask_format="box",
                backend_options=spec.backend_options or None,
            )
            # Ray's type hints declare serve.batch's result a plain coroutine function, without these setters.
            self._batched_predict.set_max_batch_size(spec.max_batch_size)  # type: ignore[attr-defined]
            self._batched_predict.set_batch_wait_timeout_s(spec.batch_wait_ms / 1000.0)  # type: ignore[attr-defined]
            # One thread runs the model (one batch at a time: the backend uses every core it is given); others
            # decode requests and encode answers meanwhile, off the replica's event loop.
            self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskrcnn-model")
            self._io_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maskrcnn-io")
            meta = self._predictor.metadata
            try:
                replica = str(serve.get_replica_context().replica_id.unique_id)
            except Exception:
                replica = f"pid-{os.getpid()}"
            self._replica = replica
            # Since the replica started (GET /healthz): images inferred, model calls, most images in one call.
            self._stats = {"images": 0, "model_calls": 0, "largest_batch": 0}
            self._metadata = {
                "model": os.path.basename(str(spec.model)),
                "backend": self._predictor.backend_name,
                "device": str(self._predictor.backend.device),
                "classes": list(meta.class_names),
                "precision": meta.precision,
                "arch": meta.arch,
                "score_threshold": meta.score_threshold if spec.score_threshold is None else spec.score_threshold,
                "min_size": meta.min_size,
                "max_size": meta.max_size,
                "model_sdk_version": meta.sdk_version,
                "sdk_version": _sdk_version(),
                "max_batch_size": spec.max_batch_size,
                "batch_wait_ms": spec.batch_wait_ms,
                "mask_formats": ["rle", "box", "none"],
                "max_images_per_request": spec.limits.max_images,
                "max_body_bytes": spec.limits.max_body_bytes,
                "max_pixels": spec.limits.max_pixels,
            }

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def _batched_predict(self, images: List[Any]) -> List[Any]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._model_thread, self._predict_by_canvas, list(images))

        def _predict_by_canvas(self, images: List[Any]) -> List[Any]:
            """One model call per canvas size, so each image's answer is what it would be alone."""
            results: List[Any] = [None] * len(images)
            for indices in _canvas_groups(images, self._predictor):
                for i, det in zip(indices, self._predictor.predict([images[i] for i in indices])):
                    results[i] = det
                self._stats["model_calls"] += 1
                self._stats["largest_batch"] = max(self._stats["largest_batch"], len(indices))
            self._stats["images"] += len(images)
            return results

        async def __call__(self, request) -> Response:
            path = request.url.path
            root = request.scope.get("root_path", "") or ""
            if root and path.startswith(root):
                path = path[len(root) :]
            path = "/" + path.strip("/")
            if path == "/predict":
                if request.method != "POST":
                    return json_response({"error": "use POST /predict with an image body"}, 405)
                return await self._predict(request)
            if path in ("/healthz", "/metadata"):
                if request.method != "GET":
                    return json_response({"error": f"use GET {path}"}, 405)
                if path == "/healthz":
                    return json_response({"status": "ok", "replica": self._replica, **self._stats})
                return json_response(self._metadata)
            return json_response({"error": f"no endpoint {path}; use POST /predict, GET /healthz, GET /metadata"}, 404)

        async def _predict(self, request) -> Response:
            loop = asyncio.get_running_loop()
            try:
                mask_format = check_mask_format(request.query_params.get("mask_format"))
                body = await _read_body(request, self._spec.limits.max_body_bytes)
                images = await loop.run_in_executor(
                    self._io_threads, decode_request, body, request.headers.get("content-type"), self._spec.limits
                )
                meta = self._predictor.metadata
                for name, image in images:
                    _check_model_can_resize(image, name, int(meta.min_size), int(meta.max_size))
            except RequestError as exc:
                return json_response({"error": exc.reason}, exc.status)
            try:
                detections = await asyncio.gather(*(self._batched_predict(image) for _, image in images))
                results = await loop.run_in_executor(
                    self._io_threads, lambda: [detections_to_json(d, mask_format) for d in detections]
                )
            except Exception as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                return json_response({"error": f"inference failed: {reason}"}, 500)
            if len(images) > 1 or images[0][0] != "image":
                for (name, _), result in zip(images, results):
                    result["name"] = name
            return json_response({"results": results})

        def check_health(self) -> None:
            if getattr(self._predictor, "_closed", False):
                raise RuntimeError("the replica's predictor is closed")

        def __del__(self):
            predictor = getattr(self, "_predictor", None)
            if predictor is not None:
                predictor.close()
            for pool in (getattr(self, "_model_thread", None), getattr(self, "_io_threads", None)):
                if pool is not None:
                    pool.shutdown(wait=False)

    return MaskRCNNService


def _canvas_groups(images: List[Any], predictor: Any) -> List[List[int]]:
    """Indices of ``images`` grouped by the canvas each would get alone, in order of first appearance."""
    from deploy_sdk.preprocessing import batch_layout

    meta = predictor.metadata
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, image in enumerate(images):
        _, canvas = batch_layout(
            [image.shape[:2]],
            int(meta.min_size),
            int(meta.max_size),
            int(meta.size_divisible or 1),
            predictor.backend.fixed_size,
        )
        groups.setdefault(canvas, []).append(i)
    return list(groups.values())


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise RequestError(
            413,
            f"request body is {int(declared)} bytes, more than this service accepts ({limit}); "
            "send a smaller image or split the request",
        )
    chunks: List[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413,
                f"request body is more than this service accepts ({limit} bytes); send a "
                "smaller image or split the request",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _check_model_can_resize(image: Any, name: str, min_size: int, max_size: int) -> None:
    from deploy_sdk.errors import InputImageError
    from deploy_sdk.preprocessing import check_resizable

    try:
        check_resizable(image.shape[0], image.shape[1], min_size, max_size, name)
    except InputImageError as exc:
        raise RequestError(400, str(exc)) from exc


def _sdk_version() -> str:
    from deploy_sdk.version import __version__

    return __version__
