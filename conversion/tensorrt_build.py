"""Build a TensorRT engine from an exported deployment graph (TensorRT 10 and 11).

Precision is a property of the graph (fp32, the fp16 graph of ``deploy_sdk.conversion.fp16`` or the Q/DQ graph of
``deploy_sdk.conversion.quantize``): the network is always strongly typed, which TensorRT 11 requires and TensorRT 10
offers
through ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``. No precision builder flags are set.

Steps: read the ONNX file and its metadata → strip the RoIAlign local function
(``deploy_sdk.conversion.graph_passes``) so
the parser falls back to the plugin registry → load the RoIAlign plugin library → parse (errors name each node
and op) → one optimization profile from :class:`ProfileSpec` → build with a progress monitor and an optional
timing cache → write the plan with its header (``deploy_sdk.engine_file``) atomically.

Everything before the first TensorRT call (:func:`profile_shapes`, :func:`prepare_onnx_for_tensorrt`) is plain
Python and tested without a GPU; the TensorRT calls are kept few and type-checked against ``tensorrt-stubs``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, TextIO, Tuple, Union

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.backends.tensorrt import import_tensorrt, load_plugin_library
from deploy_sdk.engine_file import EngineHeader, current_gpu, write_engine_file
from deploy_sdk.errors import DeploySdkError, EngineError
from deploy_sdk.model_metadata import ModelMetadata

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "ProfileSpec",
    "BuildOptions",
    "profile_shapes",
    "prepare_onnx_for_tensorrt",
    "build_engine",
]

IMAGES, IMAGE_SIZES = "images", "image_sizes"

Shape = List[int]
ProfileShapes = Dict[str, Dict[str, Shape]]


@dataclass
class ProfileSpec:
    """The one optimization profile: batch range and padded-canvas (height, width) range, in pixels.

    ``None`` fields take defaults from the model metadata: batch 1/1/1; canvas from one ``size_divisible`` step
    (min) to ``max_size`` rounded up to ``size_divisible`` (opt and max) for a dynamic graph, or the graph's fixed
    size for a fixed one.
    """

    min_batch: int = 1
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    min_shape: Optional[Tuple[int, int]] = None
    opt_shape: Optional[Tuple[int, int]] = None
    max_shape: Optional[Tuple[int, int]] = None


@dataclass
class BuildOptions:
    """Options of :func:`build_engine` besides the profile.

    ``workspace_gb``: cap of TensorRT's workspace memory pool in GiB (None: TensorRT's default, the whole GPU).
    ``timing_cache``: file read before the build if it exists and rewritten after, so rebuilds skip kernel timing.
    ``plugin_library``: the RoIAlign plugin ``.so`` (None: ``deploy_sdk.plugins.library_path()``).
    """

    profile: ProfileSpec
    workspace_gb: Optional[float] = None
    timing_cache: Optional[Path] = None
    plugin_library: Optional[Path] = None
    verbose: bool = False


def parse_hw(text: str) -> Tuple[int, int]:
    """``"512x640"`` → ``(512, 640)`` (height, width in pixels); a single number means a square."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise DeploySdkError(f"shape '{text}' is not HEIGHTxWIDTH in pixels, e.g. 512x512")
    return values[0], values[1]


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def profile_shapes(spec: ProfileSpec, metadata: ModelMetadata) -> ProfileShapes:
    """Min/opt/max shapes of the graph inputs for one optimization profile.

    Returns ``{"images": {"min": [B, 3, H, W], "opt": ..., "max": ...}, "image_sizes": {"min": [B, 2], ...}}``.
    Raises :class:`DeploySdkError` for inconsistent options: a range not ordered min ≤ opt ≤ max, a canvas side
    that is not a multiple of ``metadata.size_divisible`` (the backbone's stride: the graph pads to it), or a
    canvas other than the size of a graph exported with a fixed size.
    """
    step = metadata.size_divisible
    batches = [spec.min_batch, spec.opt_batch, spec.max_batch]
    batches[1] = batches[1] if batches[1] is not None else batches[0]
    batches[2] = batches[2] if batches[2] is not None else max(batches[1], batches[0])  # type: ignore[type-var]
    b_min, b_opt, b_max = (int(b) for b in batches)  # type: ignore[arg-type]
    if not 1 <= b_min <= b_opt <= b_max:
        raise DeploySdkError(
            f"batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch; got {b_min}, {b_opt}, {b_max}"
        )

    if metadata.fixed_height is not None and metadata.fixed_width is not None:
        fixed = (metadata.fixed_height, metadata.fixed_width)
        for name, given in (
            ("--min-shape", spec.min_shape),
            ("--opt-shape", spec.opt_shape),
            ("--max-shape", spec.max_shape),
        ):
            if given is not None and (given[0], given[1]) != fixed:
                raise DeploySdkError(
                    f"{name} {given[0]}x{given[1]} differs from the graph's fixed input size {fixed[0]}x{fixed[1]}; "
                    "omit the shape options or re-export without --height/--width for a dynamic graph"
                )
        hw_min = hw_opt = hw_max = fixed
    else:
        largest = _round_up(metadata.max_size, step)
        hw_max = spec.max_shape if spec.max_shape is not None else (largest, largest)
        hw_opt = spec.opt_shape if spec.opt_shape is not None else hw_max
        hw_min = spec.min_shape if spec.min_shape is not None else (step, step)
        for name, hw in (("--min-shape", hw_min), ("--opt-shape", hw_opt), ("--max-shape", hw_max)):
            if hw[0] % step or hw[1] % step:
                raise DeploySdkError(
                    f"{name} {hw[0]}x{hw[1]} is not a multiple of {step} on both sides; the graph's input canvas "
                    f"is padded to multiples of {step} (use e.g. {_round_up(hw[0], step)}x{_round_up(hw[1], step)})"
                )
        for axis, label in ((0, "height"), (1, "width")):
            if not hw_min[axis] <= hw_opt[axis] <= hw_max[axis]:
                raise DeploySdkError(
                    f"canvas {label} must satisfy min <= opt <= max; got {hw_min[axis]}, {hw_opt[axis]}, "
                    f"{hw_max[axis]} "
                    "from --min-shape/--opt-shape/--max-shape"
                )
    return {
        IMAGES: {
            "min": [b_min, 3, hw_min[0], hw_min[1]],
            "opt": [b_opt, 3, hw_opt[0], hw_opt[1]],
            "max": [b_max, 3, hw_max[0], hw_max[1]],
        },
        IMAGE_SIZES: {"min": [b_min, 2], "opt": [b_opt, 2], "max": [b_max, 2]},
    }


