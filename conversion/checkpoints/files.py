"""Reading checkpoint files safely: ``.pth``/``.pt`` pickles, ``.safetensors``, trust, finiteness, sha256.

Loading never runs code from the file unless asked to: ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers (and here also
``argparse.Namespace``, which torchvision's reference training script stores) and refuses any other Python
object. A file it refuses (a whole pickled module, or anything naming a function or class) is refused with a
``CheckpointError`` that names the globals the pickle references (read from the pickle's opcodes, not by
running it), unless ``trust_checkpoint=True``: only then is it unpickled with ``weights_only=False``, which runs
whatever code the file names, and a warning says so.

``.safetensors`` files hold tensors only; their string metadata may carry settings (``arch``, ``num_classes``,
``class_names``, ``min_size``, ``max_size``) as JSON values, returned as the file's *info*.

Weights holding NaN or Inf are refused (:func:`check_finite`): every floating-point tensor is checked with
``torch.isfinite``, and the error names the offending tensors and how many values.

Nothing here knows a model family's key names: turning the tensors into a model is an importer's job (e.g.
``checkpoints.torchvision``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from deploy_sdk.atomic_file import file_sha256
from deploy_sdk.errors import CheckpointError, UnsupportedModelError

__all__ = [
    "NESTING_KEYS",
    "MAX_LISTED",
    "file_sha256",
    "read_file",
    "unwrap_state_dict",
    "check_finite",
]

# Nesting keys that training scripts commonly wrap a state dict in.
NESTING_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net")
# How many offending keys/globals an error message lists before "and N more".
MAX_LISTED = 5


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= path.stat().st_size - 8


def read_file(path: Path, trust_checkpoint: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """(object, info): the tensors/object in the file and the settings recorded with them."""
    other = _other_file_kind(path)
    if other:  # a file this SDK writes, or plain text: say what it is rather than what torch.load trips on
        raise CheckpointError(other)
    if _is_safetensors(path):
        return _read_safetensors(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} is not a valid safetensors file (bad header); is the file complete?")
    return _torch_load(path, trust_checkpoint), {}


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError for truncated files
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    info: Dict[str, Any] = {}
    for key, value in raw_meta.items():
        try:
            info[key] = json.loads(value)
        except (TypeError, ValueError):
            info[key] = value  # a plain string, as other tools write metadata
    return tensors, info


def _torch_load(path: Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; ``weights_only=False`` only when the caller trusts the file."""
    try:
        with _extra_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        safe_error: BaseException = exc
    except Exception as exc:
        # On arbitrary bytes the (safe) unpickler fails with whatever it trips on: IndexError, EOFError,
        # RuntimeError, ... All of them mean the same thing here, unless the file is a damaged checkpoint.
        raise CheckpointError(_unreadable(path, exc)) from exc

    # The safe loader refused the file. Find out what it names, from the pickle's opcodes (nothing is run).
    names = _pickled_globals(path, safe_error)
    if not names:  # not refused for naming code: the bytes are not a pickle torch can read
        raise CheckpointError(_unreadable(path, safe_error, _safe_loader_reason(safe_error))) from safe_error
    if not trust_checkpoint:
        from deploy_sdk.conversion.checkpoints.training_state import load_with_stand_ins, only_training_state

        if only_training_state(names):  # e.g. mmengine's logs next to MMDetection weights: read, never run
            try:
                return load_with_stand_ins(path, names)
            except Exception as exc:
                raise CheckpointError(_unreadable(path, exc)) from exc
        family = _other_detector_in(names)
        if family:
            raise UnsupportedModelError(
                f"{path} is a pickled torchvision {family[0]} module: this checkpoint is {family[1]}, not a Mask R-CNN"
            )
        listed = sorted(names, key=_global_rank)
        more = f" and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects, not only tensors (it references "
            f"{', '.join(listed[:MAX_LISTED])}{more}); refusing to unpickle it, because unpickling runs code named "
            "by the file. If you trust the file (e.g. a whole model saved with torch.save(model)), pass "
            "--trust-checkpoint (trust_checkpoint=True); better, re-save the weights as a state dict "
            "(torch.save(model.state_dict(), path)) or as safetensors (safetensors.torch.save_file(model.state_dict(), "
            "path))"
        ) from None

    warnings.warn(
        f"trust_checkpoint (--trust-checkpoint): unpickling {path} with torch.load(weights_only=False), which runs "
        "any code the file contains; do this only for files you trust",
        UserWarning,
        stacklevel=4,  # the caller of load_checkpoint (load_checkpoint -> read_file -> _torch_load)
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"cannot unpickle {path} ({_first_line(exc)}; safe loader said: {_safe_loader_reason(safe_error)})"
        ) from exc


