"""Make the detectron2 test fixtures: small random-weight Mask R-CNNs built and run by detectron2 itself.

For each variant below, detectron2's own config code (``get_cfg`` + the model zoo's
``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``) builds a Mask R-CNN R50-FPN with reduced widths (the
structure is kept: 3-4-6-3 bottlenecks, FPN P2-P6, 2fc box head, 4conv mask head), the weights are initialized
as below, the checkpoint is written in detectron2's own format (model-zoo ``.pkl``: a pickle of numpy arrays
under ``"model"`` with ``"__author__"``; or ``.pth`` by ``DetectionCheckpointer.save``), a FRESH model is built
from the config and loads that file with ``DetectionCheckpointer`` (so the file is proven to be what detectron2
reads), and ``DefaultPredictor``'s path (BGR input, ``ResizeShortestEdge``, ``model.inference`` with
``detector_postprocess``) runs on the fixture images. Outputs per image: boxes, scores, detectron2 class ids and
masks (``np.packbits`` of the pasted bool masks) in ``<variant>.outputs.npz``: keys ``<i>_...`` for each image
run alone (``DefaultPredictor``), ``batch3_<i>_...`` for the three images run as one batch by ``model(inputs)``
after DefaultPredictor's preprocessing (detectron2 pads a batch to a common canvas, which changes the features
near each image's edge, so batch results are compared with batch results).

Variants:

- ``zoo_pkl``: model-zoo defaults (BGR, MSRA mean/std 1, STRIDE_IN_1X1, ROIAlignV2, 800/1333), 5 classes,
  saved as ``.pkl``; exported with no ``--config`` (the importer's model-zoo defaults).
- ``custom_pth``: a "trained elsewhere" config: RGB input with torchvision-style mean/std, STRIDE_IN_1X1 False,
  class-agnostic box regression, 3 classes, MIN_SIZE_TEST 480 / MAX_SIZE_TEST 640, score threshold 0.1, saved as
  ``.pth`` with its ``config.yaml`` (``cfg.dump()``, as training writes it).

Random weights and confident detections: detectron2's own init gives near-uniform class scores (cls_score std
0.01), so nothing would reach 0.3. Here (1) every FrozenBN gets the mean/variance of its input on a calibration
image (a data-dependent init, so activations stay O(1) through 50 layers, as in a trained network), (2) the
classifier weights are N(0, 0.25) after the box head's features are normalized the same way (fc2 bias shifted so
its outputs are centred), and the background logit's bias is raised (``BACKGROUND_BIAS``: the best of ~5000
candidates per image
would otherwise all pass 0.3), and (3) the
mask predictor's weights are scaled so mask logits have std ~3 (masks with structure, not a sea of 0.5). The
seeds are fixed; the counts of detections >= 0.3 are printed and recorded in ``manifest.json``.

Command (from the repository root; detectron2's source tree from github.com/facebookresearch/detectron2 on
PYTHONPATH, its Python dependencies installed; its _C extension is not needed on CPU)::

    PYTHONPATH=<detectron2 source tree>:. <d2 venv>/bin/python tests/reference/detectron2_reference.py \
        --out tests/fixtures/detectron2

``--full-size`` instead builds the full-width R50-FPN (random weights, same init) into ``--out`` for the
full-size comparison (not a committed fixture).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

# Background logit bias per variant: with fewer classes each foreground class gets more of the softmax, so the
# background is raised to keep a few dozen detections >= 0.3 per image rather than all 100.
BACKGROUND_BIAS = {"zoo_pkl": 0.4, "custom_pth": 1.1, "full_r50": 0.0}
FIXTURE_SIZES = [(240, 320), (300, 200), (180, 270)]  # (height, width) of the fixture images


def make_images(out: Path, sizes=FIXTURE_SIZES, seed: int = 0) -> List[np.ndarray]:
    """Synthetic RGB images (smooth background + coloured shapes) saved as PNG; returns them as uint8 arrays."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 127 // (h + w))], -1)
        im = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            else:
                draw.rectangle([x0, y0, x1, y1], fill=colour)
        path = out / f"image_{i}.png"
        im.save(path)
        images.append(np.asarray(Image.open(path).convert("RGB")))
    return images


