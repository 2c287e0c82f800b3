"""`maskrcnn-deploy check MODEL --against REFERENCE`: run two models (each a checkpoint, an ONNX graph or an engine)
on the same images and report, per image, how well their detections agree (deploy_sdk.conversion.parity); exit 1
beyond tolerance. ``--target tensorrt`` instead lists the nodes TensorRT's ONNX parser would refuse.

A checkpoint reference is torchvision's own eval path on batches of the same images as the graph sees
(deploy_sdk.conversion.reference.batch_reference_detections, through deploy_sdk.conversion.detection_sources).
Batches matter: torchvision pads a batch to its largest image and the convolutions see that padding, so an
image's result depends on its batch-mates; comparing equal batches isolates the export from that (inherent)
effect. ``--batch-size 1`` compares against torchvision on each image alone. A graph exported at a fixed size pads
every batch to its canvas, and the reference is padded to the same canvas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.synthetic_shapes import HELD_OUT_SEED, held_out_images

__all__ = ["add_arguments", "run"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="the model to check: an exported .onnx file (fp32, fp16 or INT8), an engine or a checkpoint"
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="MODEL",
        help="the model to compare with (the reference): a checkpoint (torchvision's model), a .onnx file (ONNX "
        "Runtime) or an engine (TensorRT), e.g. check model.fp16.onnx --against model.onnx, "
        "check model.engine --against model.onnx",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="the checkpoint the graph was exported from (the same as --against CHECKPOINT)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of images to compare on")
    src.add_argument(
        "--num-synthetic", type=int, default=None, help=f"generate N held-out synthetic images (seed {HELD_OUT_SEED})"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per graph call (default 1)")
    parser.add_argument("--min-score", type=float, default=0.3, help="detections checked: score >= this (0.3)")
    parser.add_argument("--box-iou", type=float, default=0.98, help="required box IoU of matched pairs (0.98)")
    parser.add_argument("--score-diff", type=float, default=0.01, help="allowed |score difference| (0.01)")
    parser.add_argument("--mask-iou", type=float, default=0.95, help="required pasted-mask IoU (0.95)")
    # --target tensorrt: a static check of the graph against TensorRT's ONNX parser (deploy_sdk.conversion.
    # tensorrt_support); no reference, no images, no TensorRT needed.
    parser.add_argument(
        "--target",
        choices=["tensorrt"],
        default=None,
        help="instead of comparing detections, list the nodes TensorRT's ONNX parser would refuse "
        "(the graph as the engine builder strips it); exit 1 if any",
    )
    parser.add_argument(
        "--trt-version",
        choices=["10", "11"],
        default=None,
        help="TensorRT major version for --target tensorrt (default: both)",
    )
    add_checkpoint_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.conversion.detection_sources import compare_sources, open_source
    from deploy_sdk.conversion.parity import ParityThresholds

    if getattr(args, "target", None) == "tensorrt":
        from deploy_sdk.conversion.tensorrt_support import run_check

        return run_check(args)
    if getattr(args, "trt_version", None):
        raise DeploySdkError(
            "--trt-version goes with --target tensorrt, e.g. check model.onnx --target tensorrt --trt-version 10"
        )
    if args.batch_size < 1:
        raise DeploySdkError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.against is not None and args.checkpoint is not None and args.against != args.checkpoint:
        raise DeploySdkError("give one reference: --against MODEL or --checkpoint CKPT, not both")
    against = args.against if args.against is not None else args.checkpoint
    if against is None:
        raise DeploySdkError(
            "nothing to compare with: give --against MODEL (a checkpoint, .onnx or engine), "
            "e.g. maskrcnn-deploy check model.onnx --against model.pth"
        )
    images, names = _load_images(args)
    thresholds = ParityThresholds(
        min_score=args.min_score, box_iou=args.box_iou, score_diff=args.score_diff, mask_iou=args.mask_iou
    )
    candidate = open_source(args.model, args, batch_size=args.batch_size)
    try:
        reference = open_source(against, args, batch_size=args.batch_size)
        try:
            print(
                f"comparing {candidate.label} with {reference.label} on {len(images)} image(s), "
                f"batch {args.batch_size}",
                flush=True,
            )
            comparison = compare_sources(
                candidate,
                reference,
                images,
                names,
                thresholds,
                args.batch_size,
                log=lambda line: print(line, flush=True),
            )
        finally:
            reference.close()
    finally:
        candidate.close()
    print(comparison.summary())
    print(
        f"time: {candidate.path.name} {comparison.candidate_seconds:.1f} s, {reference.path.name} "
        f"{comparison.reference_seconds:.1f} s"
    )
    return 0 if comparison.ok else 1


def _load_images(args) -> tuple:
    from deploy_sdk.preprocessing import load_image

    if args.images is not None:
        if not args.images.is_dir():
            raise DeploySdkError(f"--images {args.images} is not a folder")
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DeploySdkError(f"--images {args.images} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
        return [load_image(str(p), what=str(p)) for p in files], [p.name for p in files]
    n = 10 if args.num_synthetic is None else args.num_synthetic
    if n < 1:
        raise DeploySdkError(f"--num-synthetic must be at least 1, got {n}")
    return held_out_images(n)
