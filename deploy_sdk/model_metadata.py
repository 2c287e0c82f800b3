"""The metadata an exported model carries: the contract between `conversion` (writer) and the runtime (reader).

It is stored in the ONNX file's ``metadata_props`` as one entry per field, each value JSON-encoded, so that
``onnx`` tools show it readably; a TensorRT engine carries the same fields (see ``deploy_sdk.engine_file``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from deploy_sdk.errors import EngineError
from deploy_sdk.version import __version__

__all__ = ["ModelMetadata", "METADATA_FORMAT"]

# Bumped whenever a field changes meaning; readers refuse a newer format than they know.
METADATA_FORMAT = 1
_PREFIX = "maskrcnn_deploy."


@dataclass
class ModelMetadata:
    """What a runtime needs to know about an exported model besides the graph itself.

    ``class_names[i]`` is the name of label id ``i``; id 0 is the background and never appears in outputs.
    ``image_mean``/``image_std`` are in 0–1 units as torchvision stores them (the graph multiplies by 255).
    ``fixed_height``/``fixed_width`` are set when the graph was exported for one input size, else ``None``
    (then H and W are dynamic multiples of ``size_divisible``).
    """

    class_names: List[str]
    min_size: int
    max_size: int
    image_mean: List[float]
    image_std: List[float]
    score_threshold: float
    nms_threshold: float
    detections_per_image: int
    mask_size: int = 28
    size_divisible: int = 32
    fixed_height: Optional[int] = None
    fixed_width: Optional[int] = None
    arch: str = "unknown"
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    sdk_version: str = __version__
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.class_names)

    def to_props(self) -> Dict[str, str]:
        """Flatten to string key/value pairs (ONNX ``metadata_props``)."""
        props = {_PREFIX + "format": str(METADATA_FORMAT)}
        for f in dataclasses.fields(self):
            props[_PREFIX + f.name] = json.dumps(getattr(self, f.name))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Inverse of :meth:`to_props`; ``source`` names the file in error messages.

        Raises :class:`EngineError` naming the field when the metadata is missing, of a newer format, not JSON, or
        does not follow the schema (see :meth:`from_dict`). Unknown fields are ignored (written by a newer SDK of
        the same format).
        """
        if not isinstance(props, Mapping):
            raise EngineError(
                f"{source}: model metadata must be a mapping of field names to JSON strings, got a "
                f"{type(props).__name__}; the file is corrupt or was modified; re-export the model."
            )
        fmt = props.get(_PREFIX + "format")
        if fmt is None:
            raise EngineError(
                f"{source} carries no maskrcnn-deploy metadata; it was not exported by 'maskrcnn-deploy export'. "
                "Export the checkpoint with this SDK first."
            )
        version = _parse_format(fmt, source)
        if version > METADATA_FORMAT:
            raise EngineError(
                f"{source} has metadata format {version}, newer than this SDK ({__version__}) understands "
                f"({METADATA_FORMAT}); upgrade maskrcnn-deploy."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values: Dict[str, Any] = {}
        for key, raw in props.items():
            if not isinstance(key, str) or not key.startswith(_PREFIX) or key == _PREFIX + "format":
                continue
            name = key[len(_PREFIX) :]
            if name not in known:
                continue
            if not isinstance(raw, str):
                raise EngineError(
                    f"{source}: metadata field '{name}' must be stored as a JSON string, got a "
                    f"{type(raw).__name__}; the file is corrupt or was modified; re-export the model."
                )
            try:
                values[name] = json.loads(raw)
            except ValueError as exc:
                raise EngineError(
                    f"{source}: metadata field '{name}' is not valid JSON ({exc}): {raw[:80]!r}; the file is corrupt "
                    "or was modified; re-export the model."
                ) from exc
        return cls.from_dict(values, source)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model") -> ModelMetadata:
        """Build from decoded field values after checking them against the schema: the one place metadata read
        from a file (ONNX ``metadata_props``, an engine header, JSON) is validated.

        Raises :class:`EngineError` naming the field and what it must be (e.g. ``min_size`` a positive integer,
        ``class_names`` a non-empty list of strings, ``image_mean`` three finite numbers), or listing the missing
        required fields.
        """
        if not isinstance(values, Mapping):
            raise EngineError(f"{source}: model metadata must be a JSON object, got a {type(values).__name__}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise EngineError(f"{source} metadata lacks the fields {missing}; re-export the model.")
        known = {f.name for f in dataclasses.fields(cls)}
        checked: Dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                continue
            problem = _SCHEMA[name](value)
            if problem:
                raise EngineError(
                    f"{source}: metadata field '{name}' must be {problem}, got {_short(value)}; the file is corrupt "
                    "or was modified; re-export the model."
                )
            checked[name] = list(value) if isinstance(value, list) else value
        return cls(**checked)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata JSON") -> ModelMetadata:
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise EngineError(f"{source} is not valid JSON ({exc})") from exc
        return cls.from_dict(values, source)


def _parse_format(fmt: Any, source: str) -> int:
    text = fmt.strip() if isinstance(fmt, str) else None
    if text is None or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise EngineError(
            f"{source}: metadata field 'format' must be a positive integer (this SDK writes {METADATA_FORMAT}), got "
            f"{_short(fmt)}; the file is corrupt or was modified; re-export the model."
        )
    return int(text)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _positive_int(value: Any) -> Optional[str]:
    return None if _is_int(value) and value >= 1 else "a positive integer"


def _optional_positive_int(value: Any) -> Optional[str]:
    return None if value is None or (_is_int(value) and value >= 1) else "a positive integer or null"


def _fraction(value: Any) -> Optional[str]:
    return None if _is_number(value) and 0.0 <= value <= 1.0 else "a number in 0..1"


def _string(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else "a string"


def _class_names(value: Any) -> Optional[str]:
    ok = isinstance(value, list) and len(value) >= 1 and all(isinstance(v, str) for v in value)
    return None if ok else "a non-empty list of strings (the background first)"


def _rgb_numbers(positive: bool):
    def check(value: Any) -> Optional[str]:
        ok = isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)
        if ok and positive:
            ok = all(v > 0 for v in value)
        return None if ok else f"a list of 3 finite {'positive ' if positive else ''}numbers (one per RGB channel)"

    return check


def _mapping(value: Any) -> Optional[str]:
    return None if isinstance(value, dict) else "a JSON object"


# What each field must be, as a check returning None (fine) or a description of what was expected.
_SCHEMA = {
    "class_names": _class_names,
    "min_size": _positive_int,
    "max_size": _positive_int,
    "image_mean": _rgb_numbers(positive=False),
    "image_std": _rgb_numbers(positive=True),
    "score_threshold": _fraction,
    "nms_threshold": _fraction,
    "detections_per_image": _positive_int,
    "mask_size": _positive_int,
    "size_divisible": _positive_int,
    "fixed_height": _optional_positive_int,
    "fixed_width": _optional_positive_int,
    "arch": _string,
    "precision": _string,
    "checkpoint_sha256": _string,
    "sdk_version": _string,
    "extra": _mapping,
}
