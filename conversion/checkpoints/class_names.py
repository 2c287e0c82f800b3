"""Class names of a loaded model, indexed by label id with the background first.

Where they come from, first found wins: the caller (a list, or the path of a JSON list), a sidecar
``<checkpoint>.classes.json``, the checkpoint's own ``class_names``, the COCO names when the class count is one
of COCO's (below), else ``class_<id>``.

COCO models come in two label layouts, both with the background at 0:

- 91 classes: torchvision's Mask R-CNN trained on COCO, where the label id IS the COCO category id (1..90, with
  ten ids COCO never used, named "N/A");
- 81 classes: the 80 categories numbered contiguously 1..80 in category-id order, as detectron2 and MMDetection
  train them (their checkpoints put the background last or leave it implicit; the importers move it to 0).

Another model with 91 or 81 classes would get COCO names too: pass ``--class-names`` (or a sidecar file) to say
otherwise. :func:`describe_class_names` is the line the export prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

from deploy_sdk.errors import CheckpointError

__all__ = [
    "resolve_class_names",
    "read_names_json",
    "COCO_80_NAMES",
    "COCO_91_NAMES",
    "coco_names",
    "describe_class_names",
]

# The 80 COCO categories in category-id order.
COCO_80_NAMES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
# Category ids 1..90 that the COCO 2014/2017 releases leave unused.
_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


def _coco_91() -> tuple:
    names = iter(COCO_80_NAMES)
    return ("__background__",) + tuple("N/A" if i in _COCO_UNUSED_IDS else next(names) for i in range(1, 91))


COCO_91_NAMES = _coco_91()
_COCO_LAYOUTS = {
    91: ("COCO in torchvision's 91-id layout, label = category id", COCO_91_NAMES),
    81: (
        "COCO, 80 classes numbered 1..80 as detectron2 and MMDetection train them",
        ("__background__",) + COCO_80_NAMES,
    ),
}


def coco_names(num_classes: int) -> Optional[List[str]]:
    """The COCO names for a model of ``num_classes`` classes (incl. the background), or None for other counts."""
    layout = _COCO_LAYOUTS.get(int(num_classes))
    return list(layout[1]) if layout else None


def describe_class_names(names: Sequence[str], limit: int = 8) -> str:
    """One line for logs: where the names of this count come from and the first few of them."""
    shown = [n for n in names[1:] if n != "N/A"]
    layout = _COCO_LAYOUTS.get(len(names))
    origin = f" ({layout[0]})" if layout and list(names) == list(layout[1]) else ""
    more = f", ... ({len(shown)} in all)" if len(shown) > limit else ""
    return f"class names{origin}: {', '.join(shown[:limit])}{more}"


def resolve_class_names(
    given: Union[None, str, Path, Sequence[str]],
    path: Optional[Path],
    from_checkpoint: Optional[Sequence[str]],
    num_classes: int,
) -> List[str]:
    """Names indexed by label id, background first: ``given``, a sidecar JSON, the checkpoint, the COCO names for
    91 or 81 classes, else class_<id>."""
    origin = "class_names"
    names: Optional[Sequence[str]] = None
    if isinstance(given, (str, Path)):
        names, origin = read_names_json(Path(given)), str(given)
    elif given is not None:
        names = list(given)
    elif path is not None:
        for sidecar in (Path(str(path) + ".classes.json"), path.with_suffix(".classes.json")):
            if sidecar.is_file():
                names, origin = read_names_json(sidecar), str(sidecar)
                break
    if names is None and from_checkpoint is not None:
        names, origin = from_checkpoint, "the checkpoint's class_names"
    if names is None:
        return coco_names(num_classes) or ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    names = [str(n) for n in names]
    if len(names) == num_classes - 1:  # given without the background
        names = ["__background__"] + names
    if len(names) != num_classes:
        raise CheckpointError(
            f"{origin} lists {len(names)} names but the model has {num_classes} classes including the background "
            f"({num_classes - 1} without it)"
        )
    return names


def read_names_json(path: Path) -> List[str]:
    """A JSON list of class names (or ``{"class_names": [...]}`` / ``{"classes": [...]}``), index = label id."""
    if not path.is_file():
        raise CheckpointError(f"class names file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read class names from {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("class_names", data.get("classes"))
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise CheckpointError(
            f'{path} must hold a JSON list of class names (or {{"class_names": [...]}}), index = label id'
        )
    return data
