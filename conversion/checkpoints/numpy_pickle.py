"""Read plain pickles of numpy arrays (detectron2's model-zoo ``.pkl`` files) without running code from the file.

A detectron2 model-zoo checkpoint is ``pickle.dump({"model": {name: numpy array, ...}, "__author__": ...})``.
Unpickling in general calls whatever callables the file names; here the unpickler resolves only the handful of
globals that rebuilding numpy arrays and plain containers needs (:data:`ALLOWED_GLOBALS`), each mapped to the
object itself, never imported by name, and refuses every other one with a ``CheckpointError`` naming it. What the
allowed globals can do: ``numpy.core.multiarray._reconstruct`` / ``numpy.ndarray`` / ``numpy.dtype`` build an
empty array or dtype whose state (shape, dtype, raw bytes) the pickle then sets; ``scalar`` builds a numpy scalar
from a dtype and bytes; ``_frombuffer`` builds an array from bytes (pickle protocol 5); ``_codecs.encode``
turns a text string into bytes (how protocol-2 pickles written by Python 3 store bytes); ``OrderedDict`` is a
dict. None of them reaches the file system, imports, or evaluates anything.

Python-2 pickles (the original Detectron's) store numpy's raw bytes as ``str``; they are read with
``encoding="latin1"``, as detectron2 itself reads them, which maps every byte to itself.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from deploy_sdk.errors import CheckpointError

__all__ = ["ALLOWED_GLOBALS", "read_numpy_pickle", "numpy_to_torch"]


def _numpy_core(name: str) -> Any:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    module = getattr(core, name.split(".")[0])
    return getattr(module, name.split(".")[1])


def _allowed() -> Dict[Tuple[str, str], Any]:
    reconstruct = _numpy_core("multiarray._reconstruct")
    scalar = _numpy_core("multiarray.scalar")
    frombuffer = _numpy_core("numeric._frombuffer")
    import _codecs

    table: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


#: (module, name) -> object: everything the restricted unpickler resolves. Anything else is refused.
ALLOWED_GLOBALS = _allowed()


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:  # torch's zip/legacy formats use persistent ids; plain pickles do not
        raise pickle.UnpicklingError("refused persistent id (not a plain pickle of numpy arrays)")


def read_numpy_pickle(path: Path) -> Any:
    """The object in a plain pickle of numpy arrays and containers (detectron2 ``.pkl``), unpickled with only
    :data:`ALLOWED_GLOBALS`; ``CheckpointError`` for a file that names anything else or is not a pickle."""
    data = Path(path).read_bytes()
    try:
        return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refused" in str(exc):
            raise CheckpointError(
                f"{path} is not a plain pickle of numpy arrays ({exc}); refusing to unpickle it, because unpickling "
                "runs code named by the file. detectron2 .pkl checkpoints hold only numpy arrays; re-save other "
                "files as a state dict (.pth) or safetensors"
            ) from None
        raise CheckpointError(f"{path} is not a readable pickle ({exc})") from None
    except Exception as exc:  # truncated or arbitrary bytes: EOFError, ValueError, KeyError, ...
        raise CheckpointError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None


def numpy_to_torch(obj: Any) -> Any:
    """Numpy arrays (and numpy scalars) in nested dicts/lists as torch tensors; everything else as it is."""
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError("the pickle holds an object array, not numbers")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_to_torch(v) for v in obj)
    return obj
