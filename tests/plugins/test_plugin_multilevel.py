"""MultiLevelRoIAlign of the plugin library (CPU implementation; the CUDA kernel too where the ``device`` fixture
has a GPU) against torchvision's MultiScaleRoIAlign.

torchvision pools with legacy coordinates (aligned=False) and maps boxes to levels with its LevelMapper
(canonical 224 / level 4, eps 1e-6, levels from the feature scales); the boxes here straddle the level thresholds
sqrt(area) = 112, 224 and 448.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from compare import assert_close

from deploy_sdk import DeploySdkError, plugins

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.poolers import initLevelMapper  # noqa: E402

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE_HW = (320, 448)  # small stand-in for 800x1216 so the test stays fast; P2 is 80x112


def _threshold_boxes(rng, per_image):
    """Square-ish boxes whose sqrt(area) sits just below, on and just above 112, 224 and 448, plus random ones."""
    sides = []
    for t in (112.0, 224.0, 448.0):
        sides += [t - 0.5, t - 0.01, t, t + 0.01, t + 0.5]
    boxes = []
    for s in sides:
        aspect = rng.uniform(0.5, 2.0)
        w, h = s * np.sqrt(aspect), s / np.sqrt(aspect)
        x1, y1 = rng.uniform(-20, IMAGE_HW[1] - 20), rng.uniform(-20, IMAGE_HW[0] - 20)
        boxes.append([x1, y1, x1 + w, y1 + h])
    while len(boxes) < per_image:
        x1, y1 = rng.uniform(0, IMAGE_HW[1]), rng.uniform(0, IMAGE_HW[0])
        boxes.append([x1, y1, x1 + rng.uniform(1, 300), y1 + rng.uniform(1, 300)])
    return np.array(boxes[:per_image], np.float32)


def _features(rng, batch, channels, dtype=np.float32):
    return [
        rng.standard_normal((batch, channels, int(IMAGE_HW[0] * s), int(IMAGE_HW[1] * s))).astype(dtype) for s in SCALES
    ]


def _torchvision_pooler(features, boxes, output_size, sampling_ratio):
    names = [f"p{i + 2}" for i in range(len(features))]
    pooler = MultiScaleRoIAlign(names, output_size, sampling_ratio)
    feats = OrderedDict((n, torch.from_numpy(f.astype(np.float32))) for n, f in zip(names, features))
    out = pooler(feats, [torch.from_numpy(b) for b in boxes], [IMAGE_HW] * boxes.shape[0])
    b, r = boxes.shape[:2]
    return out.reshape(b, r, *out.shape[1:]).numpy()


@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), (14, 2), ((7, 5), 0)])
def test_matches_multiscale_roi_align(output_size, sampling_ratio, device):
    rng = np.random.default_rng(5)
    features = _features(rng, 2, 8)
    boxes = np.stack([_threshold_boxes(rng, 24), _threshold_boxes(rng, 24)])
    ours = device.get(
        plugins.multilevel_roi_align([device.put(f) for f in features], device.put(boxes), output_size, SCALES,
                                     sampling_ratio, False, "avg")
    )  # fmt: skip
    ref = _torchvision_pooler(features, boxes, output_size, sampling_ratio)
    assert ours.shape == ref.shape
    assert_close(ours, ref, "float32", what=f"multilevel on {device} out={output_size} sr={sampling_ratio}")


def test_level_mapping_matches_torchvision_level_mapper():
    rng = np.random.default_rng(9)
    boxes = np.concatenate([_threshold_boxes(rng, 60) for _ in range(10)])
    # Extremes: tiny boxes (below P2) and huge ones (beyond P5) clamp to the first and last level.
    boxes = np.concatenate([boxes, [[0, 0, 1, 1], [0, 0, 5000, 5000], [10, 10, 10, 30]]]).astype(np.float32)
    mapper = initLevelMapper(2, 5, canonical_scale=224, canonical_level=4)
    expected = mapper([torch.from_numpy(boxes)]).numpy()
    got = plugins.level_indices(boxes, SCALES)
    mismatch = np.nonzero(got != expected)[0]
    assert mismatch.size == 0, (
        f"levels differ for boxes {boxes[mismatch[:5]]}: ours {got[mismatch[:5]]}, torchvision {expected[mismatch[:5]]}"
    )


def test_fp16_within_fp16_tolerance(device):
    rng = np.random.default_rng(21)
    features = _features(rng, 1, 6, np.float16)
    boxes = _threshold_boxes(rng, 20)[None]
    ours = device.get(plugins.multilevel_roi_align([device.put(f) for f in features], device.put(boxes), 7, SCALES, 2))
    assert ours.dtype == np.float16
    ref = _torchvision_pooler(features, boxes, 7, 2)
    assert_close(ours, ref, "float16", what=f"fp16 multilevel on {device}")


def test_aligned_and_max_modes_match_single_level_on_the_chosen_level():
    # The multi-level op is the single-level op applied on each box's level: check that identity for the modes
    # torchvision's pooler does not cover (aligned, max).
    rng = np.random.default_rng(4)
    features = _features(rng, 2, 3)
    boxes = np.stack([_threshold_boxes(rng, 16), _threshold_boxes(rng, 16)])
    levels = plugins.level_indices(boxes.reshape(-1, 4), SCALES).reshape(2, 16)
    for mode in ("avg", "max"):
        ours = plugins.multilevel_roi_align(features, boxes, 5, SCALES, 0, True, mode)
        for b in range(2):
            for r in range(16):
                lvl = int(levels[b, r])
                single = plugins.roi_align(
                    features[lvl], boxes[b, r : r + 1], np.array([b]), 5, SCALES[lvl], 0, True, mode
                )
                np.testing.assert_array_equal(ours[b, r], single[0])


def test_empty_roi_set_and_batch_mismatch():
    rng = np.random.default_rng(0)
    features = _features(rng, 2, 4)
    out = plugins.multilevel_roi_align(features, np.zeros((2, 0, 4), np.float32), 7, SCALES)
    assert out.shape == (2, 0, 4, 7, 7)
    with pytest.raises(DeploySdkError, match="rois has batch 1"):
        plugins.multilevel_roi_align(features, np.zeros((1, 3, 4), np.float32), 7, SCALES)
    with pytest.raises(DeploySdkError, match="spatial_scales"):
        plugins.multilevel_roi_align(features, np.zeros((2, 3, 4), np.float32), 7, SCALES[:3])
    with pytest.raises(DeploySdkError, match="consecutive powers of two"):
        plugins.multilevel_roi_align(features, np.zeros((2, 3, 4), np.float32), 7, [0.25, 0.125, 0.1, 0.03125])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_kernel_code_path_matches_fast_cpu_path(dtype, aligned, mode):
    # implementation="kernel" runs poolOutputElement(), the whole body of one CUDA thread, on the CPU: the kernel's
    # code (level mapping, geometry, sampling, reduction) is checked here even without a GPU.
    rng = np.random.default_rng(17)
    features = _features(rng, 2, 3, dtype)
    boxes = np.stack([_threshold_boxes(rng, 20), _threshold_boxes(rng, 20)])
    boxes[0, 0] = [40, 40, 10, 10]  # inverted
    boxes[1, 0] = [500, 400, 600, 500]  # outside the image
    fast = plugins.multilevel_roi_align(features, boxes, (7, 5), SCALES, 0, aligned, mode)
    kernel = plugins.multilevel_roi_align(features, boxes, (7, 5), SCALES, 0, aligned, mode, implementation="kernel")
    assert_close(kernel, fast, "float32" if dtype == np.float32 else "float16", what=f"kernel path {mode}")
    single = plugins.roi_align(
        features[1], boxes[0], np.zeros(20, np.int32), 6, SCALES[1], 2, aligned, mode, implementation="kernel"
    )
    single_fast = plugins.roi_align(features[1], boxes[0], np.zeros(20, np.int32), 6, SCALES[1], 2, aligned, mode)
    assert_close(single, single_fast, "float32" if dtype == np.float32 else "float16", what="kernel path single")


# ------------------------------------------------------------------ non-finite boxes, grid limits, argument checks

IMPLEMENTATIONS = ["fast", "kernel"]  # the CPU fast path, and poolOutputElement() (one CUDA thread's code) on CPU

NONFINITE_BOXES = [
    [np.nan, 20.0, 90.0, 90.0],
    [10.0, 20.0, np.nan, 90.0],  # legacy mode clamps the size with fmaxf, which would hide this NaN
    [10.0, -np.inf, 90.0, 90.0],
    [np.inf, np.inf, np.inf, np.inf],
    [-3e38, 0.0, 3e38, 50.0],  # finite coordinates whose width overflows fp32
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_nonfinite_boxes_pool_to_zeros_in_the_library(implementation, aligned, mode):
    # check_finite=False hands the boxes to the C library as they are; the old code crashed (SIGSEGV) on them.
    rng = np.random.default_rng(23)
    features = _features(rng, 2, 3)
    finite = np.stack([_threshold_boxes(rng, 12), _threshold_boxes(rng, 12)])
    bad = np.array(NONFINITE_BOXES, np.float32)
    boxes = np.concatenate([finite[:, :6], np.stack([bad, bad[::-1]]), finite[:, 6:]], axis=1)
    is_bad = np.zeros(boxes.shape[1], bool)
    is_bad[6 : 6 + len(bad)] = True
    out = plugins.multilevel_roi_align(
        features, boxes, 5, SCALES, 2, aligned, mode, implementation=implementation, check_finite=False
    )
    assert np.all(out[:, is_bad] == 0), "a box with a non-finite coordinate must pool to exactly 0"
    if not aligned and mode == "avg":
        ref = _torchvision_pooler(features, np.ascontiguousarray(boxes[:, ~is_bad]), 5, 2)
        assert_close(out[:, ~is_bad], ref, "float32", what="finite boxes next to non-finite ones")
    # Boxes with a non-finite coordinate map to the first level (the last one above has finite coordinates).
    np.testing.assert_array_equal(plugins.level_indices(bad[:4], SCALES), np.zeros(4, np.int32))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nonfinite_boxes_are_refused_by_default(implementation):
    rng = np.random.default_rng(1)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[1, 2] = [np.nan, 0, 5, 5]
    with pytest.raises(DeploySdkError, match=r"non-finite coordinate.*box \(1, 2\)"):
        plugins.multilevel_roi_align(_features(rng, 2, 2), boxes, 7, SCALES, implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sampling_ratio_limit(implementation):
    # Two 1x1 levels of 2.0; the box (0,0)-(2,2) maps to the first level (scale 1/4), where, with legacy
    # coordinates, its samples all fall in (0, 1) and clamp onto the one pixel with weight exactly 1: each sample
    # is exactly 2.0, and so is the average of the 2^20 samples at the limit.
    features = [np.full((1, 1, 1, 1), 2.0, np.float32), np.full((1, 1, 1, 1), 2.0, np.float32)]
    box = np.array([[[0.0, 0.0, 2.0, 2.0]]], np.float32)
    limit = plugins.MAX_SAMPLING_RATIO
    out = plugins.multilevel_roi_align(features, box, 1, [0.25, 0.125], limit, False, implementation=implementation)
    assert out[0, 0, 0, 0, 0] == 2.0
    for ratio in (limit + 1, 65536):
        with pytest.raises(DeploySdkError, match=f"sampling_ratio must be 0 \\(adaptive\\) to {limit}"):
            plugins.multilevel_roi_align(features, box, 1, [0.25, 0.125], ratio, False, implementation=implementation)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output_size=(7, -1)), r"output_size must be a positive integer.*got \(7, -1\)"),
        (dict(output_size=(0, 7)), "output_size"),
        (dict(spatial_scales=[0.25, float("nan"), 0.0625, 0.03125]), r"spatial_scales\[1\]"),
        (dict(spatial_scales=[0.25, 0.125, 0.0625, float("inf")]), r"spatial_scales\[3\]"),
        (dict(spatial_scales=[-0.25, 0.125, 0.0625, 0.03125]), r"spatial_scales\[0\]"),
        (dict(canonical_scale=float("inf")), "canonical_scale"),
        (dict(canonical_scale=0.0), "canonical_scale"),
        (dict(sampling_ratio=-2), "sampling_ratio"),
        (dict(sampling_ratio=2**32 + 2), "sampling_ratio"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    rng = np.random.default_rng(2)
    args = dict(features_list=_features(rng, 1, 2), rois=np.zeros((1, 3, 4), np.float32), output_size=7,
                spatial_scales=SCALES)  # fmt: skip
    args.update(kwargs)
    with pytest.raises(DeploySdkError, match=message):
        plugins.multilevel_roi_align(**args)
