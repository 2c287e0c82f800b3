"""Detection-level agreement between two results on the same image (an exported backend vs the PyTorch reference).

Random weights and tiny numeric differences reorder near-equal detections, so tensors are not compared slot by
slot: every reference detection is matched to a detection of the same label (greedy, highest reference score
first, best box IoU), then the matched pairs are measured: box IoU, |Δscore|, and mask IoU of the two masks
pasted to the image. Used by ``maskrcnn-deploy check``, the runtime tests and the benchmarks.

Masks may be bool (decided everywhere) or float probabilities pasted to the image. With probabilities, the mask
IoU counts only the pixels both sides have *decided*: probability at least ``mask_band`` away from the 0.5
threshold. A pixel at 0.499 on one side and 0.501 on the other is a rounding difference, not a disagreement, and
a model whose masks sit near 0.5 (random or barely trained weights, soft object borders) would otherwise fail on
such pixels alone. A failing image names its worst detection: label, scores, box and IoUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from deploy_sdk.detections import Detections

__all__ = [
    "ParityThresholds",
    "ImageParity",
    "box_iou",
    "mask_iou",
    "decided_mask_iou",
    "compare_detections",
    "summarize",
]

MASK_THRESHOLD = 0.5  # deploy_sdk.mask_paste.MASK_THRESHOLD: a pixel is in the mask when its probability is above


@dataclass(frozen=True)
class ParityThresholds:
    """Agreement required by default: every reference detection scoring >= ``min_score`` is matched with box IoU
    >= ``box_iou``, |Δscore| <= ``score_diff`` and pasted-mask IoU >= ``mask_iou``; the candidate has no unmatched
    detection scoring >= ``min_score``."""

    min_score: float = 0.3
    box_iou: float = 0.98
    score_diff: float = 0.01
    mask_iou: float = 0.95
    # Below this box IoU two same-label detections are not considered the same object at all.
    match_iou: float = 0.5
    # Mask pixels whose probability is within this of the 0.5 threshold on either side are left out of the mask
    # IoU (only when both sides give probabilities; bool masks are decided everywhere).
    mask_band: float = 0.05


@dataclass
class ImageParity:
    """How one image's candidate detections agree with the reference's (worst values over checked pairs)."""

    num_reference: int  # reference detections scoring >= min_score
    num_candidate: int  # candidate detections scoring >= min_score
    num_matched: int
    worst_box_iou: float = 1.0
    worst_score_diff: float = 0.0
    worst_mask_iou: float = 1.0
    missing: List[int] = field(default_factory=list)  # reference indices with no match
    extra: List[int] = field(default_factory=list)  # candidate indices >= min_score with no match
    problems: List[str] = field(default_factory=list)
    # The detection furthest outside the thresholds (or the best-scoring unmatched one), in words; None when ok.
    worst_detection: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{self.num_matched}/{self.num_reference} matched, box IoU >= {self.worst_box_iou:.4f}, "
            f"|dscore| <= {self.worst_score_diff:.4f}, mask IoU >= {self.worst_mask_iou:.4f}"
        )
        if self.ok:
            return head
        worst = f"; worst: {self.worst_detection}" if self.worst_detection else ""
        return head + " -- " + "; ".join(self.problems) + worst


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4] (x1 y1 x2 y2, same pixel frame); 0 where both are empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks [H, W]; 1.0 when both are empty (they agree)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def decided_mask_iou(a: np.ndarray, b: np.ndarray, band: float = 0.05) -> float:
    """IoU of two masks [H, W] over the pixels both sides have decided.

    ``a``, ``b``: bool masks or float probabilities (a pixel is in the mask when its probability is > 0.5). A
    probability within ``band`` of 0.5 is undecided; bool pixels are always decided. Intersection and union are
    counted over the pixels decided on both sides; 1.0 when that union is empty (nothing decided disagrees).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype == bool and b.dtype == bool:
        return mask_iou(a, b)
    decided = _decided(a, band) & _decided(b, band)
    in_a = (a > MASK_THRESHOLD) & decided
    in_b = (b > MASK_THRESHOLD) & decided
    union = np.logical_or(in_a, in_b).sum()
    return 1.0 if union == 0 else float(np.logical_and(in_a, in_b).sum() / union)


def _decided(mask: np.ndarray, band: float) -> np.ndarray:
    if mask.dtype == bool:
        return np.ones(mask.shape, dtype=bool)
    return np.abs(mask.astype(np.float32) - np.float32(MASK_THRESHOLD)) > band


