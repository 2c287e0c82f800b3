"""This SDK's ``Predictor`` as a benchmarked system (``sdk-<backend>-<precision>``)."""

from __future__ import annotations

import inspect
import os
from typing import Any, List, Optional, Sequence

import numpy as np

__all__ = ["PredictorSystem", "sdk_system_name"]


def sdk_system_name(backend: str, precision: str) -> str:
    """``sdk-onnxruntime-fp32``, ``sdk-tensorrt-fp16``, ...; the ``torch`` backend runs fp32 only: ``sdk-torch``."""
    return "sdk-torch" if backend == "torch" else f"sdk-{backend}-{precision}"


class PredictorSystem:
    """Times ``Predictor.predict`` end to end (decoded images in, ``Detections`` out).

    Stage times come from what the predictor itself measured during the call (see ``_stage_times``); when it
    exposes none, the whole call is charged to ``inference`` and ``notes`` says so.
    """

    load_rss_mb: Optional[float] = None  # memory its construction took (MB): see side_by_side.BenchSystem

    def __init__(
        self,
        model: os.PathLike,
        backend: str = "auto",
        device: str = "cpu",
        batch_size: int = 1,
        threads: Optional[int] = None,
        name: Optional[str] = None,
        backend_options: Optional[dict] = None,
    ):
        from deploy_sdk import Predictor

        kwargs: dict = {"backend": backend, "device": device, "batch_size": batch_size}
        params = inspect.signature(Predictor).parameters
        for key in ("threads", "num_threads", "intra_op_num_threads"):
            if threads and key in params:
                kwargs[key] = int(threads)
                break
        if backend_options:
            kwargs["backend_options"] = dict(backend_options)
        self.predictor = Predictor(str(model), **kwargs)
        self.device = device
        meta = getattr(self.predictor, "metadata", None)
        self.precision = getattr(meta, "precision", "fp32") if meta is not None else "fp32"
        self.backend = str(getattr(self.predictor, "backend_name", None) or getattr(self.predictor, "backend", backend))
        self.metadata = meta
        self.name = name or sdk_system_name(self.backend, self.precision)
        self.notes = f"deploy_sdk.Predictor({os.path.basename(str(model))}, backend={self.backend}" + (
            f", backend_options={backend_options})" if backend_options else ")"
        )

    def run(self, images: Sequence[np.ndarray], clock) -> List[Any]:
        out = self.predictor.predict(list(images))
        stages = _stage_times(self.predictor)
        if stages:
            for name, ms in stages.items():
                clock.record(name, ms)
        else:
            clock.lap("inference")
        return out


def _stage_times(predictor: Any) -> Optional[dict]:
    times = getattr(predictor, "last_stage_times", None)
    if callable(times):
        times = times()
    return dict(times) if times else None
