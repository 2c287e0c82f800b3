"""A Triton Inference Server model repository for an exported model: ``config.pbtxt``, the version folder, a README.

```
OUT/
  README.md                       how to start tritonserver and call the model (tritonclient)
  NAME/
    config.pbtxt                  platform, max_batch_size, inputs/outputs, dynamic batching, instance group
    1/model.onnx | 1/model.plan   the graph (copied), or the bare TensorRT plan (the SDK's header removed)
  plugins/libmaskrcnn_roi_align.so  (engines only, when the library is found) for LD_PRELOAD / --backend-config
```

Inputs and outputs are the model's own: names, data types and shapes are read from the ``.onnx`` graph (ONNX
Runtime's view of it) or, for an engine, from TensorRT when it is importable, else from the engine header's
optimization profile and the deployment graph contract (``docs/architecture.md``). The batch dimension becomes
``max_batch_size``; ``num_detections`` (shape ``[B]``) is declared ``dims: [1]`` with ``reshape: { shape: [] }``
as Triton requires for batch-only tensors. The SDK's model metadata (class names, preprocessing) travels in the
config's ``parameters`` (key ``maskrcnn_deploy.metadata``, JSON), so a client can read it from the server.

Triton serves the graph itself: the client does what :class:`~deploy_sdk.Predictor` does around it (resize, pad to
a canvas, map boxes back, paste masks). Triton's dynamic batcher only joins requests whose tensors have the same
shape, so clients that pad every image to one canvas size get batched together (see the README written).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from deploy_sdk.errors import DeploySdkError, EngineError, MissingDependencyError
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["TensorSpec", "write_triton_repository", "graph_io_from_onnx", "triton_config_text"]

PathLike = Union[str, os.PathLike]
_ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(bfloat16)": "TYPE_BF16",
}
_NUMPY_TO_TRITON = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
METADATA_PARAMETER = "maskrcnn_deploy.metadata"


class TensorSpec:
    """One graph input or output: ``name``, Triton ``data_type`` (``TYPE_FP32``...) and ``shape`` with the batch
    dimension first (``None`` for a dynamic dimension)."""

    def __init__(self, name: str, data_type: str, shape: Sequence[Optional[int]]):
        self.name = name
        self.data_type = data_type
        self.shape = [None if d is None else int(d) for d in shape]

    def __repr__(self) -> str:
        return f"TensorSpec({self.name!r}, {self.data_type}, {self.shape})"


def graph_io_from_onnx(path: PathLike) -> Tuple[List[TensorSpec], List[TensorSpec], ModelMetadata]:
    """Inputs, outputs (as ONNX Runtime loads the graph) and the model metadata of an ``.onnx`` file."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"cannot load {path} with onnxruntime: {' '.join(str(exc).split())[:300]}") from exc

    def specs(values) -> List[TensorSpec]:
        out = []
        for v in values:
            if v.type not in _ONNX_TO_TRITON:
                raise DeploySdkError(f"{path}: tensor {v.name} has type {v.type}, which Triton has no type for")
            out.append(
                TensorSpec(v.name, _ONNX_TO_TRITON[v.type], [d if isinstance(d, int) else None for d in v.shape])
            )
        return out

    props = dict(session.get_modelmeta().custom_metadata_map)
    metadata = ModelMetadata.from_props(props, source=str(path))
    return specs(session.get_inputs()), specs(session.get_outputs()), metadata


