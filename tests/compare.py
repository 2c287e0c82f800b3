"""Every numeric tolerance of the tests, named, with the reason for its value, and the comparison that uses them.

A test compares with ``assert_close(actual, expected, tol=NAME)`` (or ``NAME.allclose(a, b)`` where a boolean is
wanted); no test writes an rtol or atol of its own. A failing comparison prints the worst element, its two values
and the tolerance it would have needed. The test is ``|actual - expected| <= atol + rtol * |expected|``
elementwise, NaN never passes, and the shapes must be equal (nothing is broadcast).

Groups, by what is compared:

- exact: the same computation replayed;
- float32 rounding: the same arithmetic, only the rounding of a few float32 operations differs;
- pixels: images and resizes in 0-255 units;
- float32, two implementations of a whole model: ONNX Runtime vs PyTorch, one execution plan vs another;
- reduced precision: fp16, bf16, another runtime's own precision choices;
- hand-worked boxes of the toy deployment graph (tests/toy_deployment_graph.py), through the resize;
- serialized and printed values: JSON, COCO results, CLI tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|``."""

    rtol: float
    atol: float

    def scaled(self, factor: float) -> Tolerance:
        """This tolerance with ``atol`` in units of ``factor`` (e.g. a fraction of an image side, in pixels)."""
        return Tolerance(self.rtol, self.atol * float(factor))

    def approx(self, expected):
        """``expected`` as a ``pytest.approx`` with this tolerance, for scalars and lists: ``got == T.approx(x)``."""
        import pytest

        return pytest.approx(expected, rel=self.rtol, abs=self.atol)

    def allclose(self, actual, expected) -> bool:
        a = np.asarray(_to_numpy(actual), dtype=np.float64)
        e = np.asarray(_to_numpy(expected), dtype=np.float64)
        return a.shape == e.shape and bool(np.all(np.abs(a - e) <= self.atol + self.rtol * np.abs(e)))


# --- exact ------------------------------------------------------------------------------------------------------
# The same module run again (torch eager replaying the forward it wraps): the very same kernels on the same inputs.
EXACT = Tolerance(0.0, 0.0)

# --- float32 rounding -------------------------------------------------------------------------------------------
# One op, or a few, by another kernel or runtime, on values of order 1 (the default of assert_close for float32).
FP32 = Tolerance(1e-5, 1e-5)
# Values in [0, 1] (mask probabilities) after a few float32 ops (bilinear weights, a grid_sample paste): float32
# spacing near 1 is 6e-8; 1e-5 absolute leaves room for the handful of roundings, with no relative part needed.
FP32_UNIT_RANGE = Tolerance(0.0, 1e-5)
# Order-1 values that pass through a runtime unchanged or by one float32 op (the toy graph's masks in OpenVINO).
FP32_PASSTHROUGH = Tolerance(0.0, 1e-6)
# A float32 value stored in a graph (a quantization scale) vs its float64 hand computation: one float32 rounding is
# 6e-8 relative; 1e-6 covers the division that made it.
FP32_STORED = Tolerance(1e-6, 0.0)

# --- pixels (0-255 units) ---------------------------------------------------------------------------------------
# The same interpolation as the reference (torchvision's resize and padding, the numpy and torch pre-processing
# paths): 1e-6 of the pixel range, float32 rounding of the interpolation.
PIXELS_SAME_KERNEL = Tolerance(0.0, 255 * 1e-6)
# uint8 pixels scaled to 0-1 and back (x / 255 * 255 in float32): two roundings of values up to 255, ~3e-5.
PIXELS_ROUND_TRIP = Tolerance(0.0, 1e-4)
# The bilinear formula by another kernel (our numpy resize vs torch's interpolate at arbitrary sizes, CUDA vs CPU):
# float32 source coordinates computed in another order move a sample by ~1e-6 pixels, times gradients up to 255.
PIXELS_OTHER_KERNEL = Tolerance(0.0, 1e-3)
# vs a float64 textbook bilinear: float32 source coordinates (as PyTorch computes them) are ~1e-4 pixels off the
# exact ones at 1400 columns, times gradients up to 255 per pixel.
PIXELS_VS_FLOAT64_BILINEAR = Tolerance(0.0, 0.02)
# The mean of a flat 8x8 colour block after a JPEG round trip at quality 95, 4:4:4 (ringing from the block edges).
JPEG_BLOCK_MEAN = Tolerance(0.0, 12.0)

