"""Training state that frameworks save next to the weights, read without running code from the file.

MMDetection 3.x checkpoints (mmengine's ``save_checkpoint``) hold ``{"meta": ..., "state_dict": ...,
"message_hub": ..., "optimizer": ..., "param_schedulers": ...}``. The message hub's logs are mmengine
``HistoryBuffer`` objects holding numpy arrays and scalars, which ``torch.load(weights_only=True)`` refuses. None of
it is needed to convert the model, so those globals are mapped to :class:`InertStandIn`, our own class that
absorbs whatever arguments and state the pickle gives it and does nothing else: no name from the file is imported
or called. Only globals under :data:`STAND_IN_PREFIXES` (and the exact names in :data:`STAND_IN_NAMES`) are mapped;
a file naming anything else (``os.system``, ``builtins.eval``, a model class, ...) is refused. An importer that
finds a stand-in where it needs data (in the state dict, in the class names) refuses the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple, Union

import torch

__all__ = ["STAND_IN_PREFIXES", "STAND_IN_NAMES", "InertStandIn", "only_training_state", "load_with_stand_ins"]

# Module prefixes of the globals mmengine training checkpoints reference outside the weights: numpy (arrays and
# scalars in logs), mmengine (HistoryBuffer, ConfigDict), mmdet/mmcv (rarely, objects in the message hub).
STAND_IN_PREFIXES = ("numpy.", "mmengine.", "mmdet.", "mmcv.")

# Exact names also replaced, never resolved: a ``HistoryBuffer`` pickles its statistics methods as
# ``getattr(HistoryBuffer, "min")`` and so on. The stand-in returns an inert object; the real getattr is never called.
# Accepted only next to at least one name under STAND_IN_PREFIXES (a framework's training state).
STAND_IN_NAMES = ("builtins.getattr",)


class InertStandIn:
    """Takes the place of a refused training-state object: accepts any construction and state, holds nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertStandIn:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<training state, not read>"


def _stand_in_call(*args: Any, **kwargs: Any) -> InertStandIn:
    return InertStandIn()


def only_training_state(names: Sequence[str]) -> bool:
    """Whether every refused global of a pickle is training state that may be replaced by a stand-in."""
    framework = [str(n) for n in names if str(n).startswith(STAND_IN_PREFIXES)]
    return bool(framework) and all(str(n).startswith(STAND_IN_PREFIXES) or str(n) in STAND_IN_NAMES for n in names)


def load_with_stand_ins(path: Path, names: Sequence[str]) -> Any:
    """``torch.load(weights_only=True)`` with each of ``names`` (all :func:`only_training_state`) mapped to a stand-in.

    Classes and functions look alike in a pickle: a name ending in a capitalized part is taken as a class
    (``NEWOBJ``/``BUILD`` create it), any other as a function (``REDUCE`` calls it); both return stand-ins.
    """
    aliases: List[Union[Callable[..., Any], Tuple[Callable[..., Any], str]]] = [
        (InertStandIn if str(n).rsplit(".", 1)[-1][:1].isupper() else _stand_in_call, str(n)) for n in names
    ]
    aliases.append((InertStandIn, f"{InertStandIn.__module__}.{InertStandIn.__qualname__}"))
    with torch.serialization.safe_globals(aliases):
        return torch.load(path, map_location="cpu", weights_only=True)
