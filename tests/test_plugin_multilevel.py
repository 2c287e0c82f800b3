"""MultiLevelRoIAlign of the plugin library's CPU implementation against torchvision's MultiScaleRoIAlign.

torchvision pools with legacy coordinates (aligned=False) and maps boxes to levels with its LevelMapper
(canonical 224 / level 4, eps 1e-6, levels from the feature scales); the boxes here straddle the level thresholds
sqrt(area) = 112, 224 and 448.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from compare import assert_close
from deploy_sdk import DeploySdkError
from deploy_sdk import plugins

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
        rng.standard_normal((batch, channels, int(IMAGE_HW[0] * s), int(IMAGE_HW[1] * s))).astype(dtype)
        for s in SCALES
    ]


def _torchvision_pooler(features, boxes, output_size, sampling_ratio):
    names = [f"p{i + 2}" for i in range(len(features))]
    pooler = MultiScaleRoIAlign(names, output_size, sampling_ratio)
    feats = OrderedDict((n, torch.from_numpy(f.astype(np.float32))) for n, f in zip(names, features))
    out = pooler(feats, [torch.from_numpy(b) for b in boxes], [IMAGE_HW] * boxes.shape[0])
    b, r = boxes.shape[:2]
    return out.reshape(b, r, *out.shape[1:]).numpy()


@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), (14, 2), ((7, 5), 0)])
def test_matches_multiscale_roi_align(output_size, sampling_ratio):
    rng = np.random.default_rng(5)
    features = _features(rng, 2, 8)
    boxes = np.stack([_threshold_boxes(rng, 24), _threshold_boxes(rng, 24)])
    ours = plugins.multilevel_roi_align(features, boxes, output_size, SCALES, sampling_ratio, False, "avg")
    ref = _torchvision_pooler(features, boxes, output_size, sampling_ratio)
    assert ours.shape == ref.shape
    assert_close(ours, ref, "float32", what=f"multilevel out={output_size} sr={sampling_ratio}")


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


def test_fp16_within_fp16_tolerance():
    rng = np.random.default_rng(21)
    features = _features(rng, 1, 6, np.float16)
    boxes = _threshold_boxes(rng, 20)[None]
    ours = plugins.multilevel_roi_align(features, boxes, 7, SCALES, 2, False)
    assert ours.dtype == np.float16
    ref = _torchvision_pooler(features, boxes, 7, 2)
    assert_close(ours, ref, "float16", what="fp16 multilevel")


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