def _extra_safe_globals() -> contextlib.AbstractContextManager:
    """Let the safe loader also build ``argparse.Namespace``: torchvision's reference training script saves its
    arguments as ``{"model": ..., "optimizer": ..., "args": Namespace(...)}``. The safe loader only sets data
    attributes on it (no ``__setstate__``, no code), so allowing it does not let the file run anything."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _pickled_globals(path: Path, safe_error: BaseException) -> List[str]:
    """The globals (classes, functions) a pickle refused by the safe loader references; [] when unknown.

    For a zip checkpoint, torch lists them by scanning the pickle's opcodes; for a legacy (non-zip) file, the
    safe loader's own message names the one it stopped at."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # a zip that is not a torch checkpoint, or a damaged one: fall back to the message
            pass
    return re.findall(r"\b(?:GLOBAL|Unsupported class) ([\w.]+)", str(safe_error))[:1]


# torchvision detection classes that are not Mask R-CNN, and what they are (the same families the torchvision
# importer recognizes from a state dict's keys).
_OTHER_DETECTORS = {
    "FasterRCNN": "a Faster R-CNN (boxes only, no mask head)",
    "KeypointRCNN": "a Keypoint R-CNN (keypoint head instead of a mask head)",
    "RetinaNet": "a RetinaNet detector (one-stage, no mask head)",
    "FCOS": "an FCOS detector (one-stage, no mask head)",
    "SSD": "an SSD / SSDlite detector (no RoI heads, no masks)",
}


