"""COCO box AP and mask AP of any predictor on a COCO-format data set (pycocotools, imported lazily).

The predictor is anything with ``predict(list of [H, W, 3] uint8 RGB arrays) -> list[Detections]`` (the PyTorch
reference, ``deploy_sdk.Predictor``) or a plain function with that signature. Label ids are used as COCO
category ids unchanged: the models of this SDK are trained with category id = label id.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from deploy_sdk.detections import Detections
from deploy_sdk.errors import DeploySdkError, require
from deploy_sdk.preprocessing import load_image
from deploy_sdk.progress import ProgressBar

__all__ = [
    "evaluate",
    "read_annotations",
    "validate_annotations",
    "detections_to_coco",
    "coco_metrics",
    "METRIC_KEYS",
    "SIZE_METRIC_KEYS",
]

# What evaluate() returns, all fractions 0-1 (COCOeval's stats[0], [1], [2] of each kind).
METRIC_KEYS = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")
# AP by object area (COCO's ranges: small < 32², medium < 96², large above); None where the ground truth has no
# object of that size.
SIZE_METRIC_KEYS = tuple(f"{kind}_ap_{size}" for kind in ("box", "mask") for size in ("small", "medium", "large"))

PredictFn = Union[Callable[[List[np.ndarray]], List[Detections]], Any]


def _pycocotools(purpose: str):
    require("pycocotools", "convert", purpose)
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval, mask_utils


def detections_to_coco(det: Detections, image_id: int) -> List[Dict[str, Any]]:
    """COCO result entries of one image: ``bbox`` [x, y, w, h] in pixels, ``score``, ``category_id`` = label,
    and ``segmentation`` as compressed RLE (``counts`` a str, so the list is JSON-serializable) when the
    detections carry masks [N, H, W]."""
    _, _, mask_utils = _pycocotools("encoding masks as COCO RLE")
    results = []
    rles = None
    if det.masks is not None and len(det):
        rles = mask_utils.encode(np.asfortranarray(det.masks.astype(np.uint8).transpose(1, 2, 0)))
    for i in range(len(det)):
        x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
        entry: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(det.labels[i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(det.scores[i]),
        }
        if rles is not None:
            rle = rles[i]
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def coco_metrics(coco_gt, results: Sequence[Dict[str, Any]], image_ids: Sequence[int]) -> Dict[str, Any]:
    """Run COCOeval for boxes and (when every result has a segmentation) masks over ``image_ids``.

    Returns the :data:`METRIC_KEYS` (0 when nothing was detected) and the :data:`SIZE_METRIC_KEYS` (None where
    no ground-truth object has that size; with no detections at all they stay None too)."""
    _, COCOeval, _ = _pycocotools("COCO evaluation")
    metrics: Dict[str, Any] = {k: 0.0 for k in METRIC_KEYS}
    metrics.update({k: None for k in SIZE_METRIC_KEYS})
    if not results:  # COCO.loadRes refuses an empty list; nothing detected is AP 0
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco_dt = coco_gt.loadRes(list(results))
        kinds = [("box", "bbox")]
        if all("segmentation" in r for r in results):
            kinds.append(("mask", "segm"))
        for name, iou_type in kinds:
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            # stats are -1 when there is no ground truth at all; report 0 rather than a negative "fraction".
            metrics[f"{name}_ap"] = max(float(ev.stats[0]), 0.0)
            metrics[f"{name}_ap50"] = max(float(ev.stats[1]), 0.0)
            metrics[f"{name}_ap75"] = max(float(ev.stats[2]), 0.0)
            for size, value in zip(("small", "medium", "large"), ev.stats[3:6]):
                metrics[f"{name}_ap_{size}"] = float(value) if value >= 0 else None
    return metrics


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field_error(path: Path, where: str, field: str, expected: str, value: Any) -> DeploySdkError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return DeploySdkError(f"{path}: {where}: '{field}' must be {expected}, got {shown}")


def _valid_segmentation(seg: Any) -> bool:
    if isinstance(seg, list):  # polygons: lists of x, y coordinates, at least three points each
        return bool(seg) and all(
            isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(_is_number(v) for v in poly)
            for poly in seg
        )
    if isinstance(seg, dict):  # RLE: counts a list of run lengths (uncompressed) or a string (compressed)
        size, counts = seg.get("size"), seg.get("counts")
        size_ok = isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)
        counts_ok = isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts))
        return size_ok and counts_ok
    return False


def validate_annotations(data: Any, path: Union[str, Path] = "annotations") -> None:
    """Check the fields of a COCO instances file that evaluation reads; raise :class:`DeploySdkError` naming the
    first bad entry and field (pycocotools would fail later, deep inside, with a traceback)."""
    path = Path(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise DeploySdkError(f"{path} is not a COCO annotation file (needs 'images', 'annotations', 'categories')")
    if not isinstance(data["annotations"], list):
        raise DeploySdkError(f"{path}: 'annotations' must be a list, got {type(data['annotations']).__name__}")
    image_ids = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise DeploySdkError(f"{path}: image {i} must be an object, got {type(im).__name__}")
        where = f"image {i}" + (f" (id {im['id']!r})" if "id" in im else "")
        if not _is_int(im.get("id")):
            raise _field_error(path, where, "id", "an integer", im.get("id"))
        if im["id"] in image_ids:
            raise DeploySdkError(f"{path}: {where}: image id {im['id']} appears more than once")
        image_ids.add(im["id"])
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise _field_error(path, where, "file_name", "a file name", im.get("file_name"))
        for field in ("height", "width"):
            if not _is_int(im.get(field)) or im[field] < 1:
                raise _field_error(path, where, field, "a positive integer", im.get(field))
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise DeploySdkError(f"{path}: 'categories' must be a list, got {type(categories).__name__}")
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DeploySdkError(f"{path}: category {i} must be an object with an integer 'id', got {cat!r:.60}")
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DeploySdkError(f"{path}: annotation {i} must be an object, got {type(ann).__name__}")
        where = f"annotation {i}" + (f" (id {ann['id']!r})" if "id" in ann else "")
        if not _is_int(ann.get("id")):
            raise _field_error(path, where, "id", "an integer", ann.get("id"))
        if ann["id"] in ann_ids:
            raise DeploySdkError(f"{path}: {where}: annotation id {ann['id']} appears more than once")
        ann_ids.add(ann["id"])
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in image_ids:
            raise _field_error(path, where, "image_id", "the id of an entry of 'images'", ann.get("image_id"))
        if not _is_int(ann.get("category_id")):
            raise _field_error(path, where, "category_id", "an integer", ann.get("category_id"))
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(v) for v in bbox)
            and bbox[2] >= 0
            and bbox[3] >= 0
        ):
            raise _field_error(path, where, "bbox", "[x, y, width, height]: 4 numbers, width and height >= 0", bbox)
        if not _is_number(ann.get("area")) or ann["area"] < 0:
            raise _field_error(path, where, "area", "a number >= 0", ann.get("area"))
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            raise _field_error(path, where, "iscrowd", "0 or 1", ann["iscrowd"])
        if not _valid_segmentation(ann.get("segmentation")):
            raise _field_error(
                path,
                where,
                "segmentation",
                "polygons (lists of x, y numbers) or an RLE {size, counts}",
                ann.get("segmentation"),
            )


def read_annotations(annotations_path: Union[str, Path]) -> Dict[str, Any]:
    """Read and check a COCO instances file (:func:`validate_annotations`); every problem is one line."""
    annotations_path = Path(annotations_path)
    if not annotations_path.is_file():
        raise DeploySdkError(f"annotation file not found: {annotations_path}")
    try:
        data = json.loads(annotations_path.read_text())
    except (OSError, ValueError) as exc:
        raise DeploySdkError(f"cannot read COCO annotations {annotations_path}: {exc}") from exc
    validate_annotations(data, annotations_path)
    return data


def evaluate(
    predict_fn: PredictFn,
    images_dir: Union[str, Path],
    annotations_path: Union[str, Path],
    batch_size: int = 4,
    max_images: Optional[int] = None,
    progress: bool = True,
    annotations: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """COCO AP of ``predict_fn`` on the images listed in ``annotations_path`` (files under ``images_dir``).

    Returns ``box_ap``, ``box_ap50``, ``box_ap75``, ``mask_ap``, ``mask_ap50``, ``mask_ap75`` (fractions 0-1),
    ``num_images``, ``num_detections``, ``seconds`` (prediction time only) and ``images_per_second``.
    ``batch_size`` images are passed to each ``predict`` call; ``max_images`` evaluates the first N only.
    ``annotations``: the contents of ``annotations_path`` when the caller has read it already
    (:func:`read_annotations`), so that it is not read twice.
    """
    COCO, _, _ = _pycocotools("COCO evaluation")
    images_dir, annotations_path = Path(images_dir), Path(annotations_path)
    if batch_size < 1:
        raise DeploySdkError(f"batch size must be at least 1, got {batch_size}")
    if annotations is None and not annotations_path.is_file():
        raise DeploySdkError(f"annotation file not found: {annotations_path}")
    if not images_dir.is_dir():
        raise DeploySdkError(f"image directory not found: {images_dir}")
    if annotations is None:
        data = read_annotations(annotations_path)
    else:
        validate_annotations(annotations, annotations_path)
        data = annotations
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
    entries = sorted(data["images"], key=lambda e: e["id"])
    if max_images is not None:
        entries = entries[: max(int(max_images), 0)]
    if not entries:
        raise DeploySdkError(f"{annotations_path} lists no images to evaluate")
    missing = [e["file_name"] for e in entries if not (images_dir / e["file_name"]).is_file()]
    if missing:
        raise DeploySdkError(
            f"{len(missing)} image file(s) listed in {annotations_path} are not in {images_dir}, "
            f"e.g. {missing[0]}; is --images the right folder?"
        )
    predict = predict_fn.predict if hasattr(predict_fn, "predict") else predict_fn

    results: List[Dict[str, Any]] = []
    seconds = 0.0
    with ProgressBar(len(entries), "eval", enabled=progress) as bar:
        for start in range(0, len(entries), batch_size):
            chunk = entries[start : start + batch_size]
            images = [load_image(images_dir / e["file_name"], what=e["file_name"]) for e in chunk]
            t0 = time.perf_counter()
            dets = predict(images)
            seconds += time.perf_counter() - t0
            if len(dets) != len(images):
                raise DeploySdkError(f"the predictor returned {len(dets)} results for {len(images)} images")
            for entry, det in zip(chunk, dets):
                results.extend(detections_to_coco(det, entry["id"]))
            bar.update(len(chunk))

    metrics: Dict[str, Any] = coco_metrics(coco_gt, results, [e["id"] for e in entries])
    metrics.update(
        num_images=len(entries),
        num_detections=len(results),
        seconds=round(seconds, 3),
        images_per_second=round(len(entries) / seconds, 3) if seconds > 0 else 0.0,
    )
    return metrics