def compare_detections(
    candidate: Detections, reference: Detections, thresholds: ParityThresholds = ParityThresholds()
) -> ImageParity:
    """Match ``candidate`` to ``reference`` (both in the same image's pixels) and measure their agreement.

    All reference detections take part in matching, so a candidate at 0.31 whose reference twin scored 0.29 is
    a match (checked for |Δscore|), not an extra detection. Masks are compared when both sides have them
    (bool, or float probabilities: see :func:`decided_mask_iou`).
    """
    t = thresholds
    ious = box_iou(reference.boxes, candidate.boxes)
    order = np.argsort(-np.asarray(reference.scores), kind="stable")
    taken = np.zeros(len(candidate), dtype=bool)
    match = {}
    for r in order:
        same = (np.asarray(candidate.labels) == reference.labels[r]) & ~taken
        if not same.any():
            continue
        row = np.where(same, ious[r], -1.0)
        c = int(np.argmax(row))
        if row[c] >= t.match_iou:
            match[int(r)] = c
            taken[c] = True

    ref_hi = [int(i) for i in np.where(np.asarray(reference.scores) >= t.min_score)[0]]
    cand_hi = [int(i) for i in np.where(np.asarray(candidate.scores) >= t.min_score)[0]]
    result = ImageParity(num_reference=len(ref_hi), num_candidate=len(cand_hi), num_matched=0)
    checked = set(ref_hi) | {r for r, c in match.items() if candidate.scores[c] >= t.min_score}
    worst_excess, worst_pair = 0.0, None
    for r in sorted(checked):
        if r not in match:
            result.missing.append(r)
            continue
        c = match[r]
        result.num_matched += r in ref_hi
        pair_box = float(ious[r, c])
        pair_score = abs(float(candidate.scores[c] - reference.scores[r]))
        pair_mask = 1.0
        if candidate.masks is not None and reference.masks is not None:
            pair_mask = decided_mask_iou(candidate.masks[c], reference.masks[r], t.mask_band)
        result.worst_box_iou = min(result.worst_box_iou, pair_box)
        result.worst_score_diff = max(result.worst_score_diff, pair_score)
        result.worst_mask_iou = min(result.worst_mask_iou, pair_mask)
        # How far outside its thresholds a pair is, each criterion in units of its own allowance.
        excess = max(
            (t.box_iou - pair_box) / max(1.0 - t.box_iou, 1e-9),
            (pair_score - t.score_diff) / max(t.score_diff, 1e-9),
            (t.mask_iou - pair_mask) / max(1.0 - t.mask_iou, 1e-9),
        )
        if excess > worst_excess:
            worst_excess = excess
            worst_pair = (
                f"{_describe(reference, r)} (candidate score {float(candidate.scores[c]):.3f}): box IoU "
                f"{pair_box:.4f}, |dscore| {pair_score:.4f}, mask IoU {pair_mask:.4f}"
            )
    matched_candidates = set(match.values())
    result.extra = [c for c in cand_hi if c not in matched_candidates]

    if result.missing:
        result.problems.append(f"{len(result.missing)} reference detection(s) >= {t.min_score} unmatched")
    if result.extra:
        result.problems.append(f"{len(result.extra)} extra detection(s) >= {t.min_score}")
    if result.worst_box_iou < t.box_iou:
        result.problems.append(f"box IoU {result.worst_box_iou:.4f} < {t.box_iou}")
    if result.worst_score_diff > t.score_diff:
        result.problems.append(f"|dscore| {result.worst_score_diff:.4f} > {t.score_diff}")
    if result.worst_mask_iou < t.mask_iou:
        result.problems.append(f"mask IoU {result.worst_mask_iou:.4f} < {t.mask_iou}")
    if result.problems:
        # An unmatched detection outweighs an imprecise one: name the best-scoring missing one, else the extra one.
        if result.missing:
            r = max(result.missing, key=lambda i: float(reference.scores[i]))
            result.worst_detection = f"reference {_describe(reference, r)} has no match"
        elif result.extra:
            c = max(result.extra, key=lambda i: float(candidate.scores[i]))
            result.worst_detection = f"candidate {_describe(candidate, c)} has no match in the reference"
        else:
            result.worst_detection = worst_pair
    return result


def _describe(det: Detections, i: int) -> str:
    """'circle' #3 score 0.873 box [12.0, 40.5, 88.2, 120.0]: one detection, for a failure message."""
    label = int(det.labels[i])
    names = list(det.class_names or [])
    name = names[label] if 0 <= label < len(names) else f"class {label}"
    box = ", ".join(f"{v:.1f}" for v in np.asarray(det.boxes[i], dtype=np.float64))
    return f"'{name}' #{i} score {float(det.scores[i]):.3f} box [{box}]"


def summarize(results: Sequence[ImageParity]) -> str:
    """One line over many images: failures, detections checked, and the worst values seen."""
    if not results:
        return "no images compared"
    failed = sum(not r.ok for r in results)
    return (
        f"{len(results) - failed}/{len(results)} images agree; {sum(r.num_matched for r in results)}"
        f"/{sum(r.num_reference for r in results)} reference detections matched; worst box IoU "
        f"{min(r.worst_box_iou for r in results):.4f}, worst |dscore| {max(r.worst_score_diff for r in results):.4f}, "
        f"worst mask IoU {min(r.worst_mask_iou for r in results):.4f}"
    )