def _graph_io_from_engine(
    path: Path, header: Any, plan: bytes, images_dtype: Optional[str] = None
) -> Tuple[List[TensorSpec], List[TensorSpec], str]:
    """(inputs, outputs, where they came from) of an engine: TensorRT's own view when it is importable, else the
    profile in the header (inputs) and the graph contract (outputs)."""
    from deploy_sdk.backends.tensorrt import import_tensorrt, load_plugin_library

    try:
        trt = import_tensorrt("reading the engine's inputs and outputs")
    except MissingDependencyError:
        trt = None
    if trt is not None:
        from deploy_sdk.plugins import tensorrt_plugin_library

        trt.init_libnvinfer_plugins(None, "")
        load_plugin_library(trt.get_plugin_registry(), tensorrt_plugin_library())
        engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialize the plan on this machine")
        inputs: List[TensorSpec] = []
        outputs: List[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = str(__import__("numpy").dtype(trt.nptype(engine.get_tensor_dtype(name))))
            shape = [None if d < 0 else int(d) for d in engine.get_tensor_shape(name)]
            spec = TensorSpec(name, _NUMPY_TO_TRITON[dtype], shape)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return inputs, outputs, "TensorRT's view of the engine"
    meta: ModelMetadata = header.metadata
    profile = header.profile or {}
    if set(profile) != {"images", "image_sizes"}:
        raise EngineError(
            f"{path}: the engine header's profile names inputs {sorted(profile)}, expected images and "
            "image_sizes (the deployment graph contract); rebuild it with maskrcnn-deploy build"
        )

    def dims(name: str) -> List[Optional[int]]:
        lo, hi = profile[name]["min"], profile[name]["max"]
        return [a if a == b else None for a, b in zip(lo, hi)]

    k, m = int(meta.detections_per_image), int(meta.mask_size)
    images_type = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}[images_dtype or "float32"]
    inputs = [
        TensorSpec("images", images_type, dims("images")),
        TensorSpec("image_sizes", "TYPE_INT64", dims("image_sizes")),
    ]
    outputs = [
        TensorSpec("num_detections", "TYPE_INT32", [None]),
        TensorSpec("boxes", "TYPE_FP32", [None, k, 4]),
        TensorSpec("scores", "TYPE_FP32", [None, k]),
        TensorSpec("labels", "TYPE_INT32", [None, k]),
        TensorSpec("masks", "TYPE_FP32", [None, k, m, m]),
    ]
    how = (
        "images as --images-dtype says"
        if images_dtype
        else "images assumed float32: pass --images-dtype uint8 for an engine built from an --input-dtype uint8 graph"
    )
    return (
        inputs,
        outputs,
        (f"the engine header's profile and the deployment graph contract (TensorRT not importable here; {how})"),
    )


def _dims_text(dims: Sequence[Union[int, str, None]]) -> str:
    return "[ " + ", ".join("-1" if d is None else str(d) for d in dims) + " ]"


