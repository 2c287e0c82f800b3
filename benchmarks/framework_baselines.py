"""``torch-eager`` for checkpoints of other frameworks: the framework's own model, as its users run it today.

For a torchvision checkpoint ``torch-eager`` is torchvision's ``MaskRCNN`` (:mod:`deploy_sdk.benchmarks.baselines`).
For a detectron2 checkpoint it is detectron2 itself: :class:`Detectron2EagerSystem` builds the model with
detectron2's ``build_model`` from the checkpoint's ``config.yaml`` (``bench --config``) or the model zoo's
``mask_rcnn_R_50_FPN_3x.yaml``, and runs what ``DefaultPredictor`` runs (``ResizeShortestEdge``, the config's
channel order, ``model.inference``, ``detector_postprocess``), batched as one ``model(inputs)`` call.

The weights go into detectron2's model through this SDK's readers (``.pkl``: the restricted numpy unpickler;
``.pth``: ``torch.load(weights_only=True)``), not through detectron2's ``DetectionCheckpointer``, which unpickles
without restriction: benchmarking a file must not run code from it either.

detectron2 is not on the package index; it is imported from wherever the user has it (an install from source, or
its source tree on ``PYTHONPATH``). Without it, asking for ``torch-eager`` with a detectron2 checkpoint is an error
that says so.

For an MMDetection checkpoint it is MMDetection itself: :class:`MMDetEagerSystem` builds the model with mmdet's
``MODELS`` registry from the config in the checkpoint's ``meta.cfg``, read as data by this SDK's parser (mmengine's
``Config.fromstring`` would execute the text), loads the weights read by the SDK's restricted loader, and runs the
config's test pipeline (from arrays: ``LoadImageFromNDArray``) and ``model.test_step`` on the collated batch, as
MMDetection's test loop runs a batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from deploy_sdk.detections import Detections
from deploy_sdk.errors import DeploySdkError, require

__all__ = ["Detectron2EagerSystem", "MMDetEagerSystem", "framework_eager_system"]

_ZOO_CONFIG = ("COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")


def framework_eager_system(loaded: Any, checkpoint: Path, config: Optional[Path], device: str) -> Any:
    """The ``torch-eager`` system of a checkpoint whose ``loaded.source`` is not torchvision."""
    source = loaded.semantics.source
    if source == "detectron2":
        return Detectron2EagerSystem(checkpoint, loaded.num_classes, loaded.class_names, config=config, device=device)
    if source == "mmdet":
        return MMDetEagerSystem(checkpoint, loaded.class_names, device=device)
    raise DeploySdkError(f"torch-eager has no baseline for {source} checkpoints; leave it out of --compare")


def _import_detectron2() -> Any:
    try:
        import detectron2
        from detectron2.modeling import build_model  # noqa: F401
    except ImportError as exc:
        raise DeploySdkError(
            "torch-eager with a detectron2 checkpoint runs detectron2's own model, and detectron2 is not importable "
            f"({exc}); install it from source (github.com/facebookresearch/detectron2) or put its source tree on "
            "PYTHONPATH, or leave torch-eager out of --compare"
        ) from None
    import detectron2

    return detectron2


def _zoo_config_file(detectron2: Any) -> Path:
    """The model zoo's Mask R-CNN R50-FPN 3x config: the installed package's copy, else the source tree's."""
    candidates = [
        Path(detectron2.__file__).resolve().parent / "model_zoo" / "configs",
        Path(detectron2.__file__).resolve().parents[1] / "configs",
    ]
    for base in candidates:
        path = base.joinpath(*_ZOO_CONFIG)
        if path.is_file():
            return path
    raise DeploySdkError(
        f"detectron2's model-zoo config {'/'.join(_ZOO_CONFIG)} not found under "
        f"{', '.join(map(str, candidates))}; pass the checkpoint's config.yaml with --config"
    )


def _read_weights(checkpoint: Path) -> dict:
    """detectron2 parameter name -> tensor, read without running code from the file."""
    from deploy_sdk.conversion.checkpoints.files import read_file, unwrap_state_dict
    from deploy_sdk.conversion.checkpoints.numpy_pickle import numpy_to_torch, read_numpy_pickle

    if checkpoint.suffix == ".pkl":
        obj = numpy_to_torch(read_numpy_pickle(checkpoint))
    else:
        obj, _ = read_file(checkpoint)
    state, _ = unwrap_state_dict(obj, checkpoint)
    return state


