"""Small models and inputs shared by the export tests, and torchvision's own pipeline run on the same canvas.

The reference side never uses conversion code: it normalizes and pads with torchvision's
``GeneralizedRCNNTransform.normalize``/``batch_images`` and runs the model's backbone, ``rpn`` and
``roi_heads`` modules, i.e. ``MaskRCNN.forward`` minus the resize (which the runtime does outside the graph).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList

from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn


def build_tiny_maskrcnn(seed: int = 0, num_classes: int = 7, width: int = 32):
    """A randomly initialised ResNet18-FPN Mask R-CNN with narrow heads (``width`` FPN and mask-head channels, twice
    that in the box head; fast on CPU) and small input sizes, eval mode."""
    torch.manual_seed(seed)
    cfg = ArchConfig(
        "resnet18_fpn",
        num_classes,
        fpn_channels=width,
        box_head_dim=2 * width,
        mask_head_dims=(width, width),
        mask_predictor_dim=width,
        min_size=128,
        max_size=160,
    )
    return build_resnet_fpn_maskrcnn(cfg).eval()


def random_canvas(sizes: Sequence[Tuple[int, int]], canvas: Tuple[int, int], seed: int = 0):
    """Random 0–255 integer-valued images of ``sizes`` (h, w) at the top-left of a zero canvas.

    Returns (images [B, 3, H, W] float32, image_sizes [B, 2] int64, list of the unpadded [3, h, w] images)."""
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in sizes]
    images = torch.zeros((len(sizes), 3) + tuple(canvas))
    for i, crop in enumerate(crops):
        images[i, :, : crop.shape[1], : crop.shape[2]] = crop
    return images, torch.tensor(sizes, dtype=torch.int64), crops


@torch.no_grad()
def torchvision_pipeline(model, crops: List[torch.Tensor], canvas: Tuple[int, int]) -> Dict[str, object]:
    """torchvision's inference on already-resized 0–255 images padded to ``canvas``: features, RPN proposals
    (list of [n_i, 4]), detections (list of dicts: boxes, scores, labels, masks [N, 1, 28, 28] before pasting),
    and the box pooler's output on the proposals (list of [n_i, C, 7, 7])."""
    t = model.transform
    normalized = [t.normalize(c / 255.0) for c in crops]
    batched = t.batch_images(normalized, size_divisible=t.size_divisible)
    assert tuple(batched.shape[-2:]) == tuple(canvas), "canvas must be torchvision's own padded size"
    sizes = [(int(c.shape[1]), int(c.shape[2])) for c in crops]
    images = ImageList(batched, sizes)
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    ranked = rpn_ranked_proposals(model.rpn, images, features, beyond_cut=32)
    pooled = model.roi_heads.box_roi_pool(features, proposals, sizes)  # what roi_heads pools, all images at once
    box_features = list(pooled.split([len(p) for p in proposals]))
    # roi_heads' postprocess stops before pasting: masks are [N, 1, 28, 28] probabilities in the box frame.
    detections, _ = model.roi_heads(features, proposals, sizes)
    return {
        "features": features,
        "proposals": proposals,
        "box_features": box_features,
        "detections": detections,
        "ranked_proposals": ranked,
    }


@torch.no_grad()
def rpn_ranked_proposals(rpn, images: ImageList, features, beyond_cut: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per image, the RPN's proposals and objectness scores in rank order (best first), continued
    ``beyond_cut`` rows past the post-NMS top-k cut: the rows ``rpn`` keeps come first, then the candidates it
    dropped at the cut. Runs torchvision's own ``RegionProposalNetwork`` steps (head, anchors, decode,
    ``filter_proposals``) with the cut moved, so a test can tell a near-tie at the cut from a real difference."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(images, levels)
    per_level = [int(o[0].numel()) for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    decoded = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    saved = dict(rpn._post_nms_top_n)
    try:
        rpn._post_nms_top_n["testing"] = saved["testing"] + beyond_cut
        boxes, scores = rpn.filter_proposals(decoded, objectness, images.image_sizes, per_level)
    finally:
        rpn._post_nms_top_n = saved
    return list(zip(boxes, scores))


def match_rows(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Permutation p with actual[p[i]] closest to expected[i] (rows [N, 4]); equal scores may order RoIs
    differently in two correct implementations, so proposals are compared as sets."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{actual.shape} proposals vs expected {expected.shape}"
    dist = np.abs(expected[:, None, :] - actual[None, :, :]).max(-1)
    # Greedy, closest unused row first: identical boxes from different pyramid levels both survive the RPN's
    # per-level NMS, so rows may repeat and any of the twins is a valid partner.
    perm = np.empty(len(expected), dtype=np.int64)
    used = np.zeros(len(actual), dtype=bool)
    for i in np.argsort(dist.min(1), kind="stable"):
        j = int(np.argmin(np.where(used, np.inf, dist[i])))
        perm[i] = j
        used[j] = True
    return perm