def config_dir() -> Path:
    import detectron2

    return Path(detectron2.__file__).resolve().parents[1] / "configs"


def build_cfg(variant: str, full_size: bool = False):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(config_dir() / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if not full_size:
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    if variant == "zoo_pkl":
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    elif variant == "custom_pth":
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.INPUT.FORMAT = "RGB"
        cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
        cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
        cfg.INPUT.MIN_SIZE_TEST = 480
        cfg.INPUT.MAX_SIZE_TEST = 640
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.1
    elif variant == "full_r50":
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    else:
        raise ValueError(variant)
    cfg.freeze()
    return cfg


@torch.no_grad()
def init_weights(model, predictor_input: torch.Tensor, seed: int, background_bias: float = 0.5) -> None:
    """Data-dependent init (see the module docstring): FrozenBN stats from a calibration image, scaled heads."""
    from detectron2.layers import FrozenBatchNorm2d

    torch.manual_seed(seed)
    hooks = []

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)
        module.weight.copy_(0.5 + torch.rand_like(module.weight))
        module.bias.copy_(0.1 * torch.randn_like(module.bias))

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            hooks.append(m.register_forward_pre_hook(calibrate))
    model.eval()
    model.backbone(predictor_input)
    for h in hooks:
        h.remove()

    heads = model.roi_heads
    # Centre fc2 outputs and give them unit scale on the calibration image's proposals, then a classifier of std 0.25.
    feats_stats = {}

    def grab(module, inputs, output):
        feats_stats["x"] = output

    h = heads.box_head.fc2.register_forward_hook(grab)
    raw = predictor_input[0] * model.pixel_std + model.pixel_mean  # inference() normalizes again
    model.inference([{"image": raw}], do_postprocess=False)
    h.remove()
    x = feats_stats["x"]  # after fc2 (pre-ReLU inside the head's forward: the hook sees the linear output)
    fc2 = heads.box_head.fc2
    scale = 1.0 / (x.std(0) + 1e-3)
    fc2.weight.mul_(scale[:, None])
    fc2.bias.mul_(scale).sub_(x.mean(0) * scale)
    pred = heads.box_predictor
    pred.cls_score.weight.normal_(0.0, 0.05)
    pred.cls_score.bias.zero_()
    pred.cls_score.bias[-1] += background_bias  # background is the LAST class in detectron2
    pred.bbox_pred.weight.normal_(0.0, 0.01)
    pred.bbox_pred.bias.zero_()
    mask = heads.mask_head.predictor
    mask.weight.mul_(30.0)


def save_pkl(model, path: Path) -> None:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if k not in ("pixel_mean", "pixel_std")}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "maskrcnn-deploy detectron2_reference"}, f, protocol=2)


