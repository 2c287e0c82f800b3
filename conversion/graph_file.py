"""Reading and writing deployment ONNX files together with their metadata (the passes' common I/O).

Every pass that turns one deployment graph into another (fp16, INT8, the TensorRT preparation) reads the file,
its ``metadata_props`` as :class:`~deploy_sdk.model_metadata.ModelMetadata`, and writes the result atomically
after a full ``onnx.checker`` pass, so that a failed or interrupted conversion never leaves a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Tuple, Union

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.errors import DeploySdkError, EngineError, require
from deploy_sdk.model_metadata import ModelMetadata

__all__ = ["load_deployment_graph", "require_fp32", "write_deployment_graph"]


def load_deployment_graph(path: Union[str, os.PathLike], purpose: str) -> Tuple[Any, ModelMetadata]:
    """``(onnx.ModelProto, ModelMetadata)`` of an exported graph; clear errors for a missing or foreign file."""
    onnx = require("onnx", "convert", purpose)
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"ONNX model {path} does not exist; export one with: maskrcnn-deploy export CHECKPOINT -o {path}"
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise EngineError(f"{path} is not a readable ONNX model ({exc}); re-export it") from exc
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
    return model, metadata


def require_fp32(metadata: ModelMetadata, path: Union[str, os.PathLike], verb: str) -> None:
    """Precision passes start from the fp32 export: converting a converted graph compounds the error."""
    if metadata.precision != "fp32":
        raise DeploySdkError(f"{path} is a {metadata.precision} graph; {verb} the fp32 export instead")


def write_deployment_graph(model: Any, metadata: ModelMetadata, path: Union[str, os.PathLike]) -> None:
    """Replace ``model``'s metadata with ``metadata``, run the full ONNX checker, write ``path`` atomically."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