def _other_detector_in(names: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(class, description) when a pickle's globals name a torchvision detector other than Mask R-CNN."""
    classes = {n.rsplit(".", 1)[-1] for n in names if n.startswith("torchvision.models.detection.")}
    if "MaskRCNN" in classes:
        return None
    for cls, what in _OTHER_DETECTORS.items():
        if cls in classes:
            return cls, what
    return None


def _global_rank(name: str) -> Tuple[int, str]:
    """Order in which refused globals are listed: code from outside torch/torchvision first (the suspicious
    part), then the model class, then the rest."""
    if name.split(".")[0] not in ("torch", "torchvision"):
        return 0, name
    if name.startswith("torchvision.models.detection.") and name.rsplit(".", 1)[-1] in ("MaskRCNN", *_OTHER_DETECTORS):
        return 1, name
    return 2, name


def _safe_loader_reason(exc: BaseException) -> str:
    """The useful line of torch's weights-only error (it starts with paragraphs on how to bypass the check)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if m:
        return m.group(1).strip()[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "(1)", "(2)", "Check the "))]
    return (useful or lines or [type(exc).__name__])[0][:200]


# What the first bytes of a file say it is, for files that are not checkpoints but are easily mistaken for one.
_ONNX_SUFFIXES = (".onnx",)
_ENGINE_MAGIC = b"MRCNNTRT"  # deploy_sdk.engine_file.MAGIC
_ZIP_MAGIC = b"PK\x03\x04"
_TEXT_BYTES = frozenset(range(32, 127)) | {9, 10, 13}


def _other_file_kind(path: Path) -> Optional[str]:
    """A one-line error when ``path`` is clearly not a checkpoint: an ONNX graph, an engine, a text file."""
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() in _ONNX_SUFFIXES or _looks_like_onnx(head):
        return (
            f"{path} is an ONNX file, not a checkpoint: use it with infer, eval, check or inspect; export, "
            "check --checkpoint and convert take the training checkpoint (.pth, .pt or .safetensors)"
        )
    if head.startswith(_ENGINE_MAGIC):
        return (
            f"{path} is a TensorRT engine built by maskrcnn-deploy build, not a checkpoint: use it with infer, "
            "eval or inspect; export takes the training checkpoint (.pth, .pt or .safetensors)"
        )
    if head and all(b in _TEXT_BYTES for b in head):
        first = head.decode("ascii").strip().splitlines()
        start = (first[0][:40] + ("..." if len(first[0]) > 40 else "")) if first else ""
        return (
            f"{path} is a text file (it starts with {start!r}), not a PyTorch checkpoint or safetensors file: "
            "pass the weights file (.pth, .pt or .safetensors)"
        )
    return None


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with field 1 (ir_version, a small varint) and soon names its producer or graph."""
    return (
        len(head) > 2
        and head[0] == 0x08
        and 3 <= head[1] <= 20
        and (b"pytorch" in head[:64] or b"onnx" in head[:64].lower())
    )


def _unreadable(path: Path, exc: BaseException, reason: Optional[str] = None) -> str:
    """The message for bytes torch.load cannot read: a damaged (incomplete) file when its start says checkpoint."""
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        # torch's zip checkpoints end with the archive's directory: a cut-off copy has the start but not the end.
        return (
            f"{path} is an incomplete PyTorch checkpoint ({size} bytes: a zip archive whose end is missing); "
            "the download or copy was cut off: fetch the file again"
        )
    if head[:1] == b"\x80" and (isinstance(exc, EOFError) or "truncated" in str(exc).lower()):
        return (
            f"{path} is an incomplete PyTorch checkpoint ({size} bytes: the pickle stops before its end); "
            "the download or copy was cut off: fetch the file again"
        )
    if size == 0:
        return f"{path} is empty (0 bytes), not a PyTorch checkpoint or safetensors file"
    why = reason if reason is not None else _first_sentence(exc)
    return f"{path} is not a PyTorch checkpoint or safetensors file (torch.load: {why})"


def _first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's first line, whole (never cut mid-sentence)."""
    line = _first_line(exc, limit=None)
    m = re.match(r"(.+?[.:;])(\s|$)", line)
    sentence = m.group(1).rstrip(".:;") if m else line
    return sentence if len(sentence) <= 160 else type(exc).__name__


def _first_line(exc: BaseException, limit: Optional[int] = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:limit] if limit else text[0]) if text else type(exc).__name__


def unwrap_state_dict(obj: Any, path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors of a (possibly nested) state dict, and any settings stored next to them.

    Nesting under :data:`NESTING_KEYS` (up to three deep) and the ``"module."`` prefix of ``DataParallel`` are
    removed; NaN/Inf are refused. Key names are otherwise left as saved: renaming is the importer's job."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a MaskRCNN module; "
            "save the model with torch.save(model.state_dict(), path)"
        )
    info: Dict[str, Any] = {}
    for _ in range(3):  # {"model": {"state_dict": {...}}} happens
        nested = next((k for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        info.update({k: v for k, v in obj.items() if k != nested and not isinstance(v, (Mapping, torch.Tensor))})
        obj = obj[nested]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:MAX_LISTED]))}); "
            "it is not a model checkpoint"
        )
    check_finite(tensors, path)
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors, info


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse NaN/Inf in any floating-point tensor, naming the first offending tensors and their counts."""
    bad: List[Tuple[str, int]] = []
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append((key, int(t.numel() - torch.isfinite(t).sum())))
    if not bad:
        return
    total = sum(n for _, n in bad)
    if len(bad) == 1:
        where = f"'{bad[0][0]}'"
    else:
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        where = f"{len(bad)} tensors: " + ", ".join(f"'{k}' ({n})" for k, n in bad[:MAX_LISTED]) + more
    raise CheckpointError(
        f"{path}: {total} non-finite value{'s' if total != 1 else ''} (NaN/Inf) in {where}; "
        "the weights are corrupt or training diverged"
    )
