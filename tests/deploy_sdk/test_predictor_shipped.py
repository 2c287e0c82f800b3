"""Required results of the runtime on the shipped model: ONNX Runtime CPU vs the PyTorch reference, with boxes and
pasted masks in original image coordinates, and the torch backend vs ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_models import held_out_images, parity_failures

from deploy_sdk import Predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seven_images():
    images = held_out_images(7)
    assert len({im.shape for im in images}) == 7, "the seven images must differ in size"
    return images


@pytest.fixture(scope="module")
def onnxruntime_results(shipped_onnx, seven_images):
    predictor = Predictor(shipped_onnx, backend="onnxruntime", batch_size=4)  # one full and one partial batch
    return predictor.predict(seven_images)


def _torchvision_batched(loaded, images, batch_size):
    """torchvision's own MaskRCNN.forward on the same batches as the predictor: the PyTorch reference for batched
    inference. A batch shares one zero-padded canvas (torchvision's batch_images), and features near an image's
    border depend on how much padding follows it, so batched results differ slightly from one-at-a-time ones in
    torchvision itself; the runtime must reproduce torchvision's batched result."""
    import torch

    from deploy_sdk import Detections

    results = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            outs = loaded.model.eval()([torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in chunk])
            for im, out in zip(chunk, outs):
                results.append(
                    Detections(
                        boxes=out["boxes"].numpy(),
                        scores=out["scores"].numpy(),
                        labels=out["labels"].numpy(),
                        masks=out["masks"][:, 0].numpy() > 0.5,
                        class_names=list(loaded.class_names),
                        image_size=im.shape[:2],
                    )
                )
    return results


def test_onnxruntime_matches_pytorch_reference(shipped_loaded, seven_images, onnxruntime_results):
    reference = _torchvision_batched(shipped_loaded, seven_images, batch_size=4)
    assert [d.image_size for d in onnxruntime_results] == [im.shape[:2] for im in seven_images]
    problems = parity_failures(reference, onnxruntime_results)
    assert not problems, "\n".join(problems)
    assert sum(len(d) for d in reference) > 0, "the reference found nothing: the comparison would be vacuous"


def test_torch_backend_matches_onnxruntime(shipped_loaded, seven_images, onnxruntime_results):
    from deploy_sdk.conversion.torch_backend import TorchBackend

    predictor = Predictor(TorchBackend(shipped_loaded, device="cpu"), batch_size=4)
    assert predictor.metadata.class_names == onnxruntime_results[0].class_names
    results = predictor.predict(seven_images)
    # Same graph logic, two runtimes: hold them to the export criteria with a tighter score tolerance.
    problems = parity_failures(onnxruntime_results, results, score_diff=0.002, box_iou=0.995, mask_iou=0.98)
    assert not problems, "\n".join(problems)
    for a, b in zip(onnxruntime_results, results):
        assert abs(len(a) - len(b)) <= 2


def test_blank_images(shipped_loaded, shipped_onnx):
    from deploy_sdk.conversion.reference import PerImageReferencePredictor

    blank = [np.zeros((300, 400, 3), np.uint8), np.full((200, 500, 3), 255, np.uint8)]
    results = Predictor(shipped_onnx, batch_size=1).predict(blank)  # one at a time, as PerImageReferencePredictor runs
    reference = PerImageReferencePredictor(shipped_loaded).predict(blank)
    assert not parity_failures(reference, results)
    # A blank image is a valid input: the result is a (possibly empty) Detections, never an error. What the model
    # itself sees in a blank image is the model's business; the runtime keeps exactly the reference's detections.
    thresholded = Predictor(shipped_onnx, score_threshold=0.3).predict(blank[0])
    assert len(thresholded) == int((reference[0].scores >= 0.3).sum())
    assert thresholded.masks.shape == (len(thresholded), 300, 400) and thresholded.boxes.shape == (len(thresholded), 4)
