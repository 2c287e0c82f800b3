"""The baselines this SDK is measured against: what a user runs without it.

- ``torch-eager``: the unmodified torchvision ``MaskRCNN`` with the same weights, in eval mode under
  ``torch.inference_mode()``, batched as torchvision batches (one padded tensor for the list of images).
- ``torchvision-onnx``: torchvision's own ONNX export of the same module (``torch.onnx.export`` of the
  ``MaskRCNN`` with a list of one ``[3, H, W]`` image, as torchvision's ``test/test_onnx.py`` does), run in ONNX
  Runtime. That graph takes one image at a time, so a batch of B images is B calls.
- ``torchvision-onnx-openvino``: the same export compiled by OpenVINO for the CPU (fp32 precision, latency hint,
  the same thread count), one image per call. OpenVINO 2026.4 reads that graph as it is.

Both return ``Detections`` with masks pasted to the image and thresholded at 0.5, exactly what this SDK's
``Predictor`` returns, so the three do the same work end to end.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from deploy_sdk.detections import Detections
from deploy_sdk.errors import require

__all__ = [
    "TorchEagerSystem",
    "TorchvisionOnnxSystem",
    "TorchvisionOpenVinoSystem",
    "export_torchvision_onnx",
    "detections_from_torchvision",
]


def detections_from_torchvision(out: dict, class_names: Sequence[str], image_size: Tuple[int, int]) -> Detections:
    """Convert one torchvision (or torchvision-ONNX) result dict to :class:`Detections`.

    out: ``boxes`` [N, 4] x1 y1 x2 y2 in original image pixels, ``scores`` [N], ``labels`` [N], ``masks``
    [N, 1, H, W] probabilities pasted to the image (torch tensors or numpy arrays).
    """

    def np_(x):
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    masks = np_(out["masks"])
    return Detections(
        boxes=np_(out["boxes"]).astype(np.float32, copy=False),
        scores=np_(out["scores"]).astype(np.float32, copy=False),
        labels=np_(out["labels"]).astype(np.int64, copy=False),
        # torchvision's paste_masks_in_image leaves probabilities; 0.5 is the threshold its own evaluation uses.
        masks=masks[:, 0] > 0.5,
        class_names=list(class_names),
        image_size=tuple(image_size),
    )


class TorchEagerSystem:
    """``torch-eager``: torchvision's MaskRCNN module, timed in its three natural pieces.

    The stages replay ``GeneralizedRCNN.forward`` in eval mode: preprocess = uint8 HWC → float CHW tensors plus
    ``model.transform`` (normalize, resize, pad, batch); inference = backbone, RPN, RoI heads; postprocess =
    ``transform.postprocess`` (boxes back to the original size, mask pasting) and conversion to ``Detections``.
    """

    load_rss_mb: Optional[float] = None  # memory its construction took (MB): see side_by_side.BenchSystem

    def __init__(self, model: Any, class_names: Sequence[str], device: str = "cpu", name: str = "torch-eager"):
        self._torch = require("torch", "convert", "the torch-eager baseline")
        self.model = model.eval().to(device)
        self.class_names = list(class_names)
        self.device = device
        self.name = name
        self.notes = "torchvision MaskRCNN, torch.inference_mode(), same weights"

    def run(self, images: Sequence[np.ndarray], clock) -> List[Detections]:
        torch = self._torch
        model = self.model
        with torch.inference_mode():
            # torch.from_numpy refuses to share a read-only array (e.g. one from PIL) without a warning; copy those.
            tensors = [
                torch.from_numpy(im if im.flags.writeable else im.copy()).to(self.device).permute(2, 0, 1).float()
                / 255.0
                for im in images
            ]
            original_sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
            batch, _ = model.transform(tensors)
            clock.lap("preprocess")
            features = model.backbone(batch.tensors)
            if isinstance(features, torch.Tensor):
                features = {"0": features}
            proposals, _ = model.rpn(batch, features)
            detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
            clock.lap("inference")
            detections = model.transform.postprocess(detections, batch.image_sizes, original_sizes)
            out = [detections_from_torchvision(d, self.class_names, s) for d, s in zip(detections, original_sizes)]
            clock.lap("postprocess")
        return out


def export_torchvision_onnx(model: Any, path: os.PathLike, sample_hw: Tuple[int, int], opset: int = 17) -> Path:
    """Export ``model`` the way torchvision's own ONNX test does; written atomically to ``path``.

    The graph input ``images`` is one ``[3, H, W]`` float32 image in 0..1 with dynamic H and W; outputs are
    ``boxes`` [N, 4] (original pixels), ``labels`` [N], ``scores`` [N], ``masks`` [N, 1, H, W] pasted
    probabilities. The graph is traced at ``sample_hw``: benchmark it on images of that size (its in-graph
    resize is only reliable near the traced aspect ratio). It uses the TorchScript-based exporter (``dynamo=False``):
    that is the path torchvision
    supports for detection models, whose data-dependent control flow the dynamo exporter does not capture.
    """
    import warnings

    from deploy_sdk.atomic_file import atomic_path

    torch = require("torch", "convert", "torchvision's ONNX export")
    # A copy: the caller's model may be on a GPU for the torch-eager baseline and must stay there.
    model = copy.deepcopy(model).eval().cpu()
    gen = torch.Generator().manual_seed(0)
    sample = torch.rand(3, int(sample_hw[0]), int(sample_hw[1]), generator=gen)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The tracer warns about every Python scalar it bakes in; torchvision documents these as expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            ([sample],),
            str(tmp),
            opset_version=opset,
            input_names=["images"],
            output_names=["boxes", "labels", "scores", "masks"],
            dynamic_axes={
                "images": [1, 2],
                "boxes": [0],
                "labels": [0],
                "scores": [0],
                "masks": [0, 1, 2, 3],
            },
            dynamo=False,
        )
    return Path(path)


class TorchvisionOnnxSystem:
    """``torchvision-onnx``: torchvision's own export in ONNX Runtime, one image per call.

    Stages: preprocess = uint8 HWC → float CHW in 0..1; inference = the session call, which also resizes,
    normalizes and pastes masks inside the graph (its pieces cannot be timed apart); postprocess = mask
    thresholding and conversion to ``Detections``.
    """

    load_rss_mb: Optional[float] = None  # memory its construction took (MB): see side_by_side.BenchSystem

    def __init__(
        self,
        onnx_path: os.PathLike,
        class_names: Sequence[str],
        threads: Optional[int] = None,
        device: str = "cpu",
        name: str = "torchvision-onnx",
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.class_names = list(class_names)
        # ONNX Runtime quietly falls back to the CPU when its CUDA provider is missing; report where it really ran.
        self.device = device if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.name = name
        self.notes = (
            "torchvision's own ONNX export in ONNX Runtime, one image per call; inference includes the "
            "in-graph resize and mask pasting"
        )

    def run(self, images: Sequence[np.ndarray], clock) -> List[Detections]:
        inputs = [np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0) for im in images]
        clock.lap("preprocess")
        raw = [self.session.run(None, {"images": x}) for x in inputs]
        clock.lap("inference")
        out = []
        for (boxes, labels, scores, masks), im in zip(raw, images):
            d = {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks}
            out.append(detections_from_torchvision(d, self.class_names, (int(im.shape[0]), int(im.shape[1]))))
        clock.lap("postprocess")
        return out


class TorchvisionOpenVinoSystem(TorchvisionOnnxSystem):
    """``torchvision-onnx-openvino``: torchvision's own export compiled by OpenVINO, one image per call.

    The graph is read from the file as it is (it has no custom operators). It computes in fp32
    (``INFERENCE_PRECISION_HINT`` f32; OpenVINO's CPU default on bf16-capable CPUs would be bf16) with the latency
    hint and ``threads`` inference threads, as this SDK's ``openvino`` backend does. Stages as for
    ``torchvision-onnx``.
    """

    def __init__(
        self,
        onnx_path: os.PathLike,
        class_names: Sequence[str],
        threads: Optional[int] = None,
        device: str = "cpu",
        name: str = "torchvision-onnx-openvino",
    ):
        ov = require("openvino", "openvino", "the torchvision-onnx-openvino baseline")
        from deploy_sdk.backends.openvino import openvino_device

        target = openvino_device(device)
        config: Dict[str, Union[str, int]] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads and target == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), target, config)
        self.request = self.compiled.create_infer_request()
        self._outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.class_names = list(class_names)
        self.device = device
        self.name = name
        self.notes = (
            "torchvision's own ONNX export compiled by OpenVINO (fp32), one image per call; inference "
            "includes the in-graph resize and mask pasting"
        )
        self.session = _OpenVinoSession(self.request, self._outputs)


class _OpenVinoSession:
    """The one method of an ONNX Runtime session that :meth:`TorchvisionOnnxSystem.run` calls, on an OpenVINO
    infer request: ``run(None, {"images": x})`` → the outputs in the graph's order (boxes, labels, scores, masks)."""

    def __init__(self, request: Any, outputs: List[str]):
        self.request = request
        self.outputs = outputs

    def run(self, _names: Any, feeds: dict) -> list:
        self.request.infer(feeds)
        return [np.array(self.request.get_tensor(name).data, copy=True) for name in self.outputs]