# --- float32, a whole model by two implementations ----------------------------------------------------------------
# ONNX Runtime vs PyTorch (the exported graph vs torchvision), or two execution plans of one backend (CUDA-graph
# capture vs plain; a batch-mate vs explicit padding to the same canvas): through ~20-50 convolution layers the
# summation order differs, errors grow to ~1e-5 relative; proposals, pooled features, boxes, masks.
FP32_WHOLE_MODEL = Tolerance(1e-4, 1e-4)
# Scores of the same comparison: softmax outputs in [0, 1], so the absolute part can be 10x tighter.
FP32_WHOLE_MODEL_SCORES = Tolerance(1e-4, 1e-5)
# Boxes in pixels where one side pools with another RoIAlign kernel (the plugin vs torchvision's): bins sampled with
# other float32 coordinates move box regressions by up to ~1e-3 pixels near zero.
FP32_WHOLE_MODEL_BOXES = Tolerance(1e-4, 1e-3)
# The few random-weight ResNet-50 elements allowed past FP32_WHOLE_MODEL (min_fraction in test_export): activations
# in the hundreds amplify the last-bit differences; rtol = atol, atol in units of the tensor's largest magnitude.
FP32_WHOLE_MODEL_OUTLIER = Tolerance(1e-2, 1e-2)
# Objectness scores this close at the RPN's post-NMS top-k cut are a tie: either side may keep either proposal.
RPN_TOPK_TIE = 1e-4
# torchvision's own ONNX export on ONNX Runtime vs the module it was exported from (benchmarks' baseline): boxes in
# pixels and scores, absolute; pasted masks may differ on this fraction of the pixels (edges at 0.5).
TORCHVISION_ONNX_VS_MODULE = Tolerance(0.0, 1e-3)
TORCHVISION_ONNX_MASK_PIXELS = 1e-3

# The same graph by ONNX Runtime in another process (behind a Triton server) vs here: the same kernels, but the
# work may be split otherwise; boxes in pixels (up to hundreds: float32 spacing ~3e-5) and scores, absolute.
ORT_OTHER_PROCESS_BOXES = Tolerance(0.0, 1e-3)
ORT_OTHER_PROCESS_SCORES = Tolerance(0.0, 1e-5)

# --- reduced precision ---------------------------------------------------------------------------------------------
# One fp16 op vs fp32 (the default of assert_close for float16): fp16 spacing is 1e-3 relative near 1.
FP16 = Tolerance(4e-3, 4e-3)
# The fp16 toy graph's scores after 4 fp16 layers: the rounding of 4 layers adds up in the absolute part.
FP16_TOY_LAYERS = Tolerance(4e-3, 1e-2)
# A whole tiny Mask R-CNN with fp16 weights and activations vs its fp32 graph: scores of detections both keep.
FP16_MODEL_SCORES = Tolerance(0.0, 0.05)
# A bf16 stage vs the fp32 op on bf16-rounded operands: bf16 has 8 significant bits (3.9e-3 spacing); the outputs
# differ by their own rounding and the bf16 accumulation.
BF16_OUTPUT = Tolerance(8e-3, 1e-3)
# OpenVINO vs ONNX Runtime, the same fp32 graph: OpenVINO's CPU plugin picks its own kernels (and may run some in
# reduced precision), so boxes (pixels) and scores agree to these absolute bounds only.
OPENVINO_VS_ORT_BOXES = Tolerance(0.0, 0.05)
OPENVINO_VS_ORT_SCORES = Tolerance(0.0, 1e-3)

