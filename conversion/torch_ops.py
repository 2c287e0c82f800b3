"""The plugin library's RoIAlign as PyTorch custom ops: ``torch.ops.maskrcnn_deploy.roi_align`` and
``torch.ops.maskrcnn_deploy.multilevel_roi_align``.

They run the plugin library: on CUDA the kernel the TensorRT plugin launches, on CPU the library's CPU fast path
(the same math header's geometry and taps, its own pooling loops), both through the public functions of
:mod:`deploy_sdk.plugins` (never its ctypes internals). Each op has a fake
kernel, so ``torch.compile``, ``torch.export`` and FakeTensor tracing see the output shape without running it, and
the output shape depends on the input shapes only (no data-dependent sizes, no host synchronisation on CUDA), so a
CUDA graph can capture it.

- ``multilevel_roi_align(rois [B, R, 4], features [P2..Pn, each [B, C, Hl, Wl]], output_height, output_width,
  spatial_scales, sampling_ratio, aligned, mode, canonical_scale, canonical_level)`` -> [B, R, C, oh, ow]
  (rois x1 y1 x2 y2 in input-image pixels; the level rule of the op contract, docs/architecture.md).
- ``roi_align(features [N, C, H, W], rois [R, 4], batch_indices [R] int32/int64, output_height, output_width,
  spatial_scale, sampling_ratio, aligned, mode)`` -> [R, C, oh, ow] (ONNX RoiAlign-16 semantics; ``aligned``
  True = half-pixel).

Dtypes: the library takes float32 and float16 features; any other floating dtype (bfloat16, float64) is pooled in
float32 and the result cast back, so a bf16 model can call the op. Boxes are always passed as float32 (the
contract computes coordinates in fp32). Non-finite boxes pool to zeros on both devices (on CUDA a NaN check would
synchronise the stream, so the CPU side does the same rather than raise).

No autograd formula is registered: these ops serve inference (the deployment module runs under
``torch.inference_mode``); calling backward through them raises PyTorch's "autograd not registered" error.
A backward would be a scatter-add of the bilinear weights, which the plugin library does not have.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from deploy_sdk import plugins
from deploy_sdk.errors import DeploySdkError

__all__ = ["NAMESPACE", "multilevel_roi_align", "roi_align", "multilevel_roi_align_op", "roi_align_op"]

#: torch.library namespace of the ops (the ONNX domain of the custom nodes too).
NAMESPACE = plugins.PLUGIN_DOMAIN

_LIBRARY_DTYPES = (torch.float32, torch.float16)


def _library_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the library pools ``dtype`` features in."""
    return dtype if dtype in _LIBRARY_DTYPES else torch.float32


def _check_floating(t: Tensor, what: str) -> None:
    if not t.is_floating_point():
        raise DeploySdkError(f"{what} must be a floating-point tensor, got {t.dtype}")


def _multilevel_out_shape(rois: Tensor, features: Sequence[Tensor], output_height: int, output_width: int):
    if not features:
        raise DeploySdkError("multilevel_roi_align needs at least one feature level")
    if rois.dim() != 3 or rois.shape[-1] != 4:
        raise DeploySdkError(f"rois must be [B, R, 4] x1 y1 x2 y2, got shape {tuple(rois.shape)}")
    return (rois.shape[0], rois.shape[1], features[0].shape[1], int(output_height), int(output_width))


