"""Static-shape stages of the torch backend: reduced precision and CUDA-graph capture per input-shape bucket.

The deployment module is eager PyTorch with a few data-dependent steps (the two NMS calls, the number of mask
slots), so it cannot be captured whole. What dominates its GPU time is not data-dependent: backbone + FPN, the RPN
head, the box head and the mask head see tensors whose shapes follow from (batch, canvas) alone, or from a number
of RoIs that can be padded. :class:`Stage` wraps one such submodule:

- **precision**: the submodule's weights are cast to fp16 / bf16 and so are its floating inputs; its outputs are
  cast back to fp32 where the glue needs fp32 (``fp32_outputs``: RPN logits and deltas, class logits and box
  deltas, mask logits; box decoding, softmax, NMS and clipping stay fp32 as in the fp16 ONNX graph). Features
  stay in the low precision, which the RoIAlign op pools natively (fp16) or through fp32 (bf16).
- **CUDA graphs** (:class:`ShapeBuckets`): the first call with a new input signature captures the stage into a
  CUDA graph with static input buffers; later calls copy the inputs into those buffers and replay. Stages whose
  rows are independent RoIs (box and mask heads) pad the RoI count up to a bucket (next power of two, at least
  8), so the varying number of mask slots does not capture a graph per count; the padded rows hold stale or zero
  data and are sliced off. Captured graphs are kept in a bounded LRU (each holds its own memory pool).

Outputs of a replayed stage are views of the graph's static output buffers: valid until that stage runs again.
The deployment module consumes them within the same forward, and the backend is not thread-safe, so nothing
outlives its buffer.

The capture function is a parameter so that the bucket and buffer logic runs, and is tested, on CPU
(:func:`eager_capture` re-runs the function into the same buffers, as a replay would write them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "PRECISIONS",
    "precision_dtype",
    "ShapeBuckets",
    "Stage",
    "row_bucket",
    "batch_bucket",
    "cuda_graph_capture",
    "eager_capture",
    "STAGES",
    "wrap_stages",
]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# A capture function: (fn, static_inputs) -> (replay, static_outputs); replay() recomputes fn on the current
# contents of static_inputs and leaves the result in static_outputs.
Capture = Callable[[Callable[..., Any], List[Tensor]], Tuple[Callable[[], None], Any]]


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}") from None


def row_bucket(rows: int, minimum: int = 8) -> int:
    """Rows padded for a per-RoI stage: the next power of two, at least ``minimum``."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    size = minimum
    while size < rows:
        size *= 2
    return size


