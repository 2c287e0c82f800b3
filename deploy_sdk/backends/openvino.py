"""OpenVINO backend: the exported ``.onnx`` file, made portable in memory, compiled by OpenVINO for a CPU or an
Intel GPU.

OpenVINO's ONNX reader does not expand model-local functions, so it refuses the graph's
``maskrcnn_deploy::MultiLevelRoIAlign`` nodes. The backend reads the file with ``onnx``, replaces each such node by
its function body (:func:`deploy_sdk.portable_graph.make_portable`, the same pass as ``maskrcnn-deploy inline``)
and hands the result to OpenVINO from memory, so users keep one file for every runtime. A file that is already
portable is read the same way. fp32, fp16 and INT8 (Q/DQ) graphs all work: OpenVINO runs the Q/DQ pairs as INT8
kernels.

Choices:

- ``inference_precision``: what OpenVINO computes in. Default: the graph's own precision, i.e. ``f32`` for fp32
  and INT8 graphs (the layers INT8 leaves in float stay fp32, as on ONNX Runtime) and ``f16`` for the fp16 graph
  on a GPU that lists FP16 among its capabilities, else ``f32`` (the fp16 weights upcast). ``f16`` on the CPU is
  refused: OpenVINO 2026.4 never finished compiling these graphs with f16 compute on an AVX512-FP16 Xeon. OpenVINO's
  own CPU default on CPUs with AVX512_BF16 or AMX is bf16, which is faster but changes the results (boxes by ~1 px,
  masks visibly): it has to be asked for (``inference_precision="bf16"``).
- ``performance_hint``: ``"latency"`` (default: one stream, every thread on one request; best for single images)
  or ``"throughput"`` (several streams, each running a request on its share of the threads; best for batches and
  ``predict_iter`` over many). With ``"throughput"`` a batch of several images is split over as many idle requests
  as there are streams (never waiting for one), run side by side and put back together: on a small model the
  streams use the cores better than one request on all of them (``benchmarks/RESULTS.md``).
- Requests: a pool of ``num_requests`` OpenVINO infer requests (default: OpenVINO's optimal number for the hint,
  at least 2, times the streams a batch may be split over). :meth:`submit` starts a batch on an idle request and
  returns at once; ``async_depth`` tells the predictor how many batches to keep in flight (the pool divided by the
  streams a batch may take), so ``predict_iter`` pre-processes and post-processes some batches while OpenVINO
  infers others. ``infer`` may be called from several threads at once (each call takes its own request).
- ``threads``: ``INFERENCE_NUM_THREADS`` of the CPU plugin (default: OpenVINO's, all usable cores).
- ``static_shapes``: how many input shapes (batch, canvas) get a model compiled for exactly that shape, besides
  the dynamic one every other shape runs on (default 0: the dynamic model only). OpenVINO plans memory and
  kernels once for a static model instead of at every call: on the shipped model at 384x512 (2 threads,
  ``benchmarks/RESULTS.md`` (c7)) batch 1 ran 1.13x faster in f32 and 1.55x in INT8. Each shape costs a compile on
  its first batch (0.5 s f32, 0.8-1.4 s INT8 on the shipped model) and a compiled model's memory; the first
  ``static_shapes`` shapes seen keep theirs (no eviction, so a workload cycling through more shapes never
  recompiles). Pays where the shapes repeat: a fixed-size export (``export --height/--width``) or same-size images
  at a fixed batch size; with mixed sizes the compiles cost more than they gain (README).

Ties: ONNX's TopK keeps the lower index among equal values; OpenVINO's only when its ``stable`` attribute is set,
which its ONNX reader does not do. ``stable_topk=True`` sets it on every value-sorted TopK, so that the same elements
survive each top-k cut as on ONNX Runtime when scores tie exactly. It is off by default: OpenVINO's stable TopK
costs about 230 ms per 384x512 image on the shipped model (2.3x the whole inference otherwise), and fp32 scores
practically never tie (the parity tests pass without it).

Counters for tests and tuning: ``requests_started`` and ``peak_in_flight`` (requests taken from the pool and not
yet given back: started, running or finished but not yet collected).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from deploy_sdk.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend, check_threads
from deploy_sdk.errors import DeploySdkError, EngineError, require
from deploy_sdk.model_metadata import ModelMetadata

__all__ = [
    "OpenVinoBackend",
    "openvino_device",
    "read_portable_model",
    "fixed_canvas",
    "compile_config",
    "with_static_inputs",
    "PERFORMANCE_HINTS",
    "INFERENCE_PRECISIONS",
    "INPUT_DTYPES",
]

PERFORMANCE_HINTS = ("latency", "throughput")
INFERENCE_PRECISIONS = ("f32", "f16", "bf16")
# numpy dtype of each element type the `images` input may have (OpenVINO names).
INPUT_DTYPES = {"f32": np.float32, "u8": np.uint8}


def read_portable_model(core: Any, path: str) -> Tuple[Any, ModelMetadata]:
    """OpenVINO's model of the exported graph at ``path``, its local functions inlined in memory (an already
    portable file is read as it is), and the graph's metadata. Unreadable files raise :class:`EngineError`."""
    onnx = require("onnx", "openvino", "the openvino backend (it reads the .onnx file to inline its functions)")
    from deploy_sdk.portable_graph import is_portable, make_portable

    try:
        graph = onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise EngineError(f"{path} is not a readable ONNX model ({exc}); re-export it") from exc
    metadata = ModelMetadata.from_props({p.key: p.value for p in graph.metadata_props}, source=path)
    if not is_portable(graph):
        graph = make_portable(graph)
    try:
        model = core.read_model(graph.SerializeToString())
    except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report
        raise EngineError(f"OpenVINO cannot read {path}: {_first_line(exc)}") from exc
    return model, metadata