def _widths_from_weights(cfg: Any, state: dict) -> None:
    """Without a config, the model zoo's R50-FPN with the depth and widths the weights have (as the SDK's importer
    reads them), so a checkpoint trained with other widths still builds."""

    def out_channels(key: str) -> Optional[int]:
        return int(state[key].shape[0]) if key in state else None

    res4_blocks = len({k.split(".")[3] for k in state if k.startswith("backbone.bottom_up.res4.")})
    depths = {6: 50, 23: 101}
    if res4_blocks in depths:
        cfg.MODEL.RESNETS.DEPTH = depths[res4_blocks]
    for key, node, field in (
        ("backbone.bottom_up.stem.conv1.weight", cfg.MODEL.RESNETS, "STEM_OUT_CHANNELS"),
        ("backbone.bottom_up.res2.0.conv3.weight", cfg.MODEL.RESNETS, "RES2_OUT_CHANNELS"),
        ("backbone.bottom_up.res2.0.conv1.weight", cfg.MODEL.RESNETS, "WIDTH_PER_GROUP"),
        ("backbone.fpn_lateral2.weight", cfg.MODEL.FPN, "OUT_CHANNELS"),
        ("roi_heads.box_head.fc1.weight", cfg.MODEL.ROI_BOX_HEAD, "FC_DIM"),
        ("roi_heads.mask_head.mask_fcn1.weight", cfg.MODEL.ROI_MASK_HEAD, "CONV_DIM"),
    ):
        value = out_channels(key)
        if value is not None:
            setattr(node, field, value)


class Detectron2EagerSystem:
    """``torch-eager`` of a detectron2 checkpoint: detectron2's ``GeneralizedRCNN`` in eval mode, no_grad.

    Stages: preprocess = channel order and ``ResizeShortestEdge`` as ``DefaultPredictor`` does, to float tensors;
    inference = ``model.inference(..., do_postprocess=False)`` (normalization, padding, backbone, RPN, RoI heads);
    postprocess = ``detector_postprocess`` (boxes to the original size, mask pasting) and ``Detections``.
    """

    load_rss_mb: Optional[float] = None  # memory its construction took (MB): see side_by_side.BenchSystem

    def __init__(
        self,
        checkpoint: Path,
        num_classes: int,
        class_names: Sequence[str],
        config: Optional[Path] = None,
        device: str = "cpu",
        name: str = "torch-eager",
    ):
        self._torch = require("torch", "convert", "the torch-eager baseline")
        detectron2 = _import_detectron2()
        from detectron2.config import get_cfg
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        state = _read_weights(Path(checkpoint))
        cfg = get_cfg()
        if config is not None:
            cfg.merge_from_file(str(config))
        else:
            cfg.merge_from_file(str(_zoo_config_file(detectron2)))
            _widths_from_weights(cfg, state)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = int(num_classes) - 1  # the SDK counts the background
        cfg.MODEL.DEVICE = device
        cfg.MODEL.WEIGHTS = ""
        cfg.freeze()
        model = build_model(cfg).eval()
        result = model.load_state_dict(state, strict=False)
        expected_missing = {k for k in result.missing_keys if k.startswith(("pixel_mean", "pixel_std"))}
        missing = [k for k in result.missing_keys if k not in expected_missing]
        if missing:
            raise DeploySdkError(
                f"detectron2's model from {config or 'the model-zoo config'} lacks weights in "
                f"{checkpoint}: {missing[:3]} ({len(missing)} in all); pass the checkpoint's "
                "config.yaml with --config"
            )
        self.model = model
        self.cfg = cfg
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.class_names = list(class_names)
        self.device = device
        self.name = name
        self.notes = (
            f"detectron2 {getattr(detectron2, '__version__', '?')} GeneralizedRCNN (DefaultPredictor's "
            "pre-processing), torch.no_grad(), same weights, one batched model call"
        )

    def run(self, images: Sequence[np.ndarray], clock) -> List[Detections]:
        torch = self._torch
        from detectron2.modeling.postprocessing import detector_postprocess

        inputs = []
        for rgb in images:
            img = rgb if self.cfg.INPUT.FORMAT == "RGB" else np.ascontiguousarray(rgb[:, :, ::-1])
            resized = self.aug.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)).to(self.device)
            inputs.append({"image": tensor, "height": int(rgb.shape[0]), "width": int(rgb.shape[1])})
        clock.lap("preprocess")
        with torch.no_grad():
            raw = self.model.inference(inputs, do_postprocess=False)
            clock.lap("inference")
            out = []
            for instances, item in zip(raw, inputs):
                inst = detector_postprocess(instances, item["height"], item["width"]).to("cpu")
                out.append(
                    Detections(
                        boxes=inst.pred_boxes.tensor.numpy().astype(np.float32),
                        scores=inst.scores.numpy().astype(np.float32),
                        labels=inst.pred_classes.numpy().astype(np.int64) + 1,  # background first in the SDK
                        masks=inst.pred_masks.numpy().astype(bool),
                        class_names=self.class_names,
                        image_size=(item["height"], item["width"]),
                    )
                )
            clock.lap("postprocess")
        return out


