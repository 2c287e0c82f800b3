"""Export a loaded Mask R-CNN to one deployment ONNX graph (docs/architecture.md: the deployment graph contract).

Exporter choice: torch's TorchScript-tracing exporter (``torch.onnx.export(dynamo=False)``). The graph has
data-dependent sizes everywhere after NMS (NonZero, TopK of a runtime k, ScatterND of a runtime count). Tracing
records them as ONNX ops without needing to prove anything about the sizes, whereas the torch.export-based
exporter must guard every unbacked size (torch.export fails on them or specialises), and a custom node through
that exporter needs an onnxscript translation for every op; the tracing exporter emits our two special nodes
(``NonMaxSuppression`` and ``MultiLevelRoIAlign``) from ``autograd.Function.symbolic`` directly. The RoIAlign
node's local function is then attached to the model here.

Every second shape matters: the graph is traced at one shape and batch, so tests always run it at another.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.conversion.deploy_module import DEBUG_OUTPUT_NAMES, OUTPUT_NAMES, DeploymentModule
from deploy_sdk.conversion.export_options import DEFAULT_OPSET, SIZE_DIVISIBLE, check_export_options
from deploy_sdk.conversion.roi_align_function import ROI_ALIGN_DOMAIN, ROI_ALIGN_OP, make_roi_align_function
from deploy_sdk.errors import UnsupportedModelError
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["export_onnx", "check_export_options", "DEFAULT_OPSET", "INPUT_NAMES"]

INPUT_NAMES = ["images", "image_sizes"]


def export_onnx(
    loaded_model,
    path: Union[str, Path],
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    max_detections: int = 100,
    opset: int = DEFAULT_OPSET,
    debug: bool = False,
    trace_size: Optional[tuple] = None,
    portable: bool = False,
    input_dtype: str = "float32",
    log: Callable[[str], None] = print,
) -> ModelMetadata:
    """Export ``loaded_model`` (a ``deploy_sdk.conversion.checkpoint.LoadedModel``) to ``path``; return the metadata
    written.

    Inputs ``images`` [B, 3, H, W] float32 0–255 RGB canvas and ``image_sizes`` [B, 2] int64 (h, w); outputs per
    the contract (boxes x1 y1 x2 y2 in canvas pixels). B is always dynamic; H and W are dynamic (multiples of 32)
    unless ``height`` and ``width`` fix them. ``debug=True`` adds the intermediate outputs
    ``proposals``/``num_proposals``/``box_features`` used to compare with torchvision. The file is written
    atomically; ``onnx.checker`` (full check) and strict shape inference must pass before it is.

    ``portable=True`` writes the portable form instead: every ``MultiLevelRoIAlign`` node replaced by its function
    body, standard ONNX operators only, for runtimes that do not expand local functions
    (:func:`deploy_sdk.conversion.graph_passes.make_portable_graph`). Same outputs and metadata; TensorRT engines
    need the default form (its plugin replaces the custom node).

    ``input_dtype`` "uint8" declares ``images`` as uint8 (a quarter of the bytes per upload; the runtime then
    rounds the resized pixels), see :mod:`deploy_sdk.conversion.graph_io`. The outputs are declared with K =
    ``max_detections`` and the mask size fixed: [B, K, 4], [B, K], [B, K], [B, K, M, M], [B].
    """
    from deploy_sdk.conversion.graph_io import (
        check_input_dtype,
        declare_output_shapes,
        mask_resolution,
        trace_images_as,
    )

    check_input_dtype(input_dtype)
    import onnx

    check_export_options(height=height, width=width, max_detections=max_detections, opset=opset)

    model = loaded_model.model
    t0 = time.time()
    module = DeploymentModule(loaded_model, max_detections=max_detections, debug=debug).eval()
    if height is not None and width is not None:  # check_export_options refused one without the other
        th, tw = height, width
    elif trace_size is not None:
        th, tw = trace_size
    else:
        # Any multiple of 32 works; the model's own min size keeps the RPN realistic while tracing.
        divisible = SIZE_DIVISIBLE
        side = max(divisible, (min(int(model.transform.min_size[0]), 512) // divisible) * divisible)
        th, tw = side, side + divisible
    images, image_sizes = _trace_inputs(th, tw)
    images = trace_images_as(images, input_dtype)

    output_names = OUTPUT_NAMES + (DEBUG_OUTPUT_NAMES if debug else [])
    dynamic = {"images": {0: "batch"}, "image_sizes": {0: "batch"}}
    if height is None:
        dynamic["images"].update({2: "height", 3: "width"})
    for name in output_names:
        dynamic[name] = {0: "batch"}
    if debug:
        dynamic["proposals"][1] = "num_rois"
        dynamic["box_features"][1] = "num_rois"

    path = Path(path)
    log(f"exporting {getattr(loaded_model, 'arch', 'model')} (traced at batch 2, {th}x{tw}; opset {opset}) ...")
    with atomic_path(path) as tmp:
        with torch.no_grad(), _quiet_export_warnings():
            torch.onnx.export(
                module,
                (images, image_sizes),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=INPUT_NAMES,
                output_names=output_names,
                dynamic_axes=dynamic,
                do_constant_folding=True,
                custom_opsets={ROI_ALIGN_DOMAIN: 1},
            )
        log(f"  traced in {time.time() - t0:.1f} s; attaching the RoIAlign function and metadata ...")
        onnx_model = onnx.load(str(tmp))
        _attach_roi_align_function(onnx_model, opset)
        metadata = _metadata(loaded_model, module, height, width)
        onnx.helper.set_model_props(onnx_model, metadata.to_props())
        declare_output_shapes(onnx_model, module.max_detections, mask_resolution(module))
        onnx_model.producer_name = "maskrcnn-deploy"
        log("  checking the graph (onnx.checker full check, strict shape inference) ...")
        onnx.checker.check_model(onnx_model, full_check=True)
        onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
        if portable:
            from deploy_sdk.conversion.graph_passes import make_portable_graph

            log("  inlining the RoIAlign functions (portable graph; checked again) ...")
            onnx_model = make_portable_graph(onnx_model)
        onnx.save(onnx_model, str(tmp))
    size_mb = path.stat().st_size / 2**20
    log(f"wrote {path} ({size_mb:.1f} MiB) in {time.time() - t0:.1f} s")
    return metadata


def _trace_inputs(height: int, width: int):
    # Two images of different valid sizes, so nothing per-image can be baked in as a constant of the trace.
    g = torch.Generator().manual_seed(0)
    images = torch.rand((2, 3, height, width), generator=g) * 255.0
    image_sizes = torch.tensor([[height, width], [max(height - 40, 32), max(width - 72, 32)]], dtype=torch.int64)
    return images, image_sizes


def _attach_roi_align_function(onnx_model, opset: int) -> None:
    import onnx

    nodes = [n for n in onnx_model.graph.node if n.domain == ROI_ALIGN_DOMAIN and n.op_type == ROI_ALIGN_OP]
    if not nodes:
        raise RuntimeError("the traced graph has no MultiLevelRoIAlign node; the export is broken")
    levels = {len(n.input) - 1 for n in nodes}
    aligned = {next(a.i for a in n.attribute if a.name == "aligned") for n in nodes}
    if len(levels) != 1 or len(aligned) != 1:
        # One local function per (domain, op) in ONNX: every pooler must agree on what it fixes.
        raise UnsupportedModelError(
            f"the RoI poolers differ in level count {sorted(levels)} or 'aligned' {sorted(aligned)}; "
            "one exported graph needs them equal"
        )
    for i, n in enumerate(nodes):
        n.name = n.name or f"MultiLevelRoIAlign_{i}"
    onnx_model.functions.append(make_roi_align_function(levels.pop(), opset, aligned.pop()))
    if not any(o.domain == ROI_ALIGN_DOMAIN for o in onnx_model.opset_import):
        onnx_model.opset_import.append(onnx.helper.make_opsetid(ROI_ALIGN_DOMAIN, 1))


def _metadata(loaded_model, module: DeploymentModule, height, width) -> ModelMetadata:
    overrides = dict(detections_per_image=module.max_detections, fixed_height=height, fixed_width=width)
    if hasattr(loaded_model, "metadata"):
        return loaded_model.metadata(precision="fp32", **overrides)
    raise TypeError("export_onnx needs a deploy_sdk.conversion.checkpoint.LoadedModel (see load_torchvision_model)")


class _quiet_export_warnings:
    """The tracing exporter warns about its own deprecation and about tracer-converted sizes, all expected."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
