"""Detections, with mask probabilities, from any model file: what ``check A --against B`` and ``convert`` compare.

A *source* is one model run on batches of images:

- a torchvision checkpoint: torchvision's own ``MaskRCNN`` eval path on the same batches
  (:func:`deploy_sdk.conversion.reference.batch_reference_detections`);
- a detectron2 or MMDetection checkpoint: the deployment module in eager PyTorch (the torch backend), which
  reproduces the framework's inference where torchvision's modules cannot (its resize, box decoding, filters and
  mask paste; checked against the frameworks themselves by the importer tests). torchvision's eval path on such
  weights is not that framework's model, and the SDK cannot run the framework itself in this layer;
- an ONNX graph (fp32, fp16 or INT8 Q/DQ): ONNX Runtime through :class:`deploy_sdk.Predictor`;
- an engine: TensorRT through :class:`deploy_sdk.Predictor` (needs TensorRT and a GPU).

Every source returns one :class:`Detections` per image, boxes in original image pixels, and ``masks`` as the
float32 probabilities pasted to the image (not thresholded), so that :mod:`deploy_sdk.conversion.parity` can
compare masks only where both sides have decided (see :func:`deploy_sdk.conversion.parity.decided_mask_iou`).
Both sides see the same batches, so padding effects are the same on both; a checkpoint compared with a graph of
fixed size is padded to that graph's canvas.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from deploy_sdk.detections import Detections
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.mask_paste import paste_masks
from deploy_sdk.model_kind import CHECKPOINT, ENGINE, model_kind

__all__ = ["DetectionSource", "CheckpointSource", "GraphSource", "open_source", "compare_sources", "Comparison"]

Canvas = Optional[Tuple[int, int]]


class DetectionSource:
    """One model that turns a batch of RGB images into :class:`Detections` with probability masks."""

    path: Path
    kind: str  # deploy_sdk.model_kind: "checkpoint", "onnx" or "engine"
    label: str  # for messages: "model.fp16.onnx (ONNX Runtime, fp16)"
    class_names: List[str]
    fixed_canvas: Canvas = None  # (H, W) when the model runs at one canvas size only

    def detections(self, images: Sequence[np.ndarray], canvas: Canvas = None) -> List[Detections]:
        """One result per image of ``images`` (a list of [H, W, 3] uint8 RGB arrays, run as one batch)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class CheckpointSource(DetectionSource):
    """A checkpoint's model, each batch run as one: torchvision's eval path (:func:`batch_reference_detections`)
    for a torchvision checkpoint; for another framework's, the deployment module in eager PyTorch."""

    kind = CHECKPOINT

    def __init__(self, path: Union[str, Path], loaded_model: Any):
        self.path = Path(path)
        self.loaded = loaded_model
        self.class_names = list(loaded_model.class_names)
        framework = loaded_model.semantics.source
        self._eager: Optional[_PredictorDetections] = None
        if framework == "torchvision":
            self.label = f"{self.path.name} (PyTorch, torchvision's model)"
        else:
            from deploy_sdk.conversion.torch_backend import TorchBackend
            from deploy_sdk.predictor import Predictor

            predictor = Predictor(TorchBackend(loaded_model), mask_format="none")
            self._eager = _PredictorDetections(predictor)
            self.label = f"{self.path.name} (PyTorch, the deployment module in eager mode, {framework} semantics)"

    def detections(self, images: Sequence[np.ndarray], canvas: Canvas = None) -> List[Detections]:
        if self._eager is not None:
            # The torch backend takes any canvas: padded to a fixed-size graph's when there is one, as that graph is.
            self._eager.predictor.backend.fixed_size = canvas
            return self._eager.detections(images, canvas)
        from deploy_sdk.conversion.reference import batch_reference_detections

        return batch_reference_detections(self.loaded, images, canvas=canvas, mask_threshold=None)

    def close(self) -> None:
        if self._eager is not None:
            self._eager.predictor.close()


class _PredictorDetections:
    """A predictor's decoded results for one batch, with the masks pasted again as probabilities (not thresholded),
    from the same output and in the model's own paste mode, for the decided-pixel comparison."""

    def __init__(self, predictor: Any):
        self.predictor = predictor

    def detections(self, images: Sequence[np.ndarray], canvas: Canvas = None) -> List[Detections]:
        # The predictor's steps, one batch: prepare (resize, pad), run, decode. Its own mask pasting is off
        # (mask_format="none").
        p = self.predictor
        batch = p._prepare(list(images))
        outputs = p._infer(batch)
        results = p._postprocess(batch, outputs)
        masks = outputs["masks"]
        masks = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
        paste = str(p.metadata.extra.get("mask_paste", "torchvision"))
        for i, det in enumerate(results):
            # No score_threshold on this predictor: the results are the graph's first num_detections slots.
            det.masks = paste_masks(masks[i, : len(det)], det.boxes, det.image_size, threshold=None, mode=paste)
        return results


