"""Class names of a loaded model, indexed by label id with the background first.

Where they come from, first found wins: the caller (a list, or the path of a JSON list), a sidecar
``<checkpoint>.classes.json``, the checkpoint's own ``class_names``, else ``class_<id>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

from deploy_sdk.errors import CheckpointError

__all__ = ["resolve_class_names", "read_names_json"]


def resolve_class_names(
    given: Union[None, str, Path, Sequence[str]],
    path: Optional[Path],
    from_checkpoint: Optional[Sequence[str]],
    num_classes: int,
) -> List[str]:
    """Names indexed by label id, background first: ``given``, a sidecar JSON, the checkpoint, else class_<id>."""
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
        return ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
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
            f"{path} must hold a JSON list of class names (or {{\"class_names\": [...]}}), index = label id"
        )
    return data
