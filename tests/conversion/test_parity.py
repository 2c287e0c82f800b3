"""deploy_sdk.conversion.parity on hand-worked examples: IoU values computed by hand, matching rules, failure
reasons."""

from __future__ import annotations

import numpy as np
import pytest
from compare import FP32_PASSTHROUGH

from deploy_sdk.conversion.parity import ParityThresholds, box_iou, compare_detections, mask_iou, summarize
from deploy_sdk.detections import Detections


def _dets(boxes, scores, labels, size=(20, 20)):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), size[0], size[1]), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[i, y1:y2, x1:x2] = True
    return Detections(
        boxes=boxes,
        scores=np.asarray(scores, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        masks=masks,
        image_size=size,
    )


def test_box_iou_hand_worked():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150; identical; disjoint; empty box
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0, 0.0]])


def test_mask_iou_hand_worked():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_identical_results_agree():
    ref = _dets([[0, 0, 10, 10], [5, 5, 15, 15]], [0.9, 0.5], [1, 2])
    res = compare_detections(ref, ref)
    assert res.ok and res.num_matched == 2 and res.worst_box_iou == 1.0 and res.worst_mask_iou == 1.0


def test_small_shift_measured_and_rejected():
    ref = _dets([[0, 0, 10, 10]], [0.9], [1])
    cand = _dets([[0, 0, 10, 11]], [0.895], [1])  # IoU 100/110, mask IoU 100/110
    res = compare_detections(cand, ref)
    assert res.worst_box_iou == pytest.approx(100 / 110)
    assert res.worst_mask_iou == pytest.approx(100 / 110)
    assert res.worst_score_diff == FP32_PASSTHROUGH.approx(0.005)
    assert not res.ok and any("box IoU" in p for p in res.problems) and any("mask IoU" in p for p in res.problems)
    assert compare_detections(cand, ref, ParityThresholds(box_iou=0.9, mask_iou=0.9)).ok


def test_score_difference_rejected():
    ref = _dets([[0, 0, 10, 10]], [0.9], [1])
    res = compare_detections(_dets([[0, 0, 10, 10]], [0.85], [1]), ref)
    assert not res.ok and "|dscore|" in res.summary()


def test_wrong_label_is_missing_and_extra():
    ref = _dets([[0, 0, 10, 10]], [0.9], [1])
    res = compare_detections(_dets([[0, 0, 10, 10]], [0.9], [2]), ref)
    assert res.missing == [0] and res.extra == [0] and not res.ok


def test_threshold_straddling_pair_is_a_match_not_an_extra():
    # The reference scored just under 0.3 and the candidate just over: the same object, not an extra detection.
    ref = _dets([[0, 0, 10, 10]], [0.298], [1])
    res = compare_detections(_dets([[0, 0, 10, 10]], [0.302], [1]), ref)
    assert res.ok and res.extra == [] and res.num_reference == 0


def test_low_scoring_differences_are_ignored():
    ref = _dets([[0, 0, 10, 10], [10, 10, 20, 20]], [0.9, 0.1], [1, 1])
    cand = _dets([[0, 0, 10, 10]], [0.9], [1])
    assert compare_detections(cand, ref).ok


def test_greedy_matching_prefers_best_iou_per_reference():
    ref = _dets([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], [1, 1])
    cand = _dets([[1, 0, 11, 10], [0, 0, 10, 10]], [0.8, 0.9], [1, 1])
    res = compare_detections(cand, ref)
    assert res.ok and res.num_matched == 2


def test_summarize_counts_failures():
    ref = _dets([[0, 0, 10, 10]], [0.9], [1])
    good = compare_detections(ref, ref)
    bad = compare_detections(_dets([], [], []), ref)
    line = summarize([good, bad])
    assert line.startswith("1/2 images agree") and "1/2 reference detections matched" in line