def run_detectron2(
    cfg, checkpoint: Path, images_rgb: List[np.ndarray], batched: bool = False
) -> List[Dict[str, np.ndarray]]:
    """A fresh model from ``cfg`` loads ``checkpoint`` with DetectionCheckpointer; DefaultPredictor runs it."""
    from detectron2.engine import DefaultPredictor

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(checkpoint)
    cfg.freeze()
    predictor = DefaultPredictor(cfg)  # builds the model and loads MODEL.WEIGHTS with DetectionCheckpointer
    if batched:
        # DefaultPredictor's per-image preprocessing, then ONE model call on the whole batch: detectron2 pads the
        # images to a common canvas (ImageList.from_tensors), as the SDK does at batch > 1.
        inputs = []
        for rgb in images_rgb:
            img = rgb if cfg.INPUT.FORMAT == "RGB" else np.ascontiguousarray(rgb[:, :, ::-1])
            resized = predictor.aug.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            inputs.append({"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]})
        with torch.no_grad():
            results = [r["instances"].to("cpu") for r in predictor.model(inputs)]
    else:
        # DefaultPredictor takes BGR, one image per call
        results = [predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"].to("cpu") for rgb in images_rgb]
    outs = []
    for rgb, inst in zip(images_rgb, results):
        masks = inst.pred_masks.numpy().astype(bool)
        outs.append(
            dict(
                boxes=inst.pred_boxes.tensor.numpy().astype(np.float32),
                scores=inst.scores.numpy().astype(np.float32),
                classes=inst.pred_classes.numpy().astype(np.int64),
                masks_packed=np.packbits(masks.reshape(len(masks), -1), axis=1),
                shape=np.array(rgb.shape[:2], dtype=np.int64),
            )
        )
    return outs


def calibration_input(cfg, rgb: np.ndarray) -> torch.Tensor:
    from detectron2.data import transforms as T

    img = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    img = aug.get_transform(img).apply_image(np.ascontiguousarray(img))
    return torch.as_tensor(img.astype("float32").transpose(2, 0, 1))[None]


def make_variant(variant: str, out: Path, images: List[np.ndarray], seed: int, full_size: bool = False) -> dict:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = build_cfg(variant, full_size)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    x = calibration_input(cfg, images[0])
    # model.backbone takes the normalized image; normalize as GeneralizedRCNN.preprocess_image does.
    x = (x - model.pixel_mean[None]) / model.pixel_std[None]
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32))  # ImageList's size_divisibility, zero padding
    init_weights(model, x, seed, background_bias=BACKGROUND_BIAS.get(variant, 0.5))
    if variant == "custom_pth":
        ckpt = out / f"{variant}.pth"
        DetectionCheckpointer(model, save_dir=str(out)).save(variant)  # writes <out>/custom_pth.pth
        (out / "last_checkpoint").unlink(missing_ok=True)
        (out / f"{variant}.config.yaml").write_text(cfg.dump())
    else:
        ckpt = out / f"{variant}.pkl"
        save_pkl(model, ckpt)
    outputs = run_detectron2(cfg, ckpt, images)
    flat = {}
    for i, o in enumerate(outputs):
        for k, v in o.items():
            flat[f"{i}_{k}"] = v
    # The same images as one batch (mixed sizes on one padded canvas): keys batch3_* for the fixtures, batch2_* for
    # the full-size pair.
    for i, o in enumerate(run_detectron2(cfg, ckpt, images, batched=True)):
        for k, v in o.items():
            flat[f"batch{len(images)}_{i}_{k}"] = v
    np.savez_compressed(out / f"{variant}.outputs.npz", **flat)
    counts = [int((o["scores"] >= 0.3).sum()) for o in outputs]
    print(
        f"{variant}: {ckpt.name} {ckpt.stat().st_size / 2**20:.2f} MiB; detections >= 0.3 per image: {counts}; "
        f"all: {[len(o['scores']) for o in outputs]}"
    )
    return {
        "checkpoint": ckpt.name,
        "num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        "seed": seed,
        "detections_ge_0.3": counts,
        "images": [f"image_{i}.png" for i in range(len(images))],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/detectron2"))
    parser.add_argument("--full-size", action="store_true", help="full-width R50-FPN (80 classes), not a fixture")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    if args.full_size:
        images = make_images(args.out, sizes=[(480, 640), (600, 400)], seed=1)
        info = make_variant("full_r50", args.out, images, seed=3, full_size=True)
        (args.out / "manifest.json").write_text(json.dumps({"full_r50": info}, indent=2))
        return 0
    images = make_images(args.out)
    manifest = {
        "command": "PYTHONPATH=<detectron2 source tree>:. python tests/reference/detectron2_reference.py --out "
        "tests/fixtures/detectron2",
        "zoo_pkl": make_variant("zoo_pkl", args.out, images, seed=1),
        "custom_pth": make_variant("custom_pth", args.out, images, seed=2),
    }
    import detectron2

    manifest["detectron2_version"] = getattr(detectron2, "__version__", "unknown")
    manifest["torch_version"] = torch.__version__
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
