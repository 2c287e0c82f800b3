"""The deployment graph's declared inputs and outputs (docs/architecture.md, "The deployment graph contract").

- ``images`` is float32 (the default) or uint8 (``export --input-dtype uint8``). Both are 0-255 pixel values; the
  graph's first node casts them to float32 (``DeploymentModule.forward``), so everything after it is the same
  graph. uint8 moves a quarter of the bytes from the host; the pre-processing then rounds the resized pixels to
  integers (:func:`deploy_sdk.preprocessing.prepare_batch`), at most half a grey level away from the float
  resize that torchvision does. Every runtime of the SDK reads the declared type and feeds it (ONNX Runtime,
  OpenVINO, TensorRT engines); the fp16 and INT8 passes keep the input as it is.
- The outputs are declared with their true shapes: ``num_detections`` [B], ``boxes`` [B, K, 4], ``scores`` and
  ``labels`` [B, K], ``masks`` [B, K, M, M] with K (``--max-detections``) and M (the mask head's resolution)
  fixed numbers and B the symbolic ``batch``. The tracing exporter would name the K axis after whatever op
  produced it (``Whereboxes_dim_1``), although every output is padded to K.
"""

from __future__ import annotations

from typing import Any, Dict, List

__all__ = [
    "INPUT_DTYPES",
    "check_input_dtype",
    "trace_images_as",
    "mask_resolution",
    "declare_output_shapes",
    "declared_io",
]

INPUT_DTYPES = ("float32", "uint8")


def check_input_dtype(input_dtype: str) -> str:
    from deploy_sdk.errors import DeploySdkError

    if input_dtype not in INPUT_DTYPES:
        raise DeploySdkError(f"--input-dtype {input_dtype!r} is not supported; use one of {', '.join(INPUT_DTYPES)}")
    return input_dtype


def trace_images_as(images: Any, input_dtype: str) -> Any:
    """The trace's ``images`` (float32 0-255) in the graph's input type."""
    import torch

    if check_input_dtype(input_dtype) == "uint8":
        return images.round().clamp(0, 255).to(torch.uint8)
    return images


def mask_resolution(module: Any) -> int:
    """M, the side of the masks the deployment module outputs: its mask head run on one pooled RoI."""
    import torch

    cfg = module.mask_pool_cfg
    first_conv = next(m for m in module.mask_head.modules() if isinstance(m, torch.nn.Conv2d))
    probe = torch.zeros((1, first_conv.in_channels, int(cfg.output_height), int(cfg.output_width)))
    with torch.no_grad():
        return int(module.mask_predictor(module.mask_head(probe)).shape[-1])


def declare_output_shapes(onnx_model: Any, max_detections: int, mask_size: int, batch: str = "batch") -> None:
    """Write the contract's output shapes into ``onnx_model``'s graph outputs (in place)."""
    k, m = int(max_detections), int(mask_size)
    shapes: Dict[str, List[Any]] = {
        "num_detections": [batch],
        "boxes": [batch, k, 4],
        "scores": [batch, k],
        "labels": [batch, k],
        "masks": [batch, k, m, m],
    }
    for value in onnx_model.graph.output:
        if value.name not in shapes:
            continue  # debug outputs keep what the exporter declared
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[value.name]:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def declared_io(onnx_model: Any) -> Dict[str, Any]:
    """``{name: (element type name, [dims])}`` of the graph's inputs and outputs (symbolic dims as strings)."""
    from onnx import TensorProto

    out = {}
    for value in list(onnx_model.graph.input) + list(onnx_model.graph.output):
        t = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        out[value.name] = (TensorProto.DataType.Name(t.elem_type).lower(), dims)
    return out
