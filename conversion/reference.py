"""The PyTorch reference predictor: the unmodified torchvision model, one image at a time.

Nothing here re-implements Mask R-CNN: images go through torchvision's own ``MaskRCNN.forward`` in eval mode
(its resize, normalization, RPN, heads and mask pasting), and only the conversion to :class:`Detections` is
ours. It is the reference where the whole of torchvision's inference of one image is wanted: ``eval`` of a
checkpoint, the checkpoint's AP in ``convert``, and the tests of the shipped model's predictor and of the COCO
evaluation. The detection-by-detection checks of exported graphs (``check``, ``demo``, the export tests) use
:func:`deploy_sdk.conversion.commands.check.reference_detections` instead: the same eval path on a batch of
images padded to one canvas, as the graph sees them.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from deploy_sdk.conversion.checkpoint import LoadedModel
from deploy_sdk.detections import Detections
from deploy_sdk.errors import InputImageError
from deploy_sdk.preprocessing import load_image

__all__ = ["ReferencePredictor"]


class ReferencePredictor:
    """Run a loaded torchvision Mask R-CNN on RGB images and return :class:`Detections`.

    ``predict(images)`` takes a list of [H, W, 3] uint8 RGB arrays of any sizes (or anything else
    ``deploy_sdk.preprocessing.load_image`` accepts: paths, PIL images, grayscale) and returns one ``Detections``
    per image: boxes [N, 4] float32 x1 y1 x2 y2 in original image pixels, scores [N] float32, labels [N]
    int64, masks [N, H, W] bool (torchvision's pasted mask probabilities > ``mask_threshold``), sorted by
    descending score as torchvision returns them.

    Images are run one at a time: torchvision pads a batch to its largest image, which changes the feature
    maps near the padding, so a batched result would depend on the other images in the batch.
    """

    def __init__(self, loaded_model: LoadedModel, device: str = "cpu", mask_threshold: float = 0.5):
        self.loaded_model = loaded_model
        self.device = torch.device(device)
        self.model = loaded_model.model.to(self.device).eval()
        self.mask_threshold = float(mask_threshold)
        self.class_names = list(loaded_model.class_names)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> List[Detections]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise InputImageError("predict() takes a list of images; wrap a single image as [image]")
        rgb = [load_image(image, what=f"image {i}") for i, image in enumerate(images)]
        return [self._predict_one(image) for image in rgb]

    def _predict_one(self, image: np.ndarray) -> Detections:
        # torchvision's detection models take float 0-1 CHW tensors and normalize internally.
        x = torch.from_numpy(image.copy()).to(self.device).permute(2, 0, 1).float().div_(255.0)
        out = self.model([x])[0]
        masks = out["masks"][:, 0] > self.mask_threshold if "masks" in out else None
        return Detections(
            boxes=out["boxes"].float().cpu().numpy().astype(np.float32),
            scores=out["scores"].float().cpu().numpy().astype(np.float32),
            labels=out["labels"].cpu().numpy().astype(np.int64),
            masks=None if masks is None else masks.cpu().numpy(),
            class_names=self.class_names,
            image_size=(int(image.shape[0]), int(image.shape[1])),
        )
