"""`DeploymentModule`: torchvision Mask R-CNN inference rewritten as one static, batched, exportable graph.

It reuses the checkpoint's submodules (backbone+FPN, RPN head, box head/predictor, mask head/predictor) and
re-implements the glue that torchvision writes as per-image Python loops, so that it exports to ONE ONNX graph
(docs/architecture.md, "The deployment graph contract"):

- inputs ``images`` [B, 3, H, W] float32 0–255 RGB: the resized image at the top-left of a zero-padded canvas
  (resizing happens outside, exactly as torchvision's ``GeneralizedRCNNTransform`` resizes), and
  ``image_sizes`` [B, 2] int64 (height, width) of the valid resized image inside the canvas;
- outputs ``num_detections`` [B] int32, ``boxes`` [B, K, 4] float32 x1 y1 x2 y2 in canvas pixels, ``scores``
  [B, K], ``labels`` [B, K] int32, ``masks`` [B, K, 28, 28] float32 probabilities of the predicted class;
  entries at and past ``num_detections`` are zero.

Every step reproduces torchvision's eval path (rpn.py, roi_heads.py, _utils.py, poolers.py) up to ties in
sorting; where the batched form differs in shape from torchvision's, the comment says why it is equivalent.
NMS is one ``NonMaxSuppression`` node per stage (batch = images, classes = pyramid levels for the RPN; batch =
images × classes for the box head), RoI pooling one ``MultiLevelRoIAlign`` node per pooler.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from deploy_sdk.conversion.checkpoints.settings import RoIAlignSettings
from deploy_sdk.conversion.roi_align_function import RoIAlignConfig, multi_level_roi_align
from deploy_sdk.errors import UnsupportedModelError

__all__ = ["DeploymentModule", "OUTPUT_NAMES", "DEBUG_OUTPUT_NAMES", "batched_nms_indices"]

OUTPUT_NAMES = ["num_detections", "boxes", "scores", "labels", "masks"]
# Extra outputs of the debug export, for comparing intermediate tensors with torchvision:
# RPN proposals [B, R, 4] (canvas pixels; rows past num_proposals are zero), their count [B] int32, and the
# box pooler's output on them [B, R, C, 7, 7].
DEBUG_OUTPUT_NAMES = ["proposals", "num_proposals", "box_features"]

# Score given to candidates that must not survive NMS; thresholds below sit halfway, so the result is the same
# whether a runtime drops scores "< threshold" (ONNX spec wording) or "<= threshold" (some implementations).
_DROPPED = -1.0


class _BatchedNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes [N, M, 4] (x1y1x2y2), scores [N, C, M] -> selected [S, 3] int64
    rows (batch, class, box), per (batch, class) in descending score order, at most ``max_per_class`` each."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_threshold: float):
        from torchvision.ops import nms

        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                cand = torch.where(scores[b, c] > score_threshold)[0]
                keep = cand[nms(boxes[b, cand], scores[b, c, cand], iou)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows, 0) if rows else torch.zeros((0, 3), dtype=torch.int64, device=scores.device)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def batched_nms_indices(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_threshold: float):
    """Greedy NMS per (image, class): boxes [N, M, 4] x1 y1 x2 y2, scores [N, C, M] -> [S, 3] int64 rows
    (image, class, box index). Scores <= ``score_threshold`` never survive. Exports as ``NonMaxSuppression``."""
    return _BatchedNMS.apply(boxes, scores, max_per_class, iou, score_threshold)


def _min_k(x: Tensor, k: int, dim: int):
    """min(k, x.shape[dim]) that stays dynamic when traced (a Python min would bake the traced size in)."""
    if not torch.jit.is_tracing():
        return min(k, x.shape[dim])
    size = torch._shape_as_tensor(x)[dim].unsqueeze(0)
    return torch.min(torch.cat([torch.tensor([k], dtype=size.dtype, device=size.device), size]))


def _decode(deltas: Tensor, ref: Tensor, weights: Sequence[float], clip: float) -> Tensor:
    """torchvision ``BoxCoder.decode_single`` on matching leading shapes: deltas [..., 4], ref [..., 4]."""
    widths = ref[..., 2] - ref[..., 0]
    heights = ref[..., 3] - ref[..., 1]
    ctr_x = ref[..., 0] + 0.5 * widths
    ctr_y = ref[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], -1)


def _clip_to_sizes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clamp boxes [B, N, ..., 4] to [0, w] x [0, h] of each image (image_sizes [B, 2] (h, w))."""
    shape = (boxes.shape[0],) + (1,) * (boxes.dim() - 2)
    h = image_sizes[:, 0].to(boxes.dtype).reshape(shape)
    w = image_sizes[:, 1].to(boxes.dtype).reshape(shape)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x1 = torch.min(torch.max(boxes[..., 0], zero), w)
    y1 = torch.min(torch.max(boxes[..., 1], zero), h)
    x2 = torch.min(torch.max(boxes[..., 2], zero), w)
    y2 = torch.min(torch.max(boxes[..., 3], zero), h)
    return torch.stack([x1, y1, x2, y2], -1)


