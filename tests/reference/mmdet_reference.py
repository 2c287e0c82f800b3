"""Make the MMDetection fixtures: a small random-weight Mask R-CNN built by MMDetection's own config code, saved
by mmengine, and MMDetection's own inference on a few images of different sizes.

Needs MMDetection 3.3.0, mmengine and the full mmcv (with its CPU ops), which CI does not install. Command (from
the repository root, in a venv that has them):

    PYTHONPATH=. <mmdet venv>/bin/python tests/reference/mmdet_reference.py tests/fixtures/mmdet

How that venv was made (2026-12-02; Python 3.11, the repository's torch 2.14.1 / torchvision 0.29.1): ``python3.11
-m venv``, a ``.pth`` file running ``site.addsitedir`` on the repository venv's site-packages (torch, numpy, cv2,
pycocotools, the SDK), ``pip install --no-deps mmengine==0.10.7 mmdet==3.3.0 addict yapf platformdirs termcolor rich
markdown-it-py mdurl pygments scipy shapely terminaltables tqdm``, and mmcv 2.1.0 (mmdet 3.3.0 wants < 2.2.0; the
package index has its source only) built from its sdist with ``MMCV_WITH_OPS=1 MAX_JOBS=1 python setup.py
build_ext --inplace`` (``setuptools<81``; in its ``setup.py`` ``-std=c++17`` changed to ``-std=c++20``, which
torch 2.14's headers require, and ``-g0 -O1`` added to compile faster) and put on the path with a ``.pth`` file.
The CPU build took 22 minutes on 2 shared cores.

Add ``--full-size`` to build the full-width R50-FPN instead (random weights, not committed; images 800x1088, at
the test scale, and 480x640, which MMDetection resizes to 800x1067) and write its checkpoint and reference outputs
to the output folder. ``--compare`` then exports the written checkpoint with the SDK and prints how the ONNX Runtime
detections agree with MMDetection's, per image and as one batch (the issue's thresholds); the full-size figures of
the closing note came from

    PYTHONPATH=. <mmdet venv>/bin/python tests/reference/mmdet_reference.py full_r50_out --full-size --compare

What it writes to the output folder:

- ``mask_rcnn_r50_fpn_tiny.pth``: mmengine ``save_checkpoint`` of ``{"meta", "state_dict", "message_hub"}`` as its
  Runner saves them (``meta.cfg`` the config text, ``meta.dataset_meta.classes`` three names, the message hub with
  mmengine ``HistoryBuffer`` logs, which hold numpy arrays);
- ``images/*.png``: three synthetic RGB images (256x320, 256x288, 224x288). The test ``Resize`` scale is (320, 256):
  the first two are kept at their size, the third is resized by MMDetection (OpenCV bilinear on uint8, to 249x320),
  so the fixture also checks the SDK's ``mmcv_cv2`` resize mode (``deploy_sdk/resize_modes.py``);
- ``reference.npz``: per image (``i`` = 0, 1, 2) ``boxes_i`` [N, 4] (original pixels), ``scores_i``, ``labels_i``
  (MMDetection's 0-based labels), ``masks_i`` (np.packbits of the [N, H, W] bool masks, one row per detection) and
  ``mask_shape_i`` ([N, H, W]), from ``mmdet.apis.inference_detector``; and the same with the prefix ``batch3_``
  (``batch3_boxes_i``, ...) from one ``test_step`` on all three images as a batch, which MMDetection's
  ``DetDataPreprocessor`` pads to the batch's largest size (rounded up to 32): what the SDK does at batch 3.

The model: ``configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` with the same structure (ResNet-50 depth and
blocks, FPN, RPN, Shared2FC box head, 4-conv FCN mask head) at reduced widths (``base_channels`` 8, FPN 32, box FC
64, mask convs 32), 3 classes. Initialization: MMDetection's own ``init_weights``, then seeded random BN statistics
and affine terms, a wider RPN classifier and box classifier (background bias 2.5) and mask logits, so that an
untrained model still scores several detections above 0.3 (6, 6 and 2 on the three images).

``--seed`` and ``--sizes`` (e.g. ``224x288,256x240``) make other models and images, ``--style caffe`` a caffe-style
model (the stride on the 1x1 convolution, BGR input, mean [103.53, 116.28, 123.675], std 1, as MMDetection's
``*_caffe_*`` configs; the first convolution's weights scaled by 1/57.5 so that random weights see inputs of the
usual magnitude). The live test uses them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

CLASSES = ("cube", "ring", "blob")


def build_config(full_size: bool, style: str = "pytorch"):
    import mmdet
    from mmengine.config import Config

    cfg_path = Path(mmdet.__file__).parent / ".mim" / "configs" / "mask_rcnn" / "mask-rcnn_r50_fpn_1x_coco.py"
    cfg = Config.fromfile(str(cfg_path))
    m = cfg.model
    m.backbone.init_cfg = None
    m.roi_head.bbox_head.num_classes = len(CLASSES)
    m.roi_head.mask_head.num_classes = len(CLASSES)
    if style == "caffe":
        m.backbone.style = "caffe"
        m.data_preprocessor.mean = [103.53, 116.28, 123.675]
        m.data_preprocessor.std = [1.0, 1.0, 1.0]
        m.data_preprocessor.bgr_to_rgb = False
    if not full_size:
        m.backbone.base_channels = 8
        m.backbone.stem_channels = 8
        m.neck.in_channels = [32, 64, 128, 256]
        m.neck.out_channels = 32
        m.rpn_head.in_channels = 32
        m.rpn_head.feat_channels = 32
        m.roi_head.bbox_roi_extractor.out_channels = 32
        m.roi_head.mask_roi_extractor.out_channels = 32
        m.roi_head.bbox_head.in_channels = 32
        m.roi_head.bbox_head.fc_out_channels = 64
        m.roi_head.mask_head.in_channels = 32
        m.roi_head.mask_head.conv_out_channels = 32
        scale = (320, 256)
    else:
        scale = (1333, 800)
    for pipeline in (cfg.test_pipeline, cfg.test_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline):
        for step in pipeline:
            if step["type"] == "Resize":
                step["scale"] = scale
        pipeline[:] = [s for s in pipeline if s["type"] != "LoadAnnotations"]
    return cfg


def randomize(model, seed: int = 0) -> None:
    """MMDetection's own initialization (``init_weights``: Kaiming convs, zero-initialized last BN of each residual
    block, small normal heads), then seeded random BN statistics and affine terms, and a classifier and RPN with
    enough spread that an untrained model scores several detections above 0.3."""
    g = torch.Generator().manual_seed(seed)
    model.init_weights()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        rpn = model.rpn_head
        rpn.rpn_cls.weight.copy_(torch.randn(rpn.rpn_cls.weight.shape, generator=g) * 0.2)
        rpn.rpn_reg.weight.copy_(torch.randn(rpn.rpn_reg.weight.shape, generator=g) * 0.02)
        head = model.roi_head.bbox_head
        fan_in = head.fc_cls.weight.shape[1]
        head.fc_cls.weight.copy_(torch.randn(head.fc_cls.weight.shape, generator=g) * 1.0 / math.sqrt(fan_in))
        head.fc_cls.bias.zero_()
        head.fc_cls.bias[-1] = 2.5  # background is MMDetection's last class
        head.fc_reg.weight.copy_(torch.randn(head.fc_reg.weight.shape, generator=g) * 0.5 / math.sqrt(fan_in))
        mask = model.roi_head.mask_head.conv_logits
        mask.weight.copy_(torch.randn(mask.weight.shape, generator=g) * 2.0 / math.sqrt(mask.weight.shape[1]))


def make_images(folder: Path, sizes, seed: int = 7) -> list:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([128 + 60 * np.sin(xx / (9 + 4 * c) + c + i) * np.cos(yy / (13 + 3 * c)) for c in range(3)], -1)
        for _ in range(6):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 60)
            color = rng.uniform(0, 255, 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = color
        img += rng.normal(0, 6, img.shape)
        path = folder / f"image_{i}_{h}x{w}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def save_like_runner(model, cfg, path: Path) -> None:
    """The checkpoint mmengine's Runner.save_checkpoint writes (meta, state_dict, message_hub), via mmengine."""
    import time

    import mmengine
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    hub = MessageHub.get_instance("mmdet_reference")
    for it in range(3):
        hub.update_scalar("train/loss", np.float64(1.0 / (it + 1)))
        hub.update_scalar("train/lr", 0.02)
    hub.update_info("iter", 3)
    meta = dict(
        cfg=cfg.pretty_text,
        seed=0,
        experiment_name="mmdet_reference",
        time=time.strftime("%Y%m%d_%H%M%S"),
        mmengine_version=mmengine.__version__,
        epoch=1,
        iter=3,
        dataset_meta=dict(classes=CLASSES, palette=[(220, 20, 60), (119, 11, 32), (0, 0, 142)]),
    )
    checkpoint = {"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model)), "message_hub": hub.state_dict()}
    save_checkpoint(checkpoint, str(path))


def path_size(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def _packed(pred, size) -> dict:
    """One image's ``pred_instances`` as arrays (masks bit-packed, one row per detection)."""
    scores = pred.scores.numpy().astype(np.float32)
    masks = pred.masks.numpy().reshape(-1, *size)
    return {
        "boxes": pred.bboxes.numpy().astype(np.float32),
        "scores": scores,
        "labels": pred.labels.numpy().astype(np.int64),
        "masks": np.packbits(masks.reshape(masks.shape[0], -1), axis=1),
        "mask_shape": np.asarray(masks.shape, np.int64),
    }


def batch_inference(detector, paths) -> list:
    """MMDetection's inference on all images as ONE batch: the test pipeline per image, then ``test_step`` on the
    collated batch (``DetDataPreprocessor`` stacks and pads it), as its test loop runs a batch of a dataloader."""
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.dataset import Compose, pseudo_collate

    pipeline = Compose(get_test_pipeline_cfg(detector.cfg))
    batch = pseudo_collate([pipeline(dict(img_path=str(p), img_id=i)) for i, p in enumerate(paths)])
    with torch.no_grad():
        return detector.test_step(batch)


def _parse_sizes(text: str):
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--full-size", action="store_true", help="full-width R50-FPN at 1333x800 (not committed)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (images: seed + 7)")
    parser.add_argument("--sizes", type=_parse_sizes, default=None, help="image sizes HxW,HxW,...")
    parser.add_argument("--style", choices=["pytorch", "caffe"], default="pytorch", help="ResNet style")
    parser.add_argument("--compare", action="store_true", help="export with the SDK and compare on ONNX Runtime")
    args = parser.parse_args(argv)
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(args.seed)
    cfg = build_config(args.full_size, args.style)
    model = MODELS.build(cfg.model)
    randomize(model, args.seed)
    if args.style == "caffe":  # inputs in 0-255 (std 1): keep the random activations at the usual magnitude
        with torch.no_grad():
            model.backbone.conv1.weight.mul_(1 / 57.5)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "mask_rcnn_r50_fpn_full.pth" if args.full_size else "mask_rcnn_r50_fpn_tiny.pth"
    ckpt = args.out / name
    save_like_runner(model, cfg, ckpt)

    sizes = args.sizes or ([(800, 1088), (480, 640)] if args.full_size else [(256, 320), (256, 288), (224, 288)])
    images = make_images(args.out / "images", sizes, seed=args.seed + 7)
    # MMDetection's own loading of that file and its own inference (test pipeline: LoadImageFromFile, Resize,
    # PackDetInputs; DetDataPreprocessor; the model's predict path).
    # mmengine 0.10 calls torch.load without weights_only, which torch >= 2.6 turns into weights_only=True, which
    # refuses mmengine's own HistoryBuffer: let it unpickle fully, as it did before (our own file, just written),
    # for this load only.
    import os

    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        detector = init_detector(cfg, str(ckpt), device="cpu")
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    out = {}
    for i, path in enumerate(images):
        with torch.no_grad():
            result = inference_detector(detector, str(path))
        for key, value in _packed(result.pred_instances, path_size(path)).items():
            out[f"{key}_{i}"] = value
        scores = out[f"scores_{i}"]
        print(
            f"{path.name}: {len(scores)} detections, top scores {np.round(scores[:5], 3)}, "
            f"{int((scores >= 0.3).sum())} with score >= 0.3"
        )
    batched = batch_inference(detector, images)
    for i, (path, result) in enumerate(zip(images, batched)):
        for key, value in _packed(result.pred_instances, path_size(path)).items():
            out[f"batch{len(images)}_{key}_{i}"] = value
        scores = out[f"batch{len(images)}_scores_{i}"]
        print(f"batch of {len(images)}, {path.name}: top scores {np.round(scores[:5], 3)}")
    np.savez_compressed(args.out / "reference.npz", **out)
    if args.compare:
        return compare(ckpt, images, out)
    return 0


def compare(ckpt: Path, images, out: dict) -> int:
    """Export ``ckpt`` with the SDK, run it on ONNX Runtime per image and as one batch, print the agreement."""
    import time

    from PIL import Image

    from deploy_sdk import Predictor
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.export import export_onnx
    from deploy_sdk.conversion.parity import ParityThresholds, compare_detections
    from deploy_sdk.detections import Detections

    thresholds = ParityThresholds(min_score=0.3, box_iou=0.98, score_diff=0.01, mask_iou=0.95)
    onnx_path = ckpt.with_suffix(".onnx")
    start = time.perf_counter()
    export_onnx(load_checkpoint(ckpt), onnx_path, log=lambda line: None)
    print(f"exported {onnx_path} in {time.perf_counter() - start:.1f} s")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    failed = 0
    for batch, prefix in ((1, ""), (len(images), f"batch{len(images)}_")):
        with Predictor(onnx_path, batch_size=batch) as predictor:
            dets = predictor.predict(arrays)
        for i, det in enumerate(dets):
            n, h, w = (int(v) for v in out[f"{prefix}mask_shape_{i}"])
            masks = np.unpackbits(out[f"{prefix}masks_{i}"], axis=1)[:, : h * w].reshape(n, h, w).astype(bool)
            ref = Detections(
                boxes=out[f"{prefix}boxes_{i}"],
                scores=out[f"{prefix}scores_{i}"],
                labels=out[f"{prefix}labels_{i}"] + 1,
                masks=masks,
                class_names=det.class_names,
                image_size=(h, w),
            )
            result = compare_detections(det, ref, thresholds)
            failed += not result.ok
            print(
                f"batch {batch}, {images[i].name}: {result.summary()} (exact: box IoU {result.worst_box_iou:.6f}, "
                f"|dscore| {result.worst_score_diff:.2e}, mask IoU {result.worst_mask_iou:.6f})"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
