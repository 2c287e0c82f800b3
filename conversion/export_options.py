"""The export options that can be refused without torch: checked before a checkpoint is loaded (seconds) or torch
is imported, by ``export`` and ``convert`` alike. :mod:`deploy_sdk.conversion.export` re-exports them."""

from __future__ import annotations

from typing import Optional

from deploy_sdk.errors import DeploySdkError

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "SIZE_DIVISIBLE", "check_export_options"]

DEFAULT_OPSET = 17
# 16 brings RoiAlign's coordinate_transformation_mode; the TorchScript exporter goes up to 20.
MIN_OPSET, MAX_OPSET = 16, 20
# The FPN halves the resolution five times: a fixed canvas is a multiple of 2**5.
SIZE_DIVISIBLE = 32


def check_export_options(
    height: Optional[int] = None, width: Optional[int] = None, max_detections: int = 100, opset: int = DEFAULT_OPSET
) -> None:
    """Refuse export options that cannot work (:class:`DeploySdkError`, naming the flag and what is allowed)."""
    if max_detections < 1:
        raise DeploySdkError(f"--max-detections must be at least 1, got {max_detections}")
    if (height is None) != (width is None):
        raise DeploySdkError("give both --height and --width for a fixed input size, or neither")
    if height is not None and width is not None:
        if height % SIZE_DIVISIBLE or width % SIZE_DIVISIBLE or height <= 0 or width <= 0:
            raise DeploySdkError(
                f"--height {height} --width {width}: both must be positive multiples of {SIZE_DIVISIBLE} "
                "(the FPN halves the resolution five times)"
            )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DeploySdkError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
