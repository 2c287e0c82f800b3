"""The metadata an exported model carries: the contract between `conversion` (writer) and the runtime (reader).

It is stored in the ONNX file's ``metadata_props`` as one entry per field, each value JSON-encoded, so that
``onnx`` tools show it readably; a TensorRT engine carries the same fields (see ``deploy_sdk.engine_file``).
"""

from __future__ import annotations

import dataclasses
import json
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
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Inverse of :meth:`to_props`; ``source`` names the file in error messages."""
        fmt = props.get(_PREFIX + "format")
        if fmt is None:
            raise EngineError(
                f"{source} carries no maskrcnn-deploy metadata; it was not exported by 'maskrcnn-deploy export'. "
                "Export the checkpoint with this SDK first."
            )
        if int(fmt) > METADATA_FORMAT:
            raise EngineError(
                f"{source} has metadata format {fmt}, newer than this SDK ({__version__}) understands "
                f"({METADATA_FORMAT}); upgrade maskrcnn-deploy."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values: Dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(_PREFIX) or key == _PREFIX + "format":
                continue
            name = key[len(_PREFIX):]
            if name in known:
                values[name] = json.loads(raw)
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ]
        if missing:
            raise EngineError(f"{source} metadata lacks the fields {missing}; re-export the model.")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        return cls(**json.loads(text))
