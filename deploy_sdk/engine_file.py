"""The `.engine` container: a serialized TensorRT engine plus what the runtime must know to trust it.

A bare TensorRT plan says nothing about the model it computes, and it crashes or fails obscurely when opened by
another TensorRT version or on another GPU. This container wraps the plan with a JSON header:

```
offset 0   8 bytes   magic  b"MRCNNTRT"
offset 8   uint32    container format (little endian), see ENGINE_FILE_FORMAT
offset 12  uint64    header length in bytes (little endian)
offset 20  header    UTF-8 JSON: model metadata (the ONNX metadata_props, unchanged), TensorRT version, GPU name,
                     compute capability, SDK version, optimization profile, engine size and SHA-256
then       engine    the serialized TensorRT engine, exactly as IBuilder.build_serialized_network returned it
```

The header comes first so the runtime can check compatibility before it reads (and before TensorRT sees) a plan of
hundreds of megabytes. Written by `maskrcnn-deploy build` (deploy_sdk.conversion.tensorrt_build); read and checked by
the
runtime's `tensorrt` backend with :func:`read_engine_file` and :func:`check_engine_compatible`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.errors import EngineError
from deploy_sdk.model_metadata import ModelMetadata
from deploy_sdk.version import __version__

__all__ = [
    "ENGINE_FILE_FORMAT",
    "EngineHeader",
    "GpuIdentity",
    "write_engine_file",
    "read_engine_file",
    "read_engine_header",
    "check_engine_compatible",
    "current_gpu",
]

MAGIC = b"MRCNNTRT"
# Bumped when the layout or the meaning of a header field changes; readers refuse newer formats.
ENGINE_FILE_FORMAT = 1
_PREAMBLE = struct.Struct("<8sIQ")
# A header is a few kilobytes; anything far larger means the file is not ours or is corrupt.
_MAX_HEADER_BYTES = 16 * 1024 * 1024

_REBUILD = "rebuild the engine on this machine with: maskrcnn-deploy build MODEL.onnx -o MODEL.engine"


@dataclass(frozen=True)
class GpuIdentity:
    """A GPU as an engine depends on it: marketing name and CUDA compute capability ("major.minor", e.g. "9.0")."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