def fixed_canvas(model: Any, metadata: ModelMetadata) -> Optional[Tuple[int, int]]:
    """The (H, W) canvas a fixed-size graph takes (static ``images`` dims, else the metadata's), or None."""
    shape = next(p for p in model.inputs if p.get_any_name() == "images").get_partial_shape()
    if shape[2].is_static and shape[3].is_static:
        return shape[2].get_length(), shape[3].get_length()
    if metadata.fixed_height and metadata.fixed_width:
        return int(metadata.fixed_height), int(metadata.fixed_width)
    return None


def compile_config(
    performance_hint: str, inference_precision: str, threads: Optional[int], device_kind: str
) -> Dict[str, Any]:
    """The ``compile_model`` properties of the backend's choices (``device_kind``: "CPU" or "GPU")."""
    config: Dict[str, Any] = {
        "PERFORMANCE_HINT": performance_hint.upper(),
        "INFERENCE_PRECISION_HINT": inference_precision,
    }
    if threads and device_kind == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def with_static_inputs(ov: Any, model: Any, images_shape: Tuple[int, ...], image_sizes_shape: Tuple[int, ...]) -> Any:
    """A copy of ``model`` whose inputs have exactly these shapes: what ``static_shapes`` compiles."""
    static = model.clone()
    static.reshape(
        {"images": ov.PartialShape(list(images_shape)), "image_sizes": ov.PartialShape(list(image_sizes_shape))}
    )
    return static


def openvino_device(device: str) -> str:
    """``"cpu"`` → ``"CPU"``; ``"gpu"`` → ``"GPU"``; ``"gpu:1"`` / ``"gpu.1"`` → ``"GPU.1"`` (OpenVINO's names).

    CUDA devices are not OpenVINO devices: :class:`DeploySdkError` says which backends run on them.
    """
    text = str(device).strip().lower()
    if text == "cpu":
        return "CPU"
    if text == "gpu":
        return "GPU"
    for sep in (":", "."):
        if text.startswith("gpu" + sep) and text[4:].isdigit():
            return f"GPU.{int(text[4:])}"
    if text.startswith("cuda"):
        raise DeploySdkError(
            f"device {device!r}: the openvino backend runs on CPUs and Intel GPUs ('cpu', 'gpu', 'gpu:N'); for an "
            "NVIDIA GPU use the tensorrt or onnxruntime backend"
        )
    raise DeploySdkError(f"device must be 'cpu', 'gpu' or 'gpu:N' for the openvino backend, got {device!r}")