def read_graph(onnx_path: Union[str, os.PathLike]) -> Tuple[onnx.ModelProto, ModelMetadata]:
    """Load an exported deployment graph and its metadata; refuse files that are not ours."""
    from deploy_sdk.conversion.graph_file import load_deployment_graph

    path = Path(onnx_path)
    model, metadata = load_deployment_graph(path, "building a TensorRT engine")
    if (metadata.extra.get("calibration") or {}).get("target") == "cpu":
        raise EngineError(
            f"{path} was quantized for ONNX Runtime CPU (uint8 activations with zero points), which TensorRT "
            "cannot build; quantize the fp32 graph again with: maskrcnn-deploy quantize ... --target tensorrt"
        )
    inputs = [i.name for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if sorted(inputs) != sorted([IMAGES, IMAGE_SIZES]):
        raise EngineError(
            f"{path} has graph inputs {inputs}; a deployment graph has exactly '{IMAGES}' and '{IMAGE_SIZES}'. "
            "Export it with: maskrcnn-deploy export"
        )
    return model, metadata


def prepare_onnx_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose RoIAlign nodes have no local function, so TensorRT uses the plugin.

    TensorRT's ONNX parser expands a node's model-local function when one exists and only otherwise looks for a
    plugin with the node's op name; the graph pass that removes the function belongs to the export
    (``deploy_sdk.conversion.graph_passes``), which also checks the node's attributes against the plugin contract.
    """
    from deploy_sdk.conversion import graph_passes

    return graph_passes.strip_roi_align_functions(model)


def _progress_monitor_class(out: TextIO):
    """An ``IProgressMonitor`` printing build phases with their nesting; Ctrl-C cancels the build cleanly."""
    import tensorrt as trt

    class PrintingProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._depth: Dict[str, int] = {}
            self._started: Dict[str, float] = {}
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name] = depth
            self._started[phase_name] = time.monotonic()
            # Nested phases repeat per layer; only the top two levels are worth a line each.
            if depth <= 1:
                print(f"  {'  ' * depth}{phase_name} ({num_steps} steps)", file=out, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            depth = self._depth.pop(phase_name, 0)
            started = self._started.pop(phase_name, time.monotonic())
            if depth <= 1:
                print(f"  {'  ' * depth}{phase_name} done in {time.monotonic() - started:.1f} s", file=out, flush=True)

    return PrintingProgressMonitor


@contextlib.contextmanager
def _cancel_on_ctrl_c(monitor) -> Iterator[None]:
    """While TensorRT builds, Ctrl-C asks the progress monitor to cancel instead of raising inside a callback.

    Python delivers SIGINT only when control is back in Python; raising there would unwind through TensorRT's
    C++ frames. Returning False from ``step_complete`` is TensorRT's own way to stop a build.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        monitor.cancelled = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def build_engine(
    onnx_path: Union[str, os.PathLike],
    engine_path: Union[str, os.PathLike],
    options: BuildOptions,
    out: Optional[TextIO] = None,
) -> EngineHeader:
    """Build ``onnx_path`` into a TensorRT engine file at ``engine_path``; returns the header written.

    Raises :class:`MissingDependencyError` without TensorRT, :class:`PluginError` without the plugin library,
    :class:`EngineError` when parsing or building fails (parse errors list every failing node's name and op).
    """
    out = sys.stderr if out is None else out
    model, metadata = read_graph(onnx_path)
    shapes = profile_shapes(options.profile, metadata)
    stripped = prepare_onnx_for_tensorrt(model).SerializeToString()
    import_tensorrt("building a TensorRT engine")  # a clear error when TensorRT is missing or only its stubs are
    import tensorrt as trt  # the real package now; imported by name so that mypy checks the calls against the stubs

    major = int(str(trt.__version__).split(".")[0])

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    # The global registry: the ONNX parser looks the RoIAlign node's op up there (PluginError if the library is
    # missing, does not load into this TensorRT, or registers no creator for the op).
    plugin_path = load_plugin_library(trt.get_plugin_registry(), options.plugin_library)
    print(f"loaded RoIAlign plugin library {plugin_path}", file=out, flush=True)

    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed (the flag is kept there only as an ignored no-op); on 10 it
    # must be asked for, else TensorRT may pick its own precisions and ignore the graph's fp16/Q-DQ choices.
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    print(f"parsing {onnx_path} (TensorRT {trt.__version__})", file=out, flush=True)
    if not parser.parse(stripped, str(Path(onnx_path).resolve())):
        problems = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            problems.append(f"node '{error.node_name()}' (op {error.node_operator()}): {error.desc()}")
        raise EngineError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + "; ".join(problems or ["no details given"])
        )

    config = builder.create_builder_config()
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, dims in shapes.items():
        profile.set_shape(name, trt.Dims(dims["min"]), trt.Dims(dims["opt"]), trt.Dims(dims["max"]))
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if options.timing_cache is not None and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
        print(f"using timing cache {options.timing_cache} ({len(cache_bytes)} bytes)", file=out, flush=True)
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=True: a cache from another GPU or TensorRT version is skipped rather than failing the build.
    config.set_timing_cache(cache, True)

    monitor = _progress_monitor_class(out)()
    config.progress_monitor = monitor
    print(f"building engine: profile {shapes}", file=out, flush=True)
    started = time.monotonic()
    with _cancel_on_ctrl_c(monitor):
        plan = builder.build_serialized_network(network, config)
    if monitor.cancelled:
        raise KeyboardInterrupt
    if plan is None:
        raise EngineError(
            f"TensorRT {trt.__version__} failed to build {onnx_path} (see the TensorRT messages above; "
            "--verbose prints more)"
        )
    print(f"built in {time.monotonic() - started:.0f} s", file=out, flush=True)

    if options.timing_cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    header = EngineHeader(
        metadata=metadata,
        tensorrt_version=str(trt.__version__),
        gpu=current_gpu(),
        profile=shapes,
    )
    return write_engine_file(engine_path, bytes(plan), header)
