"""Mask pasting against torchvision's paste_masks_in_image; box-cropped masks and COCO RLE against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import JSON_BOX, assert_close
from torchvision.models.detection.roi_heads import paste_masks_in_image

from deploy_sdk.detections import Detections, decode_rle, encode_rle
from deploy_sdk.mask_paste import paste_masks, paste_masks_cropped, paste_masks_torch


def _random_case(seed: int, n: int, image_size):
    rng = np.random.default_rng(seed)
    h, w = image_size
    masks = rng.random((n, 28, 28)).astype(np.float32)
    # Detections are clipped to the image (torchvision's own paste fails on boxes entirely outside it); include
    # tiny boxes, boxes touching the borders and boxes covering the whole image.
    xy = rng.uniform(-0.2, 1.0, (n, 2)) * [w, h]
    wh = rng.uniform(0.0, 0.6, (n, 2)) * [w, h] + rng.choice([0.0, 0.4, 3.0], (n, 1))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[0] = [0, 0, w, h]
    boxes[1] = [w - 2.5, h - 1.2, w, h]
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    return masks, boxes


def _torchvision(masks, boxes, image_size):
    return paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), image_size)[:, 0].numpy()


@pytest.mark.parametrize("seed, n, image_size", [(0, 40, (300, 411)), (1, 25, (97, 64)), (2, 5, (512, 384))])
def test_numpy_paste_matches_torchvision(seed, n, image_size):
    masks, boxes = _random_case(seed, n, image_size)
    expected = _torchvision(masks, boxes, image_size)
    probs = paste_masks(masks, boxes, image_size, threshold=None)
    assert_close(probs, expected, what="pasted probabilities")
    binary = paste_masks(masks, boxes, image_size)
    assert binary.dtype == bool and binary.shape == (n, *image_size)
    # Thresholds agree everywhere except where the probability is within rounding of 0.5.
    disagree = binary != (expected > 0.5)
    assert not (disagree & (np.abs(expected - 0.5) > 1e-6)).any()


@pytest.mark.parametrize("seed, n, image_size", [(3, 30, (211, 305)), (4, 2, (40, 40))])
def test_torch_paste_matches_torchvision(seed, n, image_size):
    masks, boxes = _random_case(seed, n, image_size)
    expected = _torchvision(masks, boxes, image_size)
    probs = paste_masks_torch(torch.from_numpy(masks), torch.from_numpy(boxes), image_size, threshold=None)
    assert_close(probs, expected, what="torch-pasted probabilities")
    binary = paste_masks_torch(torch.from_numpy(masks), torch.from_numpy(boxes), image_size).numpy()
    assert not ((binary != (expected > 0.5)) & (np.abs(expected - 0.5) > 1e-5)).any()


@pytest.mark.needs_cuda
def test_torch_paste_on_cuda_matches_torchvision():
    masks, boxes = _random_case(5, 50, (480, 640))
    expected = _torchvision(masks, boxes, (480, 640))
    probs = paste_masks_torch(torch.from_numpy(masks).cuda(), torch.from_numpy(boxes).cuda(), (480, 640), None)
    assert_close(probs.cpu(), expected, what="CUDA-pasted probabilities")


def test_empty_inputs():
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 7)).shape == (0, 5, 7)
    out = paste_masks_torch(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7))
    assert tuple(out.shape) == (0, 5, 7) and out.dtype == torch.bool
    crops, offsets = paste_masks_cropped(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 7))
    assert crops == [] and offsets.shape == (0, 2)


def test_cropped_masks_are_the_full_masks_restricted_to_their_patch():
    masks, boxes = _random_case(6, 30, (200, 260))
    full = _torchvision(masks, boxes, (200, 260)) > 0.5
    crops, offsets = paste_masks_cropped(masks, boxes, (200, 260))
    for i, (crop, (x, y)) in enumerate(zip(crops, offsets.tolist())):
        rest = full[i].copy()
        h, w = crop.shape
        assert (rest[y : y + h, x : x + w] == crop).all()
        rest[y : y + h, x : x + w] = False
        assert not rest.any(), f"mask {i} has pixels outside its crop"


def test_rle_matches_pycocotools():
    coco_mask = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference RLE codec")
    rng = np.random.default_rng(7)
    cases = [rng.random((23, 31)) > 0.6, np.ones((4, 5), bool), np.zeros((6, 2), bool), rng.random((300, 200)) > 0.02]
    big = np.zeros((400, 500), bool)
    big[10:390, 20:480] = True  # long runs: counts above 2^5 and large negative differences
    cases.append(big)
    for m in cases:
        ours = encode_rle(m)
        ref = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == ref["counts"].decode("ascii")
        assert ours["size"] == [int(v) for v in ref["size"]]
        assert (decode_rle(ours) == m).all()
        assert (coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()}) == m).all()


def test_detections_coco_results_and_mask_forms():
    coco_mask = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference RLE codec")
    masks, boxes = _random_case(8, 6, (120, 90))
    full = paste_masks(masks, boxes, (120, 90))
    crops, offsets = paste_masks_cropped(masks, boxes, (120, 90))
    common = dict(
        boxes=boxes,
        scores=np.linspace(0.9, 0.4, 6).astype(np.float32),
        labels=np.arange(1, 7),
        class_names=["bg"] + [f"c{i}" for i in range(1, 7)],
        image_size=(120, 90),
    )
    dets_full = Detections(masks=full, **common)
    dets_box = Detections(masks=None, mask_crops=crops, mask_offsets=offsets, **common)
    dets_rle = Detections(masks=None, rles=[encode_rle(m) for m in full], **common)
    for d in (dets_box, dets_rle):
        assert (d.full_masks() == full).all()
    results = dets_full.to_coco(image_id=42, category_ids=list(range(100, 107)))
    assert results == dets_box.to_coco(42, list(range(100, 107))) == dets_rle.to_coco(42, list(range(100, 107)))
    r = results[2]
    assert r["image_id"] == 42 and r["category_id"] == 103
    x1, y1, x2, y2 = boxes[2].tolist()
    assert r["bbox"] == JSON_BOX.approx([x1, y1, x2 - x1, y2 - y1])
    assert (
        coco_mask.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]}) == full[2]
    ).all()


def test_draw_overlays_masks_and_boxes():
    masks, boxes = _random_case(9, 3, (64, 80))
    full = paste_masks(masks, boxes, (64, 80))
    det = Detections(
        boxes=boxes,
        scores=np.ones(3, np.float32),
        labels=np.ones(3, np.int64),
        masks=full,
        class_names=["bg", "thing"],
        image_size=(64, 80),
    )
    image = np.zeros((64, 80, 3), np.uint8)
    overlay = det.draw(image, show_labels=False)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (image == 0).all(), "draw must not modify its input"
    assert overlay[full.any(0)].any(axis=1).all(), "every mask pixel is tinted"
    assert not overlay[~full.any(0)].any(axis=1).all(), "pixels outside masks and box outlines stay black"
    assert (det.draw(image) != overlay).any(), "labels are drawn"
    with pytest.raises(ValueError, match="detections are for"):
        det.draw(np.zeros((10, 10, 3), np.uint8))