class _Request:
    """One OpenVINO infer request, the compiled model it belongs to, and the batch it runs."""

    __slots__ = ("request", "owner", "ticket", "done", "outputs", "error", "inputs")

    def __init__(self, request: Any, owner: _Compiled):
        self.request = request
        self.owner = owner
        self.ticket = -1  # the pool ticket of the batch it runs
        self.done = threading.Event()
        self.outputs: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[BaseException] = None
        self.inputs: Any = None  # the batch's arrays, kept alive while OpenVINO reads them without a copy


class _Compiled:
    """A compiled model and the infer requests made from it: made on demand, reused once their batch is collected.
    How many run at once is bounded by the backend's tickets, not here."""

    def __init__(self, compiled: Any, on_done: Callable[[_Request], None]):
        self.compiled = compiled
        self._on_done = on_done
        self._free: List[_Request] = []
        self.made: List[_Request] = []
        self._lock = threading.Lock()

    def take(self) -> _Request:
        with self._lock:
            if self._free:
                return self._free.pop()
        slot = _Request(self.compiled.create_infer_request(), self)
        slot.request.set_callback(self._on_done, slot)
        with self._lock:
            self.made.append(slot)
        return slot

    def give_back(self, slot: _Request) -> None:
        with self._lock:
            self._free.append(slot)


