"""Serving above :class:`~deploy_sdk.Predictor`: an online service and offline batch inference on Ray, and a
Triton model repository.

The engine owns batching across requests, replicas, scheduling and restarts (Ray Serve, Ray Data, Triton); this
package owns request decoding, the model and the JSON/RLE contract of a response. Nothing here imports Ray or
the Triton client at import time: each entry point imports its engine when called, and a missing one raises
:class:`~deploy_sdk.MissingDependencyError` naming the ``serve`` extra.

- :func:`build_app` (:mod:`deploy_sdk.serving.online`): a Ray Serve application, ``POST /predict``,
  ``GET /healthz``, ``GET /metadata``; ``maskrcnn-deploy serve`` runs it.
- :func:`run_batch_job` (:mod:`deploy_sdk.serving.offline`): Ray Data over a folder, glob or manifest, sharded and
  resumable COCO results; ``maskrcnn-deploy batch`` runs it.
- :func:`write_triton_repository` (:mod:`deploy_sdk.serving.triton_repo`): ``config.pbtxt``, version folder and
  client README; ``maskrcnn-deploy triton-repo`` runs it.
- :mod:`deploy_sdk.serving.codec`: request bodies to images, :class:`~deploy_sdk.Detections` to JSON (standard
  library, numpy and Pillow only).
"""

from __future__ import annotations

__all__ = ["build_app", "run_batch_job", "write_triton_repository", "detections_to_json", "RequestError"]

_LAZY = {
    "build_app": "deploy_sdk.serving.online",
    "run_batch_job": "deploy_sdk.serving.offline",
    "write_triton_repository": "deploy_sdk.serving.triton_repo",
    "detections_to_json": "deploy_sdk.serving.codec",
    "RequestError": "deploy_sdk.serving.codec",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deploy_sdk.serving' has no attribute {name!r}")
