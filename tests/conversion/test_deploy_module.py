"""DeploymentModule (eager PyTorch) against torchvision's own inference on the same padded canvas."""

from __future__ import annotations

import pytest
import torch
from compare import assert_close
from tiny_maskrcnn import build_tiny_maskrcnn, match_rows, random_canvas, torchvision_pipeline

from deploy_sdk.conversion.deploy_module import DeploymentModule, batched_nms_indices
from deploy_sdk.errors import UnsupportedModelError

SIZES = [(100, 128), (128, 90), (64, 70)]
CANVAS = (128, 128)


@pytest.fixture(scope="module")
def tiny():
    model = build_tiny_maskrcnn(seed=0)
    images, image_sizes, crops = random_canvas(SIZES, CANVAS, seed=1)
    ref = torchvision_pipeline(model, crops, CANVAS)
    with torch.no_grad():
        out = DeploymentModule(model, debug=True)(images, image_sizes)
    return model, images, image_sizes, ref, out


def test_rpn_proposals_and_pooled_features_match_torchvision(tiny):
    _, _, _, ref, out = tiny
    proposals, num_proposals, box_features = out[5:]
    for b, expected in enumerate(ref["proposals"]):
        n = int(num_proposals[b])
        assert n == len(expected), f"image {b}: {n} proposals, torchvision has {len(expected)}"
        assert not proposals[b, n:].any(), "rows past num_proposals must be zero"
        perm = match_rows(proposals[b, :n].numpy(), expected.numpy())
        assert_close(proposals[b, :n][perm], expected, what=f"image {b} proposals")
        assert_close(box_features[b, :n][perm], ref["box_features"][b], what=f"image {b} pooled box features")


def test_detections_match_torchvision(tiny):
    _, _, _, ref, out = tiny
    num, boxes, scores, labels, masks = out[:5]
    assert num.dtype == torch.int32 and labels.dtype == torch.int32
    for b, det in enumerate(ref["detections"]):
        n = int(num[b])
        assert n == len(det["scores"]) > 0
        assert_close(boxes[b, :n], det["boxes"], what="boxes")
        assert_close(scores[b, :n], det["scores"], what="scores")
        assert torch.equal(labels[b, :n].long(), det["labels"])
        assert_close(masks[b, :n], det["masks"][:, 0], what="masks")


def test_padding_content_is_ignored(tiny):
    # torchvision pads with zeros after normalizing; the module must zero whatever the caller left there.
    model, images, image_sizes, _, out = tiny
    noisy = images.clone()
    for b, (h, w) in enumerate(image_sizes.tolist()):
        noisy[b, :, h:, :] = 255.0
        noisy[b, :, :, w:] = 77.0
    with torch.no_grad():
        again = DeploymentModule(model)(noisy, image_sizes)
    for a, e in zip(again, out[:5]):
        assert torch.equal(a, e)


def test_outputs_are_padded_to_k_with_zeros():
    model = build_tiny_maskrcnn(seed=0)
    images, image_sizes, _ = random_canvas([(96, 128)], (96, 128), seed=2)
    with torch.no_grad():
        num, boxes, scores, labels, masks = DeploymentModule(model, max_detections=130)(images, image_sizes)
    n = int(num[0])
    assert boxes.shape == (1, 130, 4) and masks.shape == (1, 130, 28, 28)
    assert n <= model.roi_heads.detections_per_img  # torchvision keeps at most detections_per_img
    assert not boxes[0, n:].any() and not scores[0, n:].any() and not labels[0, n:].any() and not masks[0, n:].any()