# --- hand-worked toy-graph boxes --------------------------------------------------------------------------------
# The toy graph's boxes are fixed fractions of the resized image and the predictor maps them back with the resize
# ratio, so they are the fractions times the original size (or the test's own formula) up to float32 rounding: a
# few ulps of coordinates up to 10^4 pixels (2e-6 px at 30 px as measured).
TOY_BOX_SCALING = Tolerance(1e-5, 0.0)
# A box worked out by hand where the resize is exact (100x200 -> 64x128): float32 rounding of values up to 150.
TOY_BOX_HAND_WORKED = Tolerance(0.0, 1e-4)
# A COCO bbox (x, y, w, h): w and h are differences of float32 coordinates, so the error is absolute.
TOY_BOX_COCO = Tolerance(0.0, 0.01)

# --- serialized and printed values --------------------------------------------------------------------------------
# Detections.to_json / COCO results round boxes to 3 decimals and scores to 5 (deploy_sdk.detections).
JSON_BOX = Tolerance(0.0, 1e-3)
JSON_SCORE = Tolerance(0.0, 1e-5)
# A value printed with one decimal (a size in MiB, a box coordinate in a parity line): half a unit, plus 1e-5
# relative for the float32 -> decimal conversion.
PRINTED_ONE_DECIMAL = Tolerance(1e-5, 0.05)
# A score printed with three decimals (a parity line): half a unit plus float32 conversion.
PRINTED_THREE_DECIMALS = Tolerance(0.0, 6e-4)

# --- metrics and statistics ----------------------------------------------------------------------------------------
# An AP worked out by hand (fractions of 101 recall points) vs the evaluator's float64 sum: a few roundings.
AP_HAND_WORKED = Tolerance(0.0, 1e-6)
# COCO AP of the same detections by pycocotools (on the written COCO results, boxes rounded to 3 decimals and masks
# as RLE) vs the SDK's evaluator on the Detections: the rounding moves a few IoUs across a threshold.
AP_FROM_WRITTEN_RESULTS = Tolerance(0.0, 2e-3)
# A statistic computed by the same float64 formula as numpy's (percentiles by linear interpolation).
FLOAT64_SAME_FORMULA = Tolerance(1e-12, 0.0)

# --- RoIAlign -------------------------------------------------------------------------------------------------------
# A hand-worked RoIAlign on a linear map (bilinear interpolation is exact there): float32 rounding of values < 16.
ROI_ALIGN_HAND_WORKED = FP32_PASSTHROUGH
# ONNX's RoiAlign node tests carry their own rtol/atol; below 1e-5 absolute the float32 kernels cannot promise.
ONNX_NODE_TEST_MIN_ATOL = 1e-5

# assert_close's default by dtype name, when no ``tol`` is given.
TOLERANCES = {"float32": FP32, "float16": FP16}


def assert_close(
    actual,
    expected,
    dtype: str = "float32",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    what: str = "values",
    tol: Optional[Tolerance] = None,
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, explaining the worst miss.

    The tolerance is ``tol`` (one of this module's constants), else ``TOLERANCES[dtype]``; ``rtol``/``atol`` are
    for computed tolerances (ONNX's node tests carry theirs) and override the part they name.
    """
    a = np.asarray(_to_numpy(actual), dtype=np.float64)
    e = np.asarray(_to_numpy(expected), dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    base = tol if tol is not None else TOLERANCES[dtype]
    rtol = base.rtol if rtol is None else rtol
    atol = base.atol if atol is None else atol
    if a.size == 0:
        return
    err = np.abs(a - e)
    allowed = atol + rtol * np.abs(e)
    bad = ~(err <= allowed)
    if bad.any():
        excess = np.where(np.isnan(err), np.inf, err - allowed)
        idx = np.unravel_index(int(np.argmax(excess)), a.shape)
        needed_atol = float(np.nanmax(err - rtol * np.abs(e)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements differ beyond rtol={rtol}, atol={atol}; "
            f"worst at {tuple(int(i) for i in idx)}: actual {a[idx]!r} vs expected {e[idx]!r} "
            f"(|diff| {err[idx]:.3g}); atol needed with this rtol: {needed_atol:.3g}"
        )


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return x