def _tensor_block(spec: TensorSpec, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    lines = [f'    name: "{spec.name}"', f"    data_type: {spec.data_type}"]
    if batched and not dims:
        # Triton needs at least one dimension besides the batch: [B] is declared [B, 1] and reshaped back.
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: {_dims_text(dims)}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config_text(
    name: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    metadata: ModelMetadata,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 5000,
    instances: int = 1,
    kind: str = "KIND_CPU",
    comments: Sequence[str] = (),
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``). ``max_batch_size`` 0 means
    the model does not batch (its first dimension is not a dynamic batch): then no dynamic batching."""
    batched = max_batch_size > 0
    backend = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}[platform]
    parts = [f"# {c}" for c in comments]
    parts += [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f'backend: "{backend}"',
        f"max_batch_size: {int(max_batch_size)}",
        "input [\n" + ",\n".join(_tensor_block(s, batched) for s in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(s, batched) for s in outputs) + "\n]",
    ]
    if batched:
        preferred = "".join(f"\n  preferred_batch_size: {int(b)}" for b in preferred_batch_sizes)
        parts.append(
            "dynamic_batching {" + preferred + f"\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}"
        )
    parts.append(f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: {kind}\n  }}\n]")
    value = json.dumps(json.loads(metadata.to_json()), separators=(",", ":"))
    parts.append(
        "parameters {\n  key: "
        + json.dumps(METADATA_PARAMETER)
        + "\n  value: { string_value: "
        + json.dumps(value)
        + " }\n}"
    )
    return "\n".join(parts) + "\n"


def write_triton_repository(
    model: PathLike,
    out: PathLike,
    *,
    name: str = "maskrcnn",
    version: int = 1,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 5000,
    instances: int = 1,
    plugin_library: Optional[PathLike] = None,
    images_dtype: Optional[str] = None,
) -> Path:
    """Write a model repository for ``model`` (``.onnx`` → ``onnxruntime_onnx``, an engine of ``maskrcnn-deploy
    build`` → ``tensorrt_plan``) under ``out``; returns ``out/name/config.pbtxt``.

    ``max_batch_size``: the largest batch Triton forms (capped by an engine's profile); ``max_queue_delay_us``: how
    long the dynamic batcher waits to fill a batch; ``instances``: model instances (CPU for ONNX, GPU for plans).
    ``plugin_library``: the RoIAlign plugin library to copy next to an engine's repository (default: the one
    installed with the package, when there is one). ``images_dtype`` (``float32`` or ``uint8``): the engine's
    ``images`` type where TensorRT is not importable to read it (the engine header does not record it; default
    float32); TensorRT's own answer wins when it is.
    """
    from deploy_sdk.atomic_file import atomic_path, cannot_write, check_output_dir

    model = Path(model)
    if not model.is_file():
        raise DeploySdkError(f"model file not found: {model}")
    if not name or any(c in name for c in '/\\ "') or name.startswith("."):
        raise DeploySdkError(f"model name {name!r} must be a plain folder name (no slashes, spaces or quotes)")
    if int(version) < 1 or int(max_batch_size) < 1:
        raise DeploySdkError(f"version and max_batch_size must be positive, got {version} and {max_batch_size}")
    if images_dtype not in (None, "float32", "uint8"):
        raise DeploySdkError(f"images_dtype must be float32 or uint8, got {images_dtype!r}")
    out = check_output_dir(out, "--out")
    suffix = model.suffix.lower()
    comments: List[str] = [f"Written by maskrcnn-deploy triton-repo from {model.name}."]
    plugin_source: Optional[Path] = None  # the plugin library, copied into the repository as plugin_copy
    plugin_copy: Optional[Path] = None
    if suffix == ".onnx":
        inputs, outputs, metadata = graph_io_from_onnx(model)
        platform, kind, model_file, plan = "onnxruntime_onnx", "KIND_CPU", "model.onnx", None
        source = "the ONNX graph (as ONNX Runtime loads it)"
    elif suffix in _ENGINE_SUFFIXES:
        from deploy_sdk.engine_file import read_engine_file

        header, plan = read_engine_file(model)
        metadata = header.metadata
        inputs, outputs, source = _graph_io_from_engine(model, header, plan, images_dtype)
        platform, kind, model_file = "tensorrt_plan", "KIND_GPU", "model.plan"
        batch_max = (header.profile.get("images") or {}).get("max", [None])[0]
        if batch_max:
            max_batch_size = min(int(max_batch_size), int(batch_max))
        library: Optional[Path]
        if plugin_library:
            library = Path(plugin_library)
            if not library.is_file():
                raise DeploySdkError(f"--plugin-library {plugin_library} does not exist")
        else:
            library = _installed_plugin_library()
        if library is not None:
            plugin_source, plugin_copy = library, out / "plugins" / library.name
        library_name = library.name if library is not None else "libmaskrcnn_roi_align.so"
        comments += [
            f"Built with TensorRT {header.tensorrt_version} for {header.gpu}: serve it with a Triton release that "
            "ships that TensorRT version, on that GPU model.",
            "The MultiLevelRoIAlign plugin must be loaded before the plan: start tritonserver with",
            f"LD_PRELOAD=<repo>/plugins/{library_name} or "
            f"--backend-config=tensorrt,plugins=<repo>/plugins/{library_name}",
        ]
    else:
        raise DeploySdkError(
            f"{model}: Triton repositories are written for .onnx files (onnxruntime) and engines "
            f"({', '.join(_ENGINE_SUFFIXES)}, tensorrt_plan); export or build the model first"
        )
    batched = bool(inputs) and inputs[0].shape[:1] == [None] and all(s.shape[:1] == [None] for s in inputs + outputs)
    if not batched:
        comments.append("The graph's first dimension is not a dynamic batch: no batching (max_batch_size 0).")
    comments.append(f"Inputs and outputs from {source}.")
    batch = int(max_batch_size) if batched else 0
    preferred = sorted({b for b in (batch // 2, batch) if b >= 1}) if batched else []
    text = triton_config_text(
        name, platform, inputs, outputs, metadata, batch, preferred, max_queue_delay_us, instances, kind, comments
    )
    folder = out / name
    try:
        (folder / str(int(version))).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(folder, exc) from exc
    target = folder / str(int(version)) / model_file
    with atomic_path(target) as tmp:
        if plan is None:
            shutil.copyfile(model, tmp)
        else:
            tmp.write_bytes(plan)  # Triton reads a bare plan: the SDK's header stays with the .engine file
    if plugin_source is not None and plugin_copy is not None:
        with atomic_path(plugin_copy) as tmp:
            shutil.copyfile(plugin_source, tmp)
    config = folder / "config.pbtxt"
    with atomic_path(config) as tmp:
        tmp.write_text(text)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_readme(name, platform, inputs, outputs, metadata, batch, plugin_copy, out))
    return config


def _installed_plugin_library() -> Optional[Path]:
    from deploy_sdk.plugins import bundled_library

    return bundled_library()


def _readme(
    name: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    metadata: ModelMetadata,
    max_batch_size: int,
    plugin: Optional[Path],
    out: Path,
) -> str:
    rows = "\n".join(
        f"| {'input' if s in inputs else 'output'} | `{s.name}` | {s.data_type} | "
        f"{_dims_text(['B' if i == 0 and max_batch_size else d for i, d in enumerate(s.shape)])} |"
        for s in list(inputs) + list(outputs)
    )
    start = f"tritonserver --model-repository={out.resolve()}"
    if plugin is not None:
        start = (
            f"LD_PRELOAD={plugin.resolve()} {start}\n# or: {start} --backend-config=tensorrt,plugins={plugin.resolve()}"
        )
    elif platform == "tensorrt_plan":
        start = (
            f"LD_PRELOAD=/path/to/libmaskrcnn_roi_align.so {start}\n# the plugin library built with CUDA and "
            "TensorRT (plugins/README.md); or --backend-config=tensorrt,plugins=/path/to/libmaskrcnn_roi_align.so"
        )
    size = int(metadata.max_size)
    canvas = -(-size // int(metadata.size_divisible or 1)) * int(metadata.size_divisible or 1)
    return f"""# Triton model repository: `{name}` ({platform})

Written by `maskrcnn-deploy triton-repo`. Classes: {", ".join(metadata.class_names[1:])}.

| | tensor | type | shape |
| --- | --- | --- | --- |
{rows}

B is the batch (`max_batch_size: {max_batch_size}`, dynamic batching on). `images` are raw 0-255 RGB pixels, resized
(short side {metadata.min_size}, long side at most {metadata.max_size}) and zero-padded to a canvas whose sides are
multiples of {metadata.size_divisible}; `image_sizes` is the (height, width) of each resized image inside the canvas.
`boxes` are x1 y1 x2 y2 in canvas pixels; `masks` are {metadata.mask_size}x{metadata.mask_size} probabilities, to be
pasted into each box; entries past `num_detections` are padding. The model's metadata (class names, preprocessing)
is the JSON string parameter `{METADATA_PARAMETER}` of the config.

## Start the server

```
{start}
```

## Call it (tritonclient)

Triton batches requests whose tensors have the same shape: pad every image to one canvas ({canvas}x{canvas} fits
every image of this model) to let the dynamic batcher join concurrent requests.

```python
import numpy as np
import tritonclient.http as httpclient
from deploy_sdk.preprocessing import load_image, prepare_batch, boxes_to_original
from deploy_sdk.mask_paste import paste_masks

image = load_image("photo.jpg")                      # [H, W, 3] uint8 RGB
batch = prepare_batch([image], min_size={metadata.min_size}, max_size={metadata.max_size},
                      size_divisible={metadata.size_divisible}, fixed=({canvas}, {canvas}), dtype=np.float32)
client = httpclient.InferenceServerClient("127.0.0.1:8000")
inputs = [httpclient.InferInput("images", list(batch.images.shape), "FP32"),
          httpclient.InferInput("image_sizes", list(batch.image_sizes.shape), "INT64")]
inputs[0].set_data_from_numpy(batch.images)
inputs[1].set_data_from_numpy(batch.image_sizes.astype(np.int64))
result = client.infer("{name}", inputs)
n = int(result.as_numpy("num_detections")[0])
resized = tuple(int(v) for v in batch.image_sizes[0])
boxes = boxes_to_original(result.as_numpy("boxes")[0, :n], resized, image.shape[:2])   # original pixels
masks = paste_masks(result.as_numpy("masks")[0, :n], boxes, image.shape[:2])            # [n, H, W] bool
labels, scores = result.as_numpy("labels")[0, :n], result.as_numpy("scores")[0, :n]
```

`tritonclient.grpc` works the same way on port 8001. `deploy_sdk.Predictor` does exactly these steps in process.
"""