# One kernel for both devices: deploy_sdk.plugins' entries take torch tensors on either and run the library's CPU
# implementation or its CUDA kernel.
@torch.library.custom_op(f"{NAMESPACE}::multilevel_roi_align", mutates_args=(), device_types=("cpu", "cuda"))
def multilevel_roi_align_op(
    rois: Tensor,
    features: List[Tensor],
    output_height: int,
    output_width: int,
    spatial_scales: List[float],
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    shape = _multilevel_out_shape(rois, features, output_height, output_width)
    dtype = features[0].dtype
    _check_floating(features[0], "features[0]")
    work = _library_dtype(dtype)
    if shape[1] == 0:
        return torch.empty(shape, dtype=dtype, device=rois.device)
    out = plugins.multilevel_roi_align(
        [f.detach().to(work) for f in features],
        rois.detach().to(torch.float32),
        (shape[3], shape[4]),
        list(spatial_scales),
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        mode=mode,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
        check_finite=False,
    )
    return out.to(dtype)


@multilevel_roi_align_op.register_fake
def _multilevel_roi_align_fake(
    rois, features, output_height, output_width, spatial_scales, sampling_ratio, aligned, mode, canonical_scale,
    canonical_level,
):  # fmt: skip
    shape = _multilevel_out_shape(rois, features, output_height, output_width)
    return features[0].new_empty(shape)


def _single_out_shape(features: Tensor, rois: Tensor, batch_indices: Tensor, output_height: int, output_width: int):
    if features.dim() != 4:
        raise DeploySdkError(f"features must be [N, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[-1] != 4 or tuple(batch_indices.shape) != (rois.shape[0],):
        raise DeploySdkError(
            f"rois must be [R, 4] and batch_indices [R], got {tuple(rois.shape)} and {tuple(batch_indices.shape)}"
        )
    return (rois.shape[0], features.shape[1], int(output_height), int(output_width))


@torch.library.custom_op(f"{NAMESPACE}::roi_align", mutates_args=(), device_types=("cpu", "cuda"))
def roi_align_op(
    features: Tensor,
    rois: Tensor,
    batch_indices: Tensor,
    output_height: int,
    output_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> Tensor:
    shape = _single_out_shape(features, rois, batch_indices, output_height, output_width)
    _check_floating(features, "features")
    dtype = features.dtype
    if shape[0] == 0:
        return torch.empty(shape, dtype=dtype, device=features.device)
    out = plugins.roi_align(
        features.detach().to(_library_dtype(dtype)),
        rois.detach().to(torch.float32),
        batch_indices.detach(),
        (shape[2], shape[3]),
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        mode=mode,
        check_finite=False,
    )
    return out.to(dtype)


@roi_align_op.register_fake
def _roi_align_fake(features, rois, batch_indices, output_height, output_width, spatial_scale, sampling_ratio,
                    aligned, mode):  # fmt: skip
    return features.new_empty(_single_out_shape(features, rois, batch_indices, output_height, output_width))


def multilevel_roi_align(
    rois: Tensor,
    features: Sequence[Tensor],
    output_size,
    spatial_scales: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = False,
    mode: str = "avg",
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """``torch.ops.maskrcnn_deploy.multilevel_roi_align`` with keyword defaults; ``output_size`` int or (h, w).

    rois: [B, R, 4] x1 y1 x2 y2 in input pixels; features: P2..Pn, each [B, C, Hl, Wl] on the rois' device.
    Returns [B, R, C, oh, ow] in the features' dtype.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    return multilevel_roi_align_op(
        rois, list(features), int(oh), int(ow), [float(s) for s in spatial_scales], int(sampling_ratio),
        bool(aligned), str(mode), float(canonical_scale), int(canonical_level),
    )  # fmt: skip


def roi_align(
    features: Tensor,
    rois: Tensor,
    batch_indices: Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    mode: str = "avg",
) -> Tensor:
    """``torch.ops.maskrcnn_deploy.roi_align`` with keyword defaults; ``output_size`` int or (h, w).

    features [N, C, H, W]; rois [R, 4] x1 y1 x2 y2 in input pixels; batch_indices [R] int32/int64.
    Returns [R, C, oh, ow] in the features' dtype.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    return roi_align_op(
        features, rois, batch_indices, int(oh), int(ow), float(spatial_scale), int(sampling_ratio), bool(aligned),
        str(mode),
    )  # fmt: skip