def _not_small(boxes: Tensor, min_size: float, strict: bool = False) -> Tensor:
    """Width and height >= min_size (torchvision's remove_small_boxes), or > min_size when ``strict`` (detectron2's
    ``Boxes.nonempty``, MMDetection's ``min_bbox_size``)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if strict:
        return (w > min_size) & (h > min_size)
    return (w >= min_size) & (h >= min_size)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, *rest], idx [B, K] int64 -> [B, K, *rest] (per-image gather along dim 1)."""
    index = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:])
    return torch.gather(x, 1, index)


def _pooler_config(pool: nn.Module, spatial_scales: List[float], what: str) -> RoIAlignConfig:
    if not isinstance(pool, MultiScaleRoIAlign):
        raise UnsupportedModelError(
            f"{what} is a {type(pool).__name__}; only torchvision MultiScaleRoIAlign poolers are supported"
        )
    return RoIAlignSettings.from_pooler(pool).config(spatial_scales)


class DeploymentModule(nn.Module):
    """Mask R-CNN inference as one batched, fixed-output graph (see the module docstring for the contract).

    ``loaded_model``: a ``deploy_sdk.conversion.checkpoint.LoadedModel`` (or a torchvision ``MaskRCNN``).
    ``max_detections``
    is K, the padded output size. ``debug=True`` appends :data:`DEBUG_OUTPUT_NAMES` to the outputs.
    """

    # Buffers (register_buffer in __init__): the normalization, [1, 3, 1, 1] each.
    mean: Tensor
    std: Tensor

    def __init__(self, loaded_model, max_detections: int = 100, debug: bool = False):
        super().__init__()
        model = getattr(loaded_model, "model", loaded_model)
        if not isinstance(model, MaskRCNN):
            raise UnsupportedModelError(
                f"expected a torchvision MaskRCNN, got {type(model).__name__}; supported: torchvision Mask R-CNN "
                "with an FPN backbone (maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, resnet*_fpn)"
            )
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        model = model.eval()
        # How the checkpoint's framework differs from torchvision where the modules cannot say it (fixed anchor
        # strides, small-box filters): checkpoints.settings.FrameworkSemantics; torchvision's defaults otherwise.
        from deploy_sdk.conversion.checkpoints.settings import FrameworkSemantics

        semantics = getattr(loaded_model, "semantics", None) or FrameworkSemantics()
        self.anchor_strides = None if semantics.anchor_strides is None else [int(v) for v in semantics.anchor_strides]
        self.anchor_offset = float(semantics.anchor_offset)
        self.rpn_min_size_strict = bool(semantics.rpn_min_box_strict)
        self.box_min_size = None if semantics.box_min_size is None else float(semantics.box_min_size)
        self.max_detections = int(max_detections)
        self.debug = bool(debug)
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.size_divisible = int(t.size_divisible)

        self.backbone = model.backbone
        rpn = model.rpn
        self.rpn_head = rpn.head
        self.cell_anchors = [a.to(torch.float32) for a in rpn.anchor_generator.cell_anchors]
        self.rpn_pre_nms_top_n = int(rpn._pre_nms_top_n["testing"])
        self.rpn_post_nms_top_n = int(rpn._post_nms_top_n["testing"])
        self.rpn_nms_thresh = float(rpn.nms_thresh)
        self.rpn_min_size = float(rpn.min_size if semantics.source == "torchvision" else semantics.rpn_min_box_size)
        self.rpn_score_thresh = float(rpn.score_thresh)
        self.rpn_weights = tuple(float(w) for w in rpn.box_coder.weights)
        self.rpn_clip = float(rpn.box_coder.bbox_xform_clip)

        heads = model.roi_heads
        if not heads.has_mask():
            raise UnsupportedModelError("the model has no mask head; only Mask R-CNN (with masks) is supported")
        if getattr(heads, "keypoint_roi_pool", None) is not None:
            raise UnsupportedModelError("keypoint heads are not supported")
        self.box_head = heads.box_head
        self.box_predictor = heads.box_predictor
        self.mask_head = heads.mask_head
        self.mask_predictor = heads.mask_predictor
        self.box_score_thresh = float(heads.score_thresh)
        self.box_nms_thresh = float(heads.nms_thresh)
        self.box_weights = tuple(float(w) for w in heads.box_coder.weights)
        self.box_clip = float(heads.box_coder.bbox_xform_clip)
        # torchvision keeps detections_per_img after NMS; K may be larger (more padding) or smaller.
        self.detections_per_img = min(int(heads.detections_per_img), self.max_detections)

        self.feature_names, spatial_scales = self._probe_features(heads.box_roi_pool)
        if self.anchor_strides is not None and len(self.anchor_strides) != len(self.cell_anchors):
            raise UnsupportedModelError(
                f"{len(self.anchor_strides)} anchor strides for {len(self.cell_anchors)} anchor levels"
            )
        if len(self.cell_anchors) != len(self.feature_names[1]):
            raise UnsupportedModelError(
                f"the anchor generator has {len(self.cell_anchors)} levels but the backbone returns "
                f"{len(self.feature_names[1])} feature maps"
            )
        self.box_pool_cfg = _pooler_config(heads.box_roi_pool, spatial_scales, "the box RoI pooler")
        if list(heads.mask_roi_pool.featmap_names) != list(heads.box_roi_pool.featmap_names):
            raise UnsupportedModelError("box and mask poolers read different feature maps; not supported")
        self.mask_pool_cfg = _pooler_config(heads.mask_roi_pool, spatial_scales, "the mask RoI pooler")

    def _probe_features(self, pool) -> Tuple[Tuple[List[int], List[str]], List[float]]:
        """Which backbone outputs the poolers read, and their scales (as torchvision's ``_infer_scale``)."""
        import math

        size = 128
        with torch.no_grad():
            device = next(self.backbone.parameters()).device
            feats = self.backbone(torch.zeros(1, 3, size, size, device=device))
        names = list(feats.keys())
        missing = [n for n in pool.featmap_names if n not in names]
        if missing:
            raise UnsupportedModelError(f"the RoI pooler reads feature maps {missing} the backbone does not return")
        pooled_idx = [names.index(n) for n in pool.featmap_names]
        scales = [2.0 ** round(math.log2(feats[n].shape[-2] / size)) for n in pool.featmap_names]
        return (pooled_idx, names), scales

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, image_sizes: Tensor):
        """images [B, 3, H, W] float32 0–255 RGB canvas; image_sizes [B, 2] int64 (h, w) -> the contract outputs."""
        image_sizes = image_sizes.to(torch.int64)
        x = self._normalize(images.to(torch.float32), image_sizes)
        feats = list(self.backbone(x).values())
        proposals, proposal_valid = self._rpn(x, feats, image_sizes)
        pooled_feats = [feats[i] for i in self.feature_names[0]]
        outputs = self._detect(proposals, proposal_valid, pooled_feats, image_sizes)
        if not self.debug:
            return outputs
        box_features = multi_level_roi_align(proposals, pooled_feats, self.box_pool_cfg)
        num_proposals = proposal_valid.sum(1).to(torch.int32)
        return outputs + (proposals, num_proposals, box_features)

    def _normalize(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        x = (images / 255.0 - self.mean) / self.std
        # torchvision pads AFTER normalizing, with zeros: zero everything outside each image's valid area.
        rows = torch.arange(x.shape[2], device=x.device).reshape(1, -1, 1)
        cols = torch.arange(x.shape[3], device=x.device).reshape(1, 1, -1)
        inside = (rows < image_sizes[:, 0].reshape(-1, 1, 1)) & (cols < image_sizes[:, 1].reshape(-1, 1, 1))
        return torch.where(inside.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))

    def _anchors(self, x: Tensor, feat: Tensor, cell: Tensor, level: int = 0) -> Tensor:
        """Anchors [h*w*A, 4] of one level, from the canvas and feature-map shapes (torchvision AnchorGenerator:
        stride = canvas size // feature size, integer division; order (y, x, anchor)), or at the level's fixed
        stride and offset when the framework fixes them (detectron2, MMDetection: shifts (i + offset) * stride)."""
        fh, fw = feat.shape[-2], feat.shape[-1]
        if self.anchor_strides is not None:
            stride = float(self.anchor_strides[level])
            offset = self.anchor_offset
            shifts_x = (torch.arange(fw, device=x.device).to(torch.float32) + offset) * stride
            shifts_y = (torch.arange(fh, device=x.device).to(torch.float32) + offset) * stride
        else:
            stride_h = x.shape[-2] // fh
            stride_w = x.shape[-1] // fw
            shifts_x = torch.arange(fw, device=x.device).to(torch.float32) * stride_w
            shifts_y = torch.arange(fh, device=x.device).to(torch.float32) * stride_h
        sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        sx, sy = sx.reshape(-1), sy.reshape(-1)
        shifts = torch.stack([sx, sy, sx, sy], dim=1)
        return (shifts.reshape(-1, 1, 4) + cell.reshape(1, -1, 4)).reshape(-1, 4)

    def _rpn(self, x: Tensor, feats: List[Tensor], image_sizes: Tensor) -> Tuple[Tensor, Tensor]:
        """Proposals [B, R, 4] (R = min(post_nms_top_n, candidates); invalid rows zero) and validity [B, R]."""
        objectness, deltas = self.rpn_head(feats)
        batch = x.shape[0]
        boxes_l, scores_l, level_l = [], [], []
        for level, (obj, dlt, feat, cell) in enumerate(zip(objectness, deltas, feats, self.cell_anchors)):
            # [B, A, h, w] -> [B, h*w*A]; [B, A*4, h, w] -> [B, h*w*A, 4] (torchvision permute_and_flatten)
            num_a = obj.shape[1]
            obj = obj.permute(0, 2, 3, 1).reshape(batch, -1)
            dlt = (
                dlt.reshape(batch, num_a, 4, dlt.shape[-2], dlt.shape[-1]).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
            )
            anchors = self._anchors(x, feat, cell.to(x.device), level)
            # Per-level top-k on the logits before decoding (decoding is elementwise, so the order does not matter).
            top_obj, top_idx = obj.topk(_min_k(obj, self.rpn_pre_nms_top_n, 1), dim=1)
            top_anchors = anchors[top_idx]  # [B, k, 4]
            top_deltas = _take(dlt, top_idx)
            boxes_l.append(_decode(top_deltas, top_anchors, self.rpn_weights, self.rpn_clip))
            scores_l.append(top_obj)
            level_l.append(torch.full_like(top_idx, level))
        boxes = _clip_to_sizes(torch.cat(boxes_l, 1), image_sizes)  # [B, N, 4]
        prob = torch.sigmoid(torch.cat(scores_l, 1))  # [B, N]
        levels = torch.cat(level_l, 1)
        keep = _not_small(boxes, self.rpn_min_size, self.rpn_min_size_strict) & (prob >= self.rpn_score_thresh)

        # NMS independently per level: classes = levels, a box scores only in its own level's row.
        num_levels = len(boxes_l)
        lvl_ids = torch.arange(num_levels, device=x.device).reshape(1, -1, 1)
        dropped = torch.tensor(_DROPPED, device=x.device)
        per_level = torch.where((levels.unsqueeze(1) == lvl_ids) & keep.unsqueeze(1), prob.unsqueeze(1), dropped)
        sel = batched_nms_indices(boxes, per_level, self.rpn_post_nms_top_n, self.rpn_nms_thresh, _DROPPED / 2)
        # Survivors of all levels together, best first, top post_nms_top_n (torchvision: keep[:post_nms_top_n]
        # after batched_nms, which returns indices sorted by score over all levels).
        kept = torch.full_like(prob, _DROPPED)
        kept = kept.index_put((sel[:, 0], sel[:, 2]), prob[sel[:, 0], sel[:, 2]])
        top_score, top_idx = kept.topk(_min_k(kept, self.rpn_post_nms_top_n, 1), dim=1)
        valid = top_score > _DROPPED / 2
        proposals = torch.where(
            valid.unsqueeze(-1), _take(boxes, top_idx), torch.zeros((), dtype=boxes.dtype, device=boxes.device)
        )
        return proposals, valid

    def _detect(self, proposals: Tensor, proposal_valid: Tensor, feats: List[Tensor], image_sizes: Tensor):
        batch, num_rois = proposals.shape[0], proposals.shape[1]
        pooled = multi_level_roi_align(proposals, feats, self.box_pool_cfg)  # [B, R, C, 7, 7]
        pooled = pooled.reshape((-1,) + tuple(pooled.shape[2:]))
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        num_classes = class_logits.shape[-1]
        # [B*R, C*4] -> [B, R, C, 4]: every class decodes from the same proposal.
        deltas = box_regression.reshape(batch, num_rois, -1, 4)
        ref = proposals.unsqueeze(2).expand_as(deltas)
        boxes = _clip_to_sizes(_decode(deltas, ref, self.box_weights, self.box_clip), image_sizes)
        scores = F.softmax(class_logits, -1).reshape(batch, num_rois, -1)
        boxes, scores = boxes[:, :, 1:], scores[:, :, 1:]  # drop the background class
        keep = (scores > self.box_score_thresh) & proposal_valid.unsqueeze(-1)
        if self.box_min_size is not None:  # torchvision's remove_small_boxes(1e-2); detectron2/MMDetection: none
            keep = keep & _not_small(boxes, self.box_min_size)
        scores = torch.where(keep, scores, torch.tensor(_DROPPED, device=scores.device))

        # Class-wise NMS with the class folded into the NMS batch: [B*(C-1), R, 4] boxes, one score row each.
        # Exact (classes never suppress each other) and linear in C, unlike a [B, C, B*R*C] score tensor.
        boxes_c = boxes.permute(0, 2, 1, 3).reshape(-1, num_rois, 4)
        scores_c = scores.permute(0, 2, 1).reshape(-1, 1, num_rois)
        thresh = self.box_score_thresh / 2 if self.box_score_thresh > 0 else _DROPPED / 2
        sel = batched_nms_indices(boxes_c, scores_c, self.detections_per_img, self.box_nms_thresh, thresh)
        flat_scores = scores_c.reshape(batch, -1)  # [B, (C-1)*R], index = class * R + roi
        kept = torch.full_like(flat_scores, _DROPPED)
        rows = sel[:, 0] // (num_classes - 1)
        cols = (sel[:, 0] % (num_classes - 1)) * num_rois + sel[:, 2]
        kept = kept.index_put((rows, cols), flat_scores[rows, cols])
        # K padding slots so top-K always has K candidates, whatever (C-1)*R is.
        k = self.max_detections
        kept = torch.cat([kept, torch.full((batch, k), _DROPPED, dtype=kept.dtype, device=kept.device)], 1)
        top_score, top_idx = kept.topk(k, dim=1)
        valid = top_score > 0
        if self.detections_per_img < k:  # torchvision keeps detections_per_img; the rest is padding
            valid = valid & (torch.arange(k, device=valid.device).reshape(1, -1) < self.detections_per_img)
        top_idx = torch.where(valid, top_idx, torch.zeros_like(top_idx))
        det_boxes = _take(boxes.permute(0, 2, 1, 3).reshape(batch, -1, 4), top_idx)
        det_labels = top_idx // num_rois + 1
        zero = torch.zeros((), dtype=det_boxes.dtype, device=det_boxes.device)
        det_boxes = torch.where(valid.unsqueeze(-1), det_boxes, zero)
        det_scores = torch.where(valid, top_score, zero)
        det_labels = torch.where(valid, det_labels, torch.zeros_like(det_labels))

        # The mask head runs on the valid detections only. Pooling takes the first n slots of every image, n = the
        # most detections of any image in the batch (at least 1): top-K is sorted and padding scores are 0, so
        # valid detections come first. n stays a tensor so that the exported graph keeps it dynamic. The mask head
        # then gets only the pooled rows of valid detections, gathered over the batch: in a batch, an image with
        # fewer detections than the batch's most would otherwise send padding slots through it (4 shipped-model
        # images with 14, 82, 21 and 15 detections: 328 rows for 132). Row 0 always goes (no runtime sees an
        # empty batch); the masks go back to their slots through an inverse index, and slots without a detection
        # point at a zero mask put in front of them.
        num = valid.sum(1)
        n = torch.clamp(num.max(), min=1)
        # torch's type hints take a Python number as the end only; a 0-d tensor works and keeps the graph dynamic.
        first = torch.arange(n, device=det_boxes.device)  # type: ignore[call-overload]
        mask_boxes = det_boxes.index_select(1, first)
        mask_pooled = multi_level_roi_align(mask_boxes, feats, self.mask_pool_cfg)
        mask_pooled = mask_pooled.reshape((-1,) + tuple(mask_pooled.shape[2:]))  # [B*n, C, h, w]
        slot_valid = valid.index_select(1, first).reshape(-1)  # [B*n]
        slot_ids = torch.arange(slot_valid.shape[0], device=det_boxes.device)
        # NonZero of a float: TensorRT's parser takes FP32/FP16 there, not BOOL.
        rows = torch.nonzero((slot_valid | (slot_ids == 0)).to(torch.float32)).reshape(-1)  # [N]
        mask_logits = self.mask_predictor(self.mask_head(mask_pooled.index_select(0, rows)))  # [N, C, M, M]
        m = mask_logits.shape[-1]
        row_labels = det_labels.index_select(1, first).reshape(-1).index_select(0, rows)
        index = row_labels.reshape(-1, 1, 1, 1).expand(-1, 1, m, m)
        row_masks = torch.gather(mask_logits, 1, index).sigmoid().reshape(-1, m, m)  # [N, M, M]
        row_masks = torch.cat([torch.zeros_like(row_masks[:1]), row_masks], 0)  # row 0: the zero mask
        row_ids = torch.arange(1, rows.shape[0] + 1, device=det_boxes.device)
        slot_rows = torch.zeros_like(slot_ids).scatter(0, rows, row_ids)  # [B*n]: 1 + its row, or 0
        masks = row_masks.index_select(0, slot_rows).reshape(batch, -1, m, m)  # [B, n, M, M]
        slot = torch.minimum(torch.arange(k, device=det_boxes.device), n - 1)
        masks = masks.index_select(1, slot)  # [B, K, M, M]
        masks = torch.where(valid.reshape(batch, k, 1, 1), masks, zero)
        return num.to(torch.int32), det_boxes, det_scores, det_labels.to(torch.int32), masks