class OpenVinoBackend(Backend):
    """An OpenVINO compiled model of a deployment graph (see the module docstring for the choices).

    - ``path``: an exported ``.onnx`` (fp32, fp16 or INT8), or its portable form (``maskrcnn-deploy inline``).
    - ``device``: "cpu" (default) or "gpu" / "gpu:N" for an Intel GPU that OpenVINO sees.
    - ``threads``: CPU inference threads (None / 0: OpenVINO's default).
    - ``performance_hint``: "latency" or "throughput".
    - ``num_requests``: size of the infer-request pool (None: OpenVINO's optimal number, at least 2).
    - ``inference_precision``: None (the graph's precision), "f32", "f16" or "bf16".
    - ``stable_topk``: break TopK ties by index as ONNX specifies (slow in OpenVINO; see the module docstring).
    - ``static_shapes``: input shapes that get their own static compiled model (see the module docstring).
    """

    name = "openvino"
    thread_safe = True

    def __init__(
        self,
        path: os.PathLike[str] | str,
        device: str = "cpu",
        threads: Optional[int] = None,
        performance_hint: str = "latency",
        num_requests: Optional[int] = None,
        inference_precision: Optional[str] = None,
        stable_topk: bool = False,
        static_shapes: int = 0,
    ):
        self._closed = True
        self._dynamic: Optional[_Compiled] = None
        self._static: Dict[Tuple[Tuple[int, ...], Tuple[int, ...]], _Compiled] = {}
        self.path = os.fspath(path)
        threads = check_threads(threads)
        target = openvino_device(device)
        hint = str(performance_hint).strip().lower()
        if hint not in PERFORMANCE_HINTS:
            raise DeploySdkError(
                f"performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {performance_hint!r}"
            )
        if num_requests is not None and (isinstance(num_requests, bool) or int(num_requests) < 1):
            raise DeploySdkError(f"num_requests must be a positive integer or None, got {num_requests!r}")
        if isinstance(static_shapes, bool) or not isinstance(static_shapes, int) or static_shapes < 0:
            raise DeploySdkError(f"static_shapes must be a non-negative integer (0: off), got {static_shapes!r}")
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise DeploySdkError(
                f"inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)} or None, "
                f"got {inference_precision!r}"
            )
        ov = require("openvino", "openvino", "the openvino backend")
        require("onnx", "openvino", "the openvino backend (it reads the .onnx file to inline its functions)")
        if not os.path.isfile(self.path):
            raise EngineError(
                f"ONNX model not found: {self.path}; export one with: maskrcnn-deploy export CKPT -o MODEL.onnx"
            )
        core = ov.Core()
        self.device = target.lower().replace("gpu.", "gpu:")
        kind = target.partition(".")[0]
        if not any(d == target or (target == kind and d.startswith(kind)) for d in core.available_devices):
            raise DeploySdkError(
                f"OpenVINO sees no {target} device on this machine (it sees: "
                f"{', '.join(core.available_devices) or 'none'})"
            )
        model, self.metadata = read_portable_model(core, self.path)
        self.stable_topk = _onnx_topk_ties(model) if stable_topk else 0
        names = {p.get_any_name() for p in model.inputs}
        outs = {p.get_any_name() for p in model.outputs}
        if set(INPUT_NAMES) - names or set(OUTPUT_NAMES) - outs:
            raise EngineError(
                f"{self.path} is not a deployment graph: inputs {sorted(names)} / outputs {sorted(outs)}, "
                f"expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        image_input = next(p for p in model.inputs if p.get_any_name() == "images")
        type_name = image_input.get_element_type().get_type_name()
        if type_name not in INPUT_DTYPES:
            raise EngineError(f"{self.path}: input 'images' is {type_name}; expected float32 or uint8")
        self.input_dtype = INPUT_DTYPES[type_name]
        shape = image_input.get_partial_shape()
        self.max_batch_size = shape[0].get_length() if shape[0].is_static else None
        self.fixed_size = fixed_canvas(model, self.metadata)

        capabilities = set(core.get_property(kind, "OPTIMIZATION_CAPABILITIES"))
        if inference_precision is None:
            # f16 compute for the fp16 graph on devices that have it, except the CPU (see the refusal below)
            fp16_compute = self.metadata.precision == "fp16" and "FP16" in capabilities and kind != "CPU"
            inference_precision = "f16" if fp16_compute else "f32"
        if inference_precision == "f16" and kind == "CPU":
            # OpenVINO 2026.4's CPU plugin does not finish compiling these graphs with f16 compute on CPUs with
            # AVX512-FP16: compile_model ran for over 20 minutes, for the fp32 and fp16 graphs alike.
            # A refusal beats a hang; bf16 (AMX/AVX512_BF16) is the fast reduced-precision path on those CPUs.
            raise DeploySdkError(
                "inference_precision='f16' on OpenVINO's CPU device is refused: OpenVINO 2026.4 "
                "does not finish compiling this graph with f16 compute on CPUs with AVX512-FP16; "
                "use 'bf16' (faster, about 1 AP point lower) or 'f32'"
            )
        needs = {"f16": "FP16", "bf16": "BF16"}.get(inference_precision)
        if needs and needs not in capabilities:
            raise DeploySdkError(
                f"inference_precision={inference_precision!r}: OpenVINO's {target} device does not "
                f"support {needs} (its capabilities: {', '.join(sorted(capabilities))})"
            )
        self.performance_hint = hint
        self.inference_precision = inference_precision
        config = compile_config(hint, inference_precision, threads, kind)
        try:
            self.compiled = core.compile_model(model, target, config)
        except Exception as exc:
            raise EngineError(f"OpenVINO cannot compile {self.path} for {target}: {_first_line(exc)}") from exc
        optimal = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # With the throughput hint, how many requests (one per stream) one batch may be split over (see _start).
        self._split_ways = max(1, int(self.compiled.get_property("NUM_STREAMS"))) if hint == "throughput" else 1
        size = int(num_requests) if num_requests is not None else max(2, optimal) * self._split_ways
        # The pool: `size` tickets, one per request allowed to run at once, whichever compiled model it is made from.
        self._pool_size = size
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        for ticket in range(size):
            self._idle.put(ticket)
        self._dynamic = _Compiled(self.compiled, self._finished)
        for slot in [self._dynamic.take() for _ in range(size)]:  # made up front: the first batches wait for none
            self._dynamic.give_back(slot)
        self.static_shapes = static_shapes
        self._static_lock = threading.Lock()
        # The ``images`` shapes that have a static compiled model, in the order they were compiled.
        self.static_shapes_compiled: List[Tuple[int, ...]] = []
        self._model = model if static_shapes else None  # reshaped copies of it are compiled per static shape
        self._ov, self._core = ov, core
        self._config, self._target = config, target
        # Batches a caller may keep in flight: each may hold up to _split_ways requests, and the pool must never run
        # dry while a caller holds requests it has not collected yet (predict_iter would wait on itself).
        self.async_depth = max(1, size // self._split_ways)
        self._count_lock = threading.Lock()
        self._running = 0
        self.requests_started = 0
        self.peak_in_flight = 0
        self._closed = False

    # ---------------------------------------------------------------------------------------------------------
    def property(self, name: str) -> Any:
        """A property of the compiled model, e.g. ``INFERENCE_NUM_THREADS``, ``NUM_STREAMS``,
        ``INFERENCE_PRECISION_HINT``, ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``."""
        self._check_open()
        return self.compiled.get_property(name)

    def _check_open(self) -> None:
        if self._closed:
            raise DeploySdkError(f"openvino backend for {os.path.basename(self.path)} is closed")

    def _infer(self, images: np.ndarray, image_sizes: np.ndarray) -> Dict[str, Any]:
        return self._start(images, image_sizes)()

    def _start(self, images: np.ndarray, image_sizes: np.ndarray) -> Callable[[], Dict[str, Any]]:
        self._check_open()
        tickets = [self._idle.get()]  # blocks while every request of the pool is running
        batch = int(images.shape[0])
        # Throughput hint: more idle requests, taken without waiting (a wait could deadlock a caller that keeps
        # several batches in flight and collects them in order), each running a slice of the batch on its stream.
        while len(tickets) < min(batch, self._split_ways):
            try:
                tickets.append(self._idle.get_nowait())
            except queue.Empty:
                break
        if len(tickets) == 1:
            return self._start_on(tickets[0], images, image_sizes)
        bounds = np.linspace(0, batch, len(tickets) + 1).round().astype(int)
        waiters: List[Callable[[], Dict[str, Any]]] = []
        try:
            for i, ticket in enumerate(tickets):
                part = slice(bounds[i], bounds[i + 1])
                waiters.append(self._start_on(ticket, images[part], image_sizes[part]))
        except BaseException:
            for unused in tickets[len(waiters) + 1 :]:  # the failed one was given back by _start_on
                self._idle.put(unused)
            _wait_all(waiters)
            raise
        return lambda: _join_batches(_wait_all(waiters))

    def _compiled_for(self, images: np.ndarray, image_sizes: np.ndarray) -> _Compiled:
        """The static model of this input shape (compiled on its first batch while fewer than ``static_shapes``
        exist), else the dynamic one."""
        dynamic = self._dynamic
        if dynamic is None:  # closed
            raise DeploySdkError(f"openvino backend for {os.path.basename(self.path)} is closed")
        if not self.static_shapes:
            return dynamic
        key = (tuple(images.shape), tuple(image_sizes.shape))
        with self._static_lock:  # one compile at a time; batches of shapes already compiled wait only for it
            entry = self._static.get(key)
            if entry is None and self._model is not None and len(self._static) < self.static_shapes:
                try:
                    model = with_static_inputs(self._ov, self._model, key[0], key[1])
                    compiled = self._core.compile_model(model, self._target, self._config)
                except Exception as exc:
                    raise EngineError(
                        f"OpenVINO cannot compile {os.path.basename(self.path)} for the static input shape "
                        f"{list(key[0])}: {_first_line(exc)}; static_shapes=0 runs every shape on the dynamic model"
                    ) from exc
                entry = self._static[key] = _Compiled(compiled, self._finished)
                self.static_shapes_compiled.append(key[0])
        return entry or dynamic

    def _start_on(self, ticket: int, images: np.ndarray, image_sizes: np.ndarray) -> Callable[[], Dict[str, Any]]:
        images, image_sizes = np.ascontiguousarray(images), np.ascontiguousarray(image_sizes)
        try:
            slot = self._compiled_for(images, image_sizes).take()
        except BaseException:
            self._idle.put(ticket)
            raise
        slot.ticket = ticket
        slot.done.clear()
        slot.outputs, slot.error = None, None
        slot.inputs = (images, image_sizes)
        with self._count_lock:
            self._running += 1
            self.requests_started += 1
            self.peak_in_flight = max(self.peak_in_flight, self._running)
        try:
            # share_inputs: OpenVINO reads the arrays in place (they stay referenced by the slot until it is done).
            slot.request.start_async({"images": slot.inputs[0], "image_sizes": slot.inputs[1]}, share_inputs=True)
        except Exception as exc:
            self._release(slot)
            raise EngineError(f"OpenVINO could not start inference: {_first_line(exc)}") from exc
        return lambda: self._wait(slot)

    def _finished(self, slot: _Request) -> None:
        # OpenVINO calls this from its own thread when a request succeeds (not when it fails: then wait() raises).
        # The outputs are copied out here, before the request goes back to the pool and is reused.
        try:
            slot.outputs = {n: np.array(slot.request.get_tensor(n).data, copy=True) for n in OUTPUT_NAMES}
        except BaseException as exc:
            slot.error = exc
        finally:
            slot.done.set()

    def _wait(self, slot: _Request) -> Dict[str, Any]:
        try:
            slot.request.wait()  # returns when the request is done; raises what inference raised
        except Exception as exc:
            self._release(slot)
            raise EngineError(f"OpenVINO inference failed: {_first_line(exc)}") from exc
        slot.done.wait()  # the success callback may still be copying the outputs
        outputs, error = slot.outputs, slot.error
        self._release(slot)
        if error is not None or outputs is None:
            raise EngineError(f"OpenVINO returned no outputs: {_first_line(error) if error else 'unknown error'}")
        return outputs

    def _release(self, slot: _Request) -> None:
        slot.inputs = None
        slot.outputs, slot.error = None, None
        with self._count_lock:
            self._running -= 1
        ticket, slot.ticket = slot.ticket, -1
        slot.owner.give_back(slot)
        self._idle.put(ticket)

    def close(self) -> None:
        """Wait for running requests, then release the compiled model."""
        if self._closed:
            return
        self._closed = True
        for entry in [self._dynamic, *self._static.values()] if self._dynamic else []:
            for slot in entry.made:
                try:
                    slot.request.wait()
                except Exception:
                    pass
        self._dynamic, self._static, self._model = None, {}, None
        self.compiled = None

    def describe(self) -> str:
        if self._closed:
            return f"openvino (closed) {os.path.basename(self.path)}"
        return (
            f"openvino {self.device} {os.path.basename(self.path)} ({self.performance_hint}, "
            f"{self.inference_precision}, {self._pool_size} requests"
            + (f", static shapes {len(self._static)}/{self.static_shapes}" if self.static_shapes else "")
            + ")"
        )


def _wait_all(waiters: List[Callable[[], Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Every waiter's outputs; all are waited for (so every request goes back to the pool) before an error raises."""
    results: List[Dict[str, Any]] = []
    error: Optional[BaseException] = None
    for wait in waiters:
        try:
            results.append(wait())
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return results


def _join_batches(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The outputs of consecutive slices of one batch as the outputs of the whole batch. The mask output has as many
    slots as the slice's most detections (the graph pools masks for the first n slots only), so slices are padded
    with zero masks to the largest: slots past an image's ``num_detections`` hold zeros, as in one batch."""
    joined: Dict[str, Any] = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        largest = np.max([a.shape for a in arrays], axis=0)
        padded = []
        for a in arrays:
            grow = [(0, 0)] + [(0, int(want - have)) for want, have in zip(largest[1:], a.shape[1:])]
            padded.append(np.pad(a, grow) if any(after for _, after in grow) else a)
        joined[name] = np.concatenate(padded, axis=0)
    return joined


def _onnx_topk_ties(model: Any) -> int:
    """Make every value-sorted TopK of ``model`` (an ``openvino.Model``) break ties as ONNX does; return how many.

    ONNX's TopK returns equal values in index order (the lower index first), and ONNX Runtime does so. OpenVINO's
    TopK-11 does only with ``stable=True``, which its ONNX reader leaves False, so among equal scores at a top-k cut
    it may keep other elements than ONNX Runtime. Rare with fp32 scores; common where scores lie on a coarse grid.
    """
    changed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "TopK":
            continue
        attrs = op.get_attributes()
        if attrs.get("sort") == "value" and attrs.get("stable") is False:
            op.set_attribute("stable", True)
            changed += 1
    if changed:
        model.validate_nodes_and_infer_types()
    return changed


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO's messages start with "Exception from src/...:NN:" lines; the last line says what went wrong.
    useful = [line for line in lines if not line.startswith("Exception from ")]
    return (useful or lines or [type(exc).__name__])[-1 if useful else 0][:400]
