"""What a model file is, from its first bytes (then its name): an ONNX graph, an engine, or a checkpoint.

The commands that take "any model" (``inspect``, ``check A --against B``, ``convert``) decide with this which
loader to use, so a file named ``model.bin`` that holds an ONNX graph is still read as one. Runtime layer: no
torch, no onnx; reads at most a few hundred bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["ONNX", "ENGINE", "CHECKPOINT", "model_kind"]

ONNX = "onnx"
ENGINE = "engine"
CHECKPOINT = "checkpoint"

_ENGINE_MAGIC = b"MRCNNTRT"  # deploy_sdk.engine_file.MAGIC (not imported: that module imports subprocess & co.)
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def model_kind(path: Union[str, os.PathLike[str]]) -> str:
    """:data:`ONNX`, :data:`ENGINE` or :data:`CHECKPOINT` for an existing file ``path``.

    An engine written by ``maskrcnn-deploy build`` starts with its magic; an ONNX ModelProto with field 1
    (``ir_version``, a varint) and names its producer or domain within its first bytes; a ``.onnx`` or engine
    suffix decides for files too short or too damaged to tell. Everything else is taken for a checkpoint, whose
    loader then says precisely what is wrong with it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(_ENGINE_MAGIC):
        return ENGINE
    if len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and (b"pytorch" in head or b"onnx" in head.lower()):
        return ONNX
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX
    if suffix in _ENGINE_SUFFIXES:
        return ENGINE
    return CHECKPOINT