def test_mask_head_on_the_first_slots_only(tiny):
    """The mask head runs on the valid ones of the first n slots (n = the batch's most detections). With a score
    threshold that leaves each image a different number of detections, the batched outputs must still be
    torchvision's, image by image, also when the first image has none; with no detection at all they are all zero,
    with the contract's shapes."""
    import copy

    model, images, image_sizes, _, out = tiny
    thresholded = copy.deepcopy(model)
    thresholded.roi_heads.score_thresh = float(out[2][0, 20])  # image 0 keeps about 20 of its 100
    crops = [images[b, :, :h, :w] for b, (h, w) in enumerate(image_sizes.tolist())]
    ref = torchvision_pipeline(thresholded, crops, CANVAS)
    with torch.no_grad():
        num, boxes, scores, labels, masks = DeploymentModule(thresholded)(images, image_sizes)
    counts = [int(c) for c in num]
    assert len(set(counts)) > 1 and min(counts) > 0, f"the images should differ in detection count: {counts}"
    for b, det in enumerate(ref["detections"]):
        n = counts[b]
        assert n == len(det["scores"])
        assert_close(boxes[b, :n], det["boxes"], what="boxes")
        assert torch.equal(labels[b, :n].long(), det["labels"])
        assert_close(masks[b, :n], det["masks"][:, 0], what=f"image {b} masks")
        assert not masks[b, n:].any()

    # The image with the lowest top score first, at a threshold that leaves it nothing and the others something:
    # the mask head's rows are gathered over the batch, and row 0 (this image's first slot) still goes through it.
    order = sorted(range(images.shape[0]), key=lambda b: float(out[2][b, 0]))
    reordered, reordered_sizes = images[order], image_sizes[order]
    first_empty = copy.deepcopy(model)
    first_empty.roi_heads.score_thresh = float(out[2][order[0], 0])  # torchvision keeps scores above it
    crops = [reordered[b, :, :h, :w] for b, (h, w) in enumerate(reordered_sizes.tolist())]
    ref = torchvision_pipeline(first_empty, crops, CANVAS)
    with torch.no_grad():
        num, boxes, scores, labels, masks = DeploymentModule(first_empty)(reordered, reordered_sizes)
    counts = [int(c) for c in num]
    assert counts[0] == 0 and min(counts[1:]) > 0, counts
    assert not masks[0].any()
    for b, det in enumerate(ref["detections"][1:], start=1):
        assert counts[b] == len(det["scores"])
        assert_close(masks[b, : counts[b]], det["masks"][:, 0], what=f"reordered image {b} masks")

    nothing = copy.deepcopy(model)
    nothing.roi_heads.score_thresh = 1.0
    with torch.no_grad():
        num, boxes, scores, labels, masks = DeploymentModule(nothing, max_detections=40)(images, image_sizes)
    assert not num.any() and not boxes.any() and not scores.any() and not labels.any() and not masks.any()
    assert masks.shape == (images.shape[0], 40, 28, 28)


def test_batched_nms_matches_torchvision_nms_per_image_and_class():
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, 40, 2, generator=g) * 20], -1)
    scores = torch.rand(2, 3, 40, generator=g)
    sel = batched_nms_indices(boxes, scores, 5, 0.5, 0.2)
    for b in range(2):
        for c in range(3):
            cand = torch.where(scores[b, c] > 0.2)[0]
            expected = cand[nms(boxes[b, cand], scores[b, c, cand], 0.5)][:5]
            got = sel[(sel[:, 0] == b) & (sel[:, 1] == c), 2]
            assert torch.equal(got, expected)


def test_refuses_models_that_are_not_mask_rcnn():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(UnsupportedModelError, match="MaskRCNN"):
        DeploymentModule(model)


def test_every_tensor_is_made_on_the_input_device(tiny):
    """A tensor made without ``device=`` lands on the default device (the CPU) and breaks the module on a GPU: the
    torch backend on CUDA failed that way. With the default device set to ``meta``, any such tensor is a meta
    tensor here, which either fails the forward pass or reaches the outputs; the outputs must equal the CPU run."""
    model, images, image_sizes, _, out = tiny
    module = DeploymentModule(model, debug=True)
    torch.set_default_device("meta")
    try:
        with torch.no_grad():
            again = module(images, image_sizes)
    finally:
        torch.set_default_device(None)
    for a, b in zip(again, out):
        assert a.device == b.device == torch.device("cpu")
        assert torch.equal(a, b)
