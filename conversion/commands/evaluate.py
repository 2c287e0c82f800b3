"""`maskrcnn-deploy eval MODEL --images DIR --annotations FILE`: COCO box and mask AP.

MODEL is a checkpoint (run by the PyTorch reference, i.e. torchvision itself) or an exported ``.onnx`` /
TensorRT ``.engine``/``.plan`` file (run by ``deploy_sdk.Predictor``; ``--backend openvino`` runs a ``.onnx`` file
on OpenVINO instead of ONNX Runtime).

Part of the conversion layer because a checkpoint is evaluated with the conversion's PyTorch reference; torch is
imported only for a checkpoint, so evaluating an exported file works on a runtime-only install.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any, Dict

from deploy_sdk.commands.options import positive_int
from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments, load_checkpoint_from_args
from deploy_sdk.errors import CheckpointError, DeploySdkError

_EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", type=Path, help="checkpoint (.pth/.pt/.safetensors) or exported model (.onnx/.engine/.plan)"
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of the images named in --annotations")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO annotation file (instances)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per predict call (default 4)")
    parser.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "openvino", "tensorrt"],
        help="Predictor backend for an exported model (default: from the suffix, .onnx -> onnxruntime)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device: of the PyTorch reference for a checkpoint, of --backend for an exported model (default cpu)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads of the backend")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_checkpoint_arguments(parser)


def make_predictor(args: argparse.Namespace):
    """The object whose ``predict(images) -> list[Detections]`` is evaluated."""
    path: Path = args.model
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if path.suffix.lower() in _EXPORTED_SUFFIXES:
        if importlib.util.find_spec("deploy_sdk.predictor") is None:
            raise DeploySdkError(
                f"evaluating {path.suffix} files needs deploy_sdk.Predictor, which this installation lacks; "
                "evaluate the checkpoint instead"
            )
        from deploy_sdk import Predictor

        options: Dict[str, Any] = {"threads": args.threads}
        if args.backend != "auto":
            options.update(backend=args.backend, device=args.device)
        return Predictor(path, **options)
    if args.backend != "auto":
        raise DeploySdkError(
            f"--backend {args.backend} runs an exported model; {path} is a checkpoint, which the "
            "PyTorch reference evaluates (export it first: maskrcnn-deploy export)"
        )
    from deploy_sdk.conversion.reference import checkpoint_predictor

    return checkpoint_predictor(load_checkpoint_from_args(path, args), device=args.device)


def format_table(metrics: Dict[str, Any]) -> str:
    rows = [("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75")]
    lines = [f"{'metric':<8}{'box':>8}{'mask':>8}"]
    lines += [f"{label:<8}{metrics[f'box_{k}']:>8.3f}{metrics[f'mask_{k}']:>8.3f}" for label, k in rows]
    for label, size in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        box, mask = metrics.get(f"box_ap_{size}"), metrics.get(f"mask_ap_{size}")
        if box is not None and mask is not None:
            lines.append(f"{label:<8}{box:>8.3f}{mask:>8.3f}")
    lines.append(
        f"{metrics['num_images']} images, {metrics['num_detections']} detections, "
        f"{metrics['images_per_second']:.2f} images/s (prediction only)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import atomic_path, check_output_file
    from deploy_sdk.evaluation import evaluate, read_annotations

    # Check the data set and the output path before the (slow) model load, so a typo fails at once.
    if not args.annotations.is_file():
        raise DeploySdkError(f"annotation file not found: {args.annotations}")
    if not args.images.is_dir():
        raise DeploySdkError(f"image directory not found: {args.images}")
    if args.json is not None:
        check_output_file(args.json, what="--json")
    annotations = read_annotations(args.annotations)
    predictor = make_predictor(args)
    metrics = evaluate(
        predictor,
        args.images,
        args.annotations,
        batch_size=args.batch_size,
        max_images=args.max_images,
        progress=not args.quiet,
        annotations=annotations,
    )
    metrics["model"] = str(args.model)
    print(format_table(metrics))
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