def _import_mmdet() -> None:
    try:
        import mmcv.ops  # noqa: F401  (mmdet's RoI heads need the full mmcv, not mmcv-lite)
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as exc:
        raise DeploySdkError(
            "torch-eager with an MMDetection checkpoint runs MMDetection's own model, and it is not importable "
            f"({exc}); pip install mmengine 'mmdet==3.3.*' and mmcv<2.2 built with its ops, or leave torch-eager "
            "out of --compare"
        ) from None


class MMDetEagerSystem:
    """``torch-eager`` of an MMDetection 3.x checkpoint: MMDetection's detector in eval mode, no_grad.

    Stages: preprocess = the config's test pipeline per image (BGR array in, as ``cv2.imread`` gives; ``Resize``
    keep-ratio, ``PackDetInputs``) and collation; inference = ``model.test_step`` (``DetDataPreprocessor``
    normalization and padding, backbone, RPN, RoI heads, rescaling and mask pasting: MMDetection does them in one
    call); postprocess = conversion to ``Detections``.
    """

    load_rss_mb: Optional[float] = None  # memory its construction took (MB): see side_by_side.BenchSystem

    def __init__(self, checkpoint: Path, class_names: Sequence[str], device: str = "cpu", name: str = "torch-eager"):
        self._torch = require("torch", "convert", "the torch-eager baseline")
        _import_mmdet()
        import mmdet
        from mmdet.registry import MODELS
        from mmdet.utils import get_test_pipeline_cfg, register_all_modules
        from mmengine.config import Config
        from mmengine.dataset import Compose

        from deploy_sdk.conversion.checkpoints.files import read_file, unwrap_state_dict
        from deploy_sdk.conversion.checkpoints.mmdet import read_config

        raw, _ = read_file(Path(checkpoint))
        meta = raw.get("meta") if isinstance(raw, dict) else None
        cfg_text = meta.get("cfg") if isinstance(meta, dict) else None
        cfg_dict = read_config(cfg_text)
        if "model" not in cfg_dict:
            raise DeploySdkError(
                f"{checkpoint} carries no readable MMDetection config (meta.cfg) to build "
                "MMDetection's own model from; leave torch-eager out of --compare"
            )
        register_all_modules()
        cfg = Config(cfg_dict)
        model = MODELS.build(cfg.model)
        state, _ = unwrap_state_dict(raw, Path(checkpoint))
        model.load_state_dict(state, strict=True)
        model.cfg = cfg
        self.model = model.to(device).eval()
        pipeline = get_test_pipeline_cfg(cfg).copy()
        pipeline[0] = dict(pipeline[0], type="mmdet.LoadImageFromNDArray")
        self.pipeline = Compose(pipeline)
        self.class_names = list(class_names)
        self.device = device
        self.name = name
        self.notes = (
            f"MMDetection {mmdet.__version__} detector from the checkpoint's config, its test pipeline, "
            "model.test_step on the batch, torch.no_grad(), same weights"
        )

    def run(self, images: Sequence[np.ndarray], clock) -> List[Detections]:
        torch = self._torch
        from mmengine.dataset import pseudo_collate

        batch = pseudo_collate(
            [self.pipeline(dict(img=np.ascontiguousarray(rgb[:, :, ::-1]), img_id=i)) for i, rgb in enumerate(images)]
        )
        clock.lap("preprocess")
        with torch.no_grad():
            samples = self.model.test_step(batch)
        clock.lap("inference")
        out = []
        for sample, rgb in zip(samples, images):
            pred = sample.pred_instances.to("cpu")
            out.append(
                Detections(
                    boxes=pred.bboxes.numpy().astype(np.float32),
                    scores=pred.scores.numpy().astype(np.float32),
                    labels=pred.labels.numpy().astype(np.int64) + 1,  # background first in the SDK
                    masks=pred.masks.numpy().astype(bool),
                    class_names=self.class_names,
                    image_size=(int(rgb.shape[0]), int(rgb.shape[1])),
                )
            )
        clock.lap("postprocess")
        return out