class GraphSource(DetectionSource):
    """An ONNX graph or an engine, run by :class:`deploy_sdk.Predictor` with its own pre- and post-processing.

    The predictor's decoded results are used as they are (boxes, scores, labels: what users get); only the masks
    are pasted here again without the threshold, from the same graph output, for the decided-pixel comparison.
    """

    def __init__(self, path: Union[str, Path], kind: str, batch_size: int = 1, device: str = "cpu"):
        from deploy_sdk.predictor import Predictor

        self.path = Path(path)
        self.kind = kind
        backend = "tensorrt" if kind == ENGINE else "onnxruntime"
        if kind == ENGINE and device == "cpu":
            device = "cuda"
        self.predictor = Predictor(str(path), backend=backend, device=device, batch_size=batch_size, mask_format="none")
        self._decoded = _PredictorDetections(self.predictor)
        meta = self.predictor.metadata
        self.class_names = list(meta.class_names)
        fixed = (meta.fixed_height, meta.fixed_width)
        self.fixed_canvas = (int(fixed[0]), int(fixed[1])) if fixed[0] and fixed[1] else None
        runtime = "TensorRT" if kind == ENGINE else "ONNX Runtime"
        self.label = f"{self.path.name} ({runtime}, {meta.precision})"

    def detections(self, images: Sequence[np.ndarray], canvas: Canvas = None) -> List[Detections]:
        return self._decoded.detections(images, canvas)

    def close(self) -> None:
        self.predictor.close()


def open_source(
    path: Union[str, Path],
    checkpoint_args: Any = None,
    batch_size: int = 1,
    device: str = "cpu",
    loaded_model: Any = None,
) -> DetectionSource:
    """The source for ``path``, by what the file is (:func:`deploy_sdk.model_kind.model_kind`).

    ``checkpoint_args``: the parsed checkpoint options (``--arch``, ``--trust-checkpoint``, ...) used when
    ``path`` is a checkpoint; ``loaded_model``: an already loaded checkpoint for ``path`` (not loaded again).
    """
    path = Path(path)
    if not path.is_file():
        raise DeploySdkError(f"model file not found: {path}")
    kind = model_kind(path)
    if kind != CHECKPOINT:
        return GraphSource(path, kind, batch_size=batch_size, device=device)
    if loaded_model is None:
        from deploy_sdk.conversion.checkpoint_options import load_checkpoint_from_args

        loaded_model = load_checkpoint_from_args(path, checkpoint_args)
    return CheckpointSource(path, loaded_model)


class Comparison:
    """Per-image parity of a candidate against a reference, and the time each side took."""

    def __init__(self, results: list, names: List[str], seconds: Tuple[float, float]):
        self.results = results
        self.names = names
        self.candidate_seconds, self.reference_seconds = seconds

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def summary(self) -> str:
        from deploy_sdk.conversion.parity import summarize

        return summarize(self.results)


def compare_sources(
    candidate: DetectionSource,
    reference: DetectionSource,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    thresholds: Any = None,
    batch_size: int = 1,
    log: Optional[Callable[[str], None]] = None,
) -> Comparison:
    """Run both sources on the same batches of ``images`` and compare each image's detections.

    Raises :class:`DeploySdkError` when the two models do not have the same classes (the labels would not mean
    the same), or when both run at fixed but different canvas sizes.
    """
    from deploy_sdk.conversion.parity import ParityThresholds, compare_detections

    thresholds = thresholds or ParityThresholds()
    if candidate.class_names != reference.class_names:
        raise DeploySdkError(
            f"{candidate.path} has classes {candidate.class_names} but {reference.path} has "
            f"{reference.class_names}; compare models made from the same checkpoint"
        )
    fixed = [s.fixed_canvas for s in (candidate, reference) if s.fixed_canvas is not None]
    if len(fixed) == 2 and fixed[0] != fixed[1]:
        raise DeploySdkError(
            f"{candidate.path} runs at {fixed[0][0]}x{fixed[0][1]} and {reference.path} at {fixed[1][0]}x"
            f"{fixed[1][1]}: padding to different canvases changes the features, so they cannot agree exactly"
        )
    canvas = fixed[0] if fixed else None
    results = []
    t_cand = t_ref = 0.0
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        t0 = time.perf_counter()
        got = candidate.detections(chunk, canvas)
        t1 = time.perf_counter()
        ref = reference.detections(chunk, canvas)
        t_ref += time.perf_counter() - t1
        t_cand += t1 - t0
        for offset, (g, r) in enumerate(zip(got, ref)):
            res = compare_detections(g, r, thresholds)
            results.append(res)
            if log is not None:
                log(f"  [{'ok' if res.ok else 'FAIL'}] {names[start + offset]}: {res.summary()}")
    return Comparison(results, list(names), (t_cand, t_ref))