@dataclass
class EngineHeader:
    """Everything in an engine file except the plan itself.

    ``profile`` maps each input name to ``{"min": shape, "opt": shape, "max": shape}`` (lists of ints), the one
    optimization profile the engine was built with; e.g. ``images`` ``[B, 3, H, W]`` and ``image_sizes`` ``[B, 2]``.
    """

    metadata: ModelMetadata
    tensorrt_version: str
    gpu: GpuIdentity
    profile: Dict[str, Dict[str, List[int]]] = field(default_factory=dict)
    sdk_version: str = __version__
    created_utc: str = ""
    engine_size: int = 0
    engine_sha256: str = ""

    def to_json_dict(self) -> Dict[str, Any]:
        return {
            "format": ENGINE_FILE_FORMAT,
            "metadata_props": self.metadata.to_props(),
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "profile": self.profile,
            "sdk_version": self.sdk_version,
            "created_utc": self.created_utc,
            "engine_size": self.engine_size,
            "engine_sha256": self.engine_sha256,
        }

    @classmethod
    def from_json_dict(cls, data: Dict[str, Any], source: str) -> EngineHeader:
        """Parse a decoded header; :class:`EngineError` naming the field for a missing or malformed one. The model
        metadata is validated by :meth:`ModelMetadata.from_props` (the same check as for ONNX files)."""
        if not isinstance(data, dict):
            raise EngineError(f"{source}: engine header must be a JSON object, got a {type(data).__name__}; {_REBUILD}")
        if "metadata_props" in data and not isinstance(data["metadata_props"], dict):
            raise EngineError(
                f"{source}: engine header field 'metadata_props' must be a JSON object of metadata fields, got a "
                f"{type(data['metadata_props']).__name__}; the file is corrupt or was modified; {_REBUILD}"
            )
        profile = data.get("profile") or {}
        if not isinstance(profile, dict) or not all(isinstance(v, dict) for v in profile.values()):
            raise EngineError(
                f"{source}: engine header field 'profile' must map input names to {{min, opt, max}} shapes, got "
                f"{profile!r:.80}; {_REBUILD}"
            )
        size = data.get("engine_size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise EngineError(
                f"{source}: engine header field 'engine_size' must be a non-negative integer, got {size!r:.80}; "
                f"{_REBUILD}"
            )
        try:
            return cls(
                metadata=ModelMetadata.from_props(data["metadata_props"], source=source),
                tensorrt_version=str(data["tensorrt_version"]),
                gpu=GpuIdentity(str(data["gpu_name"]), str(data["compute_capability"])),
                profile=dict(profile),
                sdk_version=str(data.get("sdk_version", "")),
                created_utc=str(data.get("created_utc", "")),
                engine_size=int(data["engine_size"]),
                engine_sha256=str(data["engine_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"{source}: engine header is incomplete ({exc!r}); {_REBUILD}") from exc


def write_engine_file(path: Union[str, os.PathLike], engine: bytes, header: EngineHeader) -> EngineHeader:
    """Write ``engine`` (serialized TensorRT plan bytes) with ``header`` to ``path`` atomically.

    ``engine_size``, ``engine_sha256`` and (if empty) ``created_utc`` are filled in here; the completed header is
    returned. A failure or Ctrl-C leaves no partial file.
    """
    engine = bytes(engine)
    if not engine:
        raise EngineError("refusing to write an empty TensorRT engine; the build did not produce a plan")
    header.engine_size = len(engine)
    header.engine_sha256 = hashlib.sha256(engine).hexdigest()
    if not header.created_utc:
        header.created_utc = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    blob = json.dumps(header.to_json_dict(), sort_keys=True).encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_PREAMBLE.pack(MAGIC, ENGINE_FILE_FORMAT, len(blob)))
            f.write(blob)
            f.write(engine)
    return header


def _read_preamble_and_header(f, source: str) -> EngineHeader:
    raw = f.read(_PREAMBLE.size)
    if len(raw) < _PREAMBLE.size or raw[:8] != MAGIC:
        raise EngineError(
            f"{source} is not a maskrcnn-deploy engine file (no '{MAGIC.decode()}' header; a bare TensorRT plan "
            f"from trtexec carries no model metadata); {_REBUILD}"
        )
    _, fmt, header_len = _PREAMBLE.unpack(raw)
    if fmt > ENGINE_FILE_FORMAT:
        raise EngineError(
            f"{source} has engine file format {fmt}, newer than this SDK ({__version__}) reads "
            f"({ENGINE_FILE_FORMAT}); upgrade maskrcnn-deploy or {_REBUILD}"
        )
    if header_len > _MAX_HEADER_BYTES:
        raise EngineError(
            f"{source}: engine header length {header_len} is implausible; the file is corrupt; {_REBUILD}"
        )
    blob = f.read(header_len)
    if len(blob) != header_len:
        raise EngineError(f"{source} is truncated inside its header; {_REBUILD}")
    try:
        data = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(
            f"{source}: engine header is not valid JSON ({exc}); the file is corrupt; {_REBUILD}"
        ) from exc
    return EngineHeader.from_json_dict(data, source)


def read_engine_header(path: Union[str, os.PathLike]) -> EngineHeader:
    """Read only the header (cheap: the plan is not loaded). Raises :class:`EngineError` on a foreign or bad file."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"engine file {path} does not exist; build one with: maskrcnn-deploy build MODEL.onnx -o {path}"
        )
    with open(path, "rb") as f:
        return _read_preamble_and_header(f, str(path))


def read_engine_file(path: Union[str, os.PathLike]) -> Tuple[EngineHeader, bytes]:
    """Read header and plan; the plan's size and SHA-256 are checked against the header.

    Returns ``(header, engine_bytes)``. Call :func:`check_engine_compatible` before deserializing the plan.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"engine file {path} does not exist; build one with: maskrcnn-deploy build MODEL.onnx -o {path}"
        )
    with open(path, "rb") as f:
        header = _read_preamble_and_header(f, str(path))
        engine = f.read()
    if len(engine) != header.engine_size:
        raise EngineError(
            f"{path} is truncated or padded: the header promises a {header.engine_size}-byte engine, "
            f"the file holds {len(engine)} bytes; {_REBUILD}"
        )
    if hashlib.sha256(engine).hexdigest() != header.engine_sha256:
        raise EngineError(f"{path}: engine bytes do not match their SHA-256 in the header (corrupt file); {_REBUILD}")
    return header, engine


def check_engine_compatible(
    header: EngineHeader,
    tensorrt_version: str,
    gpu: GpuIdentity,
    source: str = "engine",
) -> None:
    """Raise :class:`EngineError` if the engine cannot run with this TensorRT version on this GPU.

    TensorRT plans are only guaranteed to deserialize with the exact TensorRT version that built them and on a
    GPU of the same compute capability (kernels are compiled for one SM architecture). Another GPU model of the
    same compute capability usually runs the plan but with tactics timed for a different chip, so that case is
    a warning, not an error.
    """
    if header.tensorrt_version != tensorrt_version:
        raise EngineError(
            f"{source} was built with TensorRT {header.tensorrt_version} but this process has TensorRT "
            f"{tensorrt_version}; engines only load in the TensorRT version that built them; {_REBUILD}"
        )
    if header.gpu.compute_capability != gpu.compute_capability:
        raise EngineError(
            f"{source} was built for {header.gpu} but this GPU is {gpu}; an engine only runs on GPUs of the "
            f"compute capability it was built for; {_REBUILD}"
        )
    if header.gpu.name != gpu.name:
        warnings.warn(
            f"{source} was built on {header.gpu.name} and runs on {gpu.name} (same compute capability "
            f"{gpu.compute_capability}); it works, but its kernels were timed on the other GPU: for best speed, "
            f"{_REBUILD}",
            stacklevel=2,
        )


def current_gpu(device: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device ``device``.

    Asks torch when it is installed (the build machine has it), else ``nvidia-smi`` (a runtime-only install may
    have neither torch nor cuda-python). Raises :class:`EngineError` when no GPU can be seen.
    """
    try:
        import torch

        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch and torch.cuda.is_available() and device < torch.cuda.device_count():
        major, minor = torch.cuda.get_device_capability(device)
        return GpuIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        name, cap = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
        return GpuIdentity(name, cap)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise EngineError(
            f"cannot identify CUDA device {device} (torch sees no GPU and nvidia-smi failed: {exc}); "
            "TensorRT engines need an NVIDIA GPU and driver"
        ) from exc
