"""The PyTorch reference (deploy_sdk.conversion.reference) against torchvision's own ``MaskRCNN.forward``: the
batched path returns exactly what torchvision returns for the same batch, padding to a fixed canvas is exactly
torchvision's padding by a larger batch-mate, and the per-image predictor is torchvision on each image alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import FP32_WHOLE_MODEL, FP32_WHOLE_MODEL_SCORES, assert_close
from tiny_maskrcnn import build_tiny_maskrcnn

from deploy_sdk.conversion.checkpoint import load_torchvision_model
from deploy_sdk.conversion.reference import PerImageReferencePredictor, batch_reference_detections
from deploy_sdk.errors import DeploySdkError, InputImageError
from deploy_sdk.synthetic_shapes import generate_sample


def _images(count, min_size=100, max_size=150, seed=2):
    return [generate_sample(seed, i, min_size=min_size, max_size=max_size).image for i in range(count)]


def _torchvision(model, images):
    """torchvision's own forward on ``images`` as one batch (0-1 float CHW, as it takes them)."""
    with torch.no_grad():
        return model([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])


def _assert_same(det, ref, image, mask_threshold=0.5):
    assert len(det) == len(ref["scores"]) > 0
    assert np.array_equal(det.boxes, ref["boxes"].numpy()) and det.boxes.dtype == np.float32
    assert np.array_equal(det.scores, ref["scores"].numpy()) and det.scores.dtype == np.float32
    assert np.array_equal(det.labels, ref["labels"].numpy()) and det.labels.dtype == np.int64
    probs = ref["masks"][:, 0].numpy()
    assert np.array_equal(det.masks, probs if mask_threshold is None else probs > mask_threshold)
    assert det.image_size == image.shape[:2] and det.masks.shape[1:] == image.shape[:2]
    assert det.class_names[0] == "__background__"


def test_per_image_reference_predictor_is_torchvision_on_each_image():
    model = build_tiny_maskrcnn(seed=0)
    predictor = PerImageReferencePredictor(load_torchvision_model(model))
    images = _images(2)
    for image, det in zip(images, predictor.predict(images)):
        _assert_same(det, _torchvision(model, [image])[0], image)
    with pytest.raises(InputImageError):
        predictor.predict([images[0].astype(np.float32)])
    with pytest.raises(InputImageError, match="list of images"):
        predictor.predict(images[0])


@pytest.mark.parametrize("mask_threshold", [0.5, None])
def test_batch_reference_detections_is_torchvision_on_the_same_batch(mask_threshold):
    model = build_tiny_maskrcnn(seed=0)
    images = _images(3)
    assert len({im.shape for im in images}) > 1, "images of different sizes: the batch is padded"
    got = batch_reference_detections(load_torchvision_model(model), images, mask_threshold=mask_threshold)
    for det, ref, image in zip(got, _torchvision(model, images), images):
        _assert_same(det, ref, image, mask_threshold)


def test_batch_reference_detections_canvas_is_torchvision_padding_by_a_larger_batch_mate():
    model = build_tiny_maskrcnn(seed=0)
    # A wide image alone pads to a wide canvas; a tall batch-mate makes torchvision pad it to a square one.
    wide, tall = (np.ascontiguousarray(im) for im in (_images(1)[0][:100, :150], _images(1, seed=3)[0][:150, :100]))
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in (wide, tall)]
    with torch.no_grad():
        canvas = tuple(int(n) for n in model.transform(tensors)[0].tensors.shape[-2:])
        alone = tuple(int(n) for n in model.transform(tensors[:1])[0].tensors.shape[-2:])
    assert alone != canvas, "the batch-mate must pad the wide image further"
    loaded = load_torchvision_model(model)
    (got,) = batch_reference_detections(loaded, [wide], canvas=canvas, mask_threshold=None)
    ref = _torchvision(model, [wide, tall])[0]
    # The same padded canvas, but a batch of one vs two: the convolutions may pick other summation orders.
    assert len(got) == len(ref["scores"]) > 0
    np.testing.assert_array_equal(got.labels, ref["labels"].numpy())
    assert_close(got.boxes, ref["boxes"], tol=FP32_WHOLE_MODEL, what="boxes")
    assert_close(got.scores, ref["scores"], tol=FP32_WHOLE_MODEL_SCORES, what="scores")
    assert_close(got.masks, ref["masks"][:, 0], tol=FP32_WHOLE_MODEL, what="mask probabilities")
    with pytest.raises(DeploySdkError, match="canvas"):
        batch_reference_detections(loaded, [tall], canvas=alone)
