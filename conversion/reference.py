"""The PyTorch reference: torchvision's own Mask R-CNN inference on a loaded checkpoint, in two batchings.

Nothing here re-implements Mask R-CNN: images go through the steps of torchvision's ``GeneralizedRCNN.forward``
in eval mode (its resize, normalization, backbone, RPN, heads and mask pasting); only the conversion to
:class:`Detections` is ours. Which images share a batch matters: torchvision pads a batch to its largest image
and the convolutions see that padding, so an image's result depends on its batch-mates.

- :func:`batch_reference_detections`: the images as ONE batch, optionally padded further to the canvas of a
  fixed-size graph; what a graph compared batch for batch must match. Used by ``check`` and ``convert``
  (through :class:`deploy_sdk.conversion.detection_sources.CheckpointSource`), ``demo`` and the export tests.
- :class:`PerImageReferencePredictor`: each image alone, behind a ``predict(images)`` like
  :class:`deploy_sdk.Predictor`'s, so no result depends on other images. Used where a checkpoint is evaluated as
  a predictor: ``eval`` of a checkpoint, the checkpoint's AP in ``convert``, and the tests of the evaluation and
  of the shipped model's predictor. It is :func:`batch_reference_detections` on batches of one.

Both are torchvision's model, so they stand for torchvision checkpoints. A detectron2 or MMDetection checkpoint's
inference differs from torchvision's eval path on the same weights (resize, box decoding, filters, mask paste):
:func:`checkpoint_predictor` and ``detection_sources.CheckpointSource`` run those through the deployment module in
eager PyTorch, which reproduces the framework (held to the frameworks themselves by the importer tests).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from deploy_sdk.conversion.checkpoint import LoadedModel
from deploy_sdk.detections import Detections
from deploy_sdk.errors import DeploySdkError, InputImageError
from deploy_sdk.preprocessing import load_image

__all__ = ["batch_reference_detections", "PerImageReferencePredictor", "checkpoint_predictor"]


def batch_reference_detections(
    loaded_model: LoadedModel,
    images: Sequence[np.ndarray],
    canvas: Optional[Tuple[int, int]] = None,
    mask_threshold: Optional[float] = 0.5,
) -> List[Detections]:
    """torchvision's Mask R-CNN eval path on ``images`` (a list of [H, W, 3] uint8 RGB) run as ONE batch.

    Returns one :class:`Detections` per image: boxes [N, 4] float32 x1 y1 x2 y2 in original image pixels, scores
    [N] float32, labels [N] int64, masks [N, H, W] pasted to the image: bool ``> mask_threshold``, or the float32
    probabilities when ``mask_threshold`` is None; sorted by descending score as torchvision returns them.

    The steps are ``GeneralizedRCNN.forward``'s (transform, backbone, rpn, roi_heads, transform.postprocess), on
    the device the model is on, with one optional change: ``canvas`` (H, W) pads the batch further, with zeros,
    to the canvas a fixed-size graph runs at, since padding changes the features near it.
    """
    import torch.nn.functional as F

    model = loaded_model.model.eval()
    device = next(model.parameters()).device
    # torch.from_numpy warns on a read-only array (decoded images often are, e.g. np.asarray of a PIL image);
    # np.require copies only such arrays, and the tensor is converted to float (a copy) right away anyway.
    tensors = [
        torch.from_numpy(np.require(im, requirements=("C", "W"))).to(device).permute(2, 0, 1).float().div_(255.0)
        for im in images
    ]
    with torch.inference_mode():
        batch, _ = model.transform(tensors)
        if canvas is not None:
            h, w = batch.tensors.shape[-2:]
            if h > canvas[0] or w > canvas[1]:
                raise DeploySdkError(
                    f"a resized image needs a {h}x{w} canvas but the graph is fixed at {canvas[0]}x{canvas[1]}; "
                    "the graph shrinks such images further, so they cannot be compared with the reference"
                )
            batch.tensors = F.pad(batch.tensors, (0, canvas[1] - w, 0, canvas[0] - h))
        features = model.backbone(batch.tensors)
        if isinstance(features, torch.Tensor):  # as GeneralizedRCNN.forward: a single-level backbone
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        outputs = model.transform.postprocess(detections, batch.image_sizes, [t.shape[-2:] for t in tensors])
    results = []
    for out, im in zip(outputs, images):
        masks = None
        if "masks" in out:
            probs = out["masks"][:, 0].float()
            masks = (probs if mask_threshold is None else probs > mask_threshold).cpu().numpy()
        results.append(
            Detections(
                boxes=out["boxes"].float().cpu().numpy().astype(np.float32),
                scores=out["scores"].float().cpu().numpy().astype(np.float32),
                labels=out["labels"].cpu().numpy().astype(np.int64),
                masks=masks,
                class_names=list(loaded_model.class_names),
                image_size=(int(im.shape[0]), int(im.shape[1])),
            )
        )
    return results


class PerImageReferencePredictor:
    """A loaded torchvision Mask R-CNN as a predictor: ``predict(images)`` runs each image alone.

    ``predict`` takes a list of [H, W, 3] uint8 RGB arrays of any sizes (or anything else
    ``deploy_sdk.preprocessing.load_image`` accepts: paths, PIL images, grayscale) and returns one
    :class:`Detections` per image, as :func:`batch_reference_detections` on a batch of that image alone (masks
    thresholded at ``mask_threshold``). Running images one at a time keeps each result independent of the other
    images, as a batched torchvision result is not.
    """

    def __init__(self, loaded_model: LoadedModel, device: str = "cpu", mask_threshold: float = 0.5):
        self.loaded_model = loaded_model
        self.device = torch.device(device)
        self.model = loaded_model.model.to(self.device).eval()
        self.mask_threshold = float(mask_threshold)
        self.class_names = list(loaded_model.class_names)

    def predict(self, images: Sequence[np.ndarray]) -> List[Detections]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise InputImageError("predict() takes a list of images; wrap a single image as [image]")
        rgb = [load_image(image, what=f"image {i}") for i, image in enumerate(images)]
        return [
            batch_reference_detections(self.loaded_model, [image], mask_threshold=self.mask_threshold)[0]
            for image in rgb
        ]


def checkpoint_predictor(loaded_model: LoadedModel, device: str = "cpu") -> Any:
    """The checkpoint's own model behind ``predict(images)``, one image at a time, for ``eval`` and ``convert``'s AP.

    A torchvision checkpoint: :class:`PerImageReferencePredictor` (torchvision's eval path). A detectron2 or
    MMDetection checkpoint: the deployment module in eager PyTorch (the torch backend), which has that framework's
    inference semantics (resize, box decoding, filters, mask paste; held to the frameworks themselves by the importer
    tests); torchvision's eval path on those weights would be another model.
    """
    if loaded_model.semantics.source == "torchvision":
        return PerImageReferencePredictor(loaded_model, device=device)
    from deploy_sdk.conversion.torch_backend import TorchBackend
    from deploy_sdk.predictor import Predictor

    return Predictor(TorchBackend(loaded_model, device=device), batch_size=1)
