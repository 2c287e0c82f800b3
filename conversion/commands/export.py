"""`maskrcnn-deploy export`: checkpoint -> one deployment ONNX graph (dynamic batch; dynamic or fixed H/W)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from conversion.export import DEFAULT_OPSET

    parser.add_argument("checkpoint", help="checkpoint file (.pth, .pt or .safetensors)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--arch", default=None, help="architecture, when the checkpoint does not say")
    parser.add_argument("--num-classes", type=int, default=None, help="classes incl. background, if not stored")
    parser.add_argument("--height", type=int, default=None, help="fixed input height (multiple of 32)")
    parser.add_argument("--width", type=int, default=None, help="fixed input width (multiple of 32)")
    parser.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default 100)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--debug-outputs", action="store_true", help="also output RPN proposals and pooled box features"
    )


def run(args: argparse.Namespace) -> int:
    from conversion.checkpoint import load_checkpoint
    from conversion.export import export_onnx
    from deploy_sdk.errors import DeploySdkError

    if args.max_detections < 1:
        raise DeploySdkError(f"--max-detections must be at least 1, got {args.max_detections}")
    print(f"loading {args.checkpoint} ...", flush=True)
    loaded = load_checkpoint(args.checkpoint, arch=args.arch, num_classes=args.num_classes)
    print(f"  {loaded.arch}, {loaded.num_classes} classes (incl. background)", flush=True)
    export_onnx(
        loaded,
        args.output,
        height=args.height,
        width=args.width,
        max_detections=args.max_detections,
        opset=args.opset,
        debug=args.debug_outputs,
        log=lambda line: print(line, flush=True),
    )
    return 0