def batch_bucket(batch: int, sizes: Sequence[int]) -> int:
    """The smallest size in ``sizes`` that holds ``batch``; ``batch`` itself past the largest."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    fitting = [s for s in sorted(sizes) if s >= batch]
    return fitting[0] if fitting else batch


def _map(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map(v, fn)) for k, v in obj.items())
    return obj


def _tensors(obj: Any) -> List[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def eager_capture(fn: Callable[..., Any], static_inputs: List[Tensor]):
    """Stand-in for CUDA-graph capture on any device: run ``fn`` once for the static outputs; ``replay`` runs it
    again and copies the result into those same buffers, which is what a graph replay leaves behind."""
    static_outputs = fn(*static_inputs)
    targets = _tensors(static_outputs)

    def replay() -> None:
        for dst, src in zip(targets, _tensors(fn(*static_inputs))):
            dst.copy_(src)

    return replay, static_outputs


def cuda_graph_capture(fn: Callable[..., Any], static_inputs: List[Tensor], warmup: int = 2):
    """Capture ``fn`` on ``static_inputs`` into a ``torch.cuda.CUDAGraph`` (after ``warmup`` eager runs on a side
    stream, as PyTorch requires, so that lazy initialisation and cuDNN autotuning stay out of the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = fn(*static_inputs)
    return graph.replay, static_outputs


class _Entry:
    __slots__ = ("inputs", "outputs", "replay", "rows")

    def __init__(self, inputs: List[Tensor], outputs: Any, replay: Callable[[], None], rows: Optional[int]):
        self.inputs, self.outputs, self.replay, self.rows = inputs, outputs, replay, rows


class ShapeBuckets:
    """Captured versions of one function, keyed by the (bucketed) shapes, dtypes and devices of its inputs.

    ``pad_rows``: the inputs' first dimension is a count of independent rows (RoIs); it is padded up to
    :func:`row_bucket` and the outputs are sliced back. ``max_entries``: captured graphs kept (least recently used
    evicted first). ``captures`` counts captures (tests and progress output use it).
    """

    def __init__(self, fn: Callable[..., Any], capture: Capture = cuda_graph_capture, pad_rows: bool = False,
                 max_entries: int = 16):  # fmt: skip
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.fn = fn
        self.capture = capture
        self.pad_rows = bool(pad_rows)
        self.max_entries = int(max_entries)
        self.entries: OrderedDict[Tuple, _Entry] = OrderedDict()
        self.captures = 0

    def key(self, inputs: Sequence[Tensor]) -> Tuple:
        rows = row_bucket(int(inputs[0].shape[0])) if self.pad_rows else None
        return tuple(
            ((rows,) + tuple(t.shape[1:]) if rows is not None else tuple(t.shape), t.dtype, str(t.device))
            for t in inputs
        )

    def __call__(self, *inputs: Tensor) -> Any:
        if self.pad_rows and len({int(t.shape[0]) for t in inputs}) != 1:
            raise ValueError("pad_rows needs inputs with the same first dimension")
        key = self.key(inputs)
        entry = self.entries.get(key)
        rows = int(inputs[0].shape[0]) if self.pad_rows else None
        if entry is None:
            static = [torch.zeros(k[0], dtype=k[1], device=t.device) for k, t in zip(key, inputs)]
            self._fill(static, inputs)
            replay, outputs = self.capture(self.fn, static)
            entry = _Entry(static, outputs, replay, rows)
            self.captures += 1
            self.entries[key] = entry
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
            self._fill(entry.inputs, inputs)
        entry.replay()
        if rows is None:
            return entry.outputs
        return _map(entry.outputs, lambda t: t[:rows])

    @staticmethod
    def _fill(static: List[Tensor], inputs: Sequence[Tensor]) -> None:
        for dst, src in zip(static, inputs):
            if dst.shape == src.shape:
                dst.copy_(src)
            else:
                dst[: src.shape[0]].copy_(src)


class Stage(nn.Module):
    """A submodule of the deployment module run in ``dtype`` and, with ``buckets`` given, from captured graphs.

    ``module``: the submodule (cast to ``dtype`` here); ``fp32_outputs``: cast floating outputs back to fp32;
    ``graphs``: a function (fn -> :class:`ShapeBuckets`) or None for eager. Inputs may be a tensor, a list of
    tensors (the RPN head takes the FPN levels) or a dict; the backbone returns a dict of levels.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, fp32_outputs: bool,
                 graphs: Optional[Callable[[Callable[..., Any]], ShapeBuckets]] = None):  # fmt: skip
        super().__init__()
        self.inner = module.to(dtype) if dtype != torch.float32 else module
        self.dtype = dtype
        self.fp32_outputs = bool(fp32_outputs)
        self._list_input: Optional[bool] = None
        self.buckets = graphs(self._run_flat) if graphs is not None else None

    def _cast_in(self, x: Any) -> Any:
        return _map(x, lambda t: t.to(self.dtype) if t.is_floating_point() else t)

    def _cast_out(self, y: Any) -> Any:
        if not self.fp32_outputs:
            return y
        return _map(y, lambda t: t.float() if t.is_floating_point() else t)

    def _run_flat(self, *tensors: Tensor) -> Any:
        # Graph capture takes flat tensor arguments; the RPN head wants its levels as one list.
        arg = list(tensors) if self._list_input else tensors[0]
        return self._cast_out(self.inner(arg))

    def forward(self, x: Any) -> Any:
        x = self._cast_in(x)
        if self.buckets is None:
            return self._cast_out(self.inner(x))
        self._list_input = isinstance(x, (list, tuple))
        flat = list(x) if self._list_input else [x]
        return self.buckets(*flat)


#: The deployment module's stages: (attribute, outputs back to fp32, rows are independent RoIs).
STAGES = (
    ("backbone", False, False),
    ("rpn_head", True, False),
    ("box_head", False, True),
    ("box_predictor", True, True),
    ("mask_head", False, True),
    ("mask_predictor", True, True),
)


def wrap_stages(module: nn.Module, dtype: torch.dtype, capture: Optional[Capture] = None,
                max_graphs: int = 8) -> nn.Module:  # fmt: skip
    """Replace the :data:`STAGES` submodules of a ``DeploymentModule`` by :class:`Stage` wrappers computing in
    ``dtype``, captured with ``capture`` (e.g. :func:`cuda_graph_capture`) per shape bucket when given, at most
    ``max_graphs`` kept per stage. Returns ``module``."""

    def graphs(pad_rows: bool):
        if capture is None:
            return None
        return lambda fn: ShapeBuckets(fn, capture, pad_rows=pad_rows, max_entries=max_graphs)

    for name, fp32_out, per_roi in STAGES:
        sub = getattr(module, name)
        if isinstance(sub, Stage):
            raise ValueError(f"{name} is already wrapped")
        setattr(module, name, Stage(sub, dtype, fp32_out, graphs(per_roi)))
    return module
