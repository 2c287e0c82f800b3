"""`maskrcnn-deploy export`: checkpoint -> one deployment ONNX graph (dynamic batch; dynamic or fixed H/W)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deploy_sdk.errors import require

    # The default opset is the exporter's, which imports torch: on a runtime-only install, `export --help` says
    # which extra to install instead of a traceback.
    require("torch", "convert", "maskrcnn-deploy export")
    from deploy_sdk.conversion.export import DEFAULT_OPSET

    parser.add_argument("checkpoint", help="checkpoint file (.pth, .pt or .safetensors)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    add_checkpoint_arguments(parser)
    parser.add_argument("--height", type=int, default=None, help="fixed input height (multiple of 32)")
    parser.add_argument("--width", type=int, default=None, help="fixed input width (multiple of 32)")
    parser.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default 100)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--debug-outputs", action="store_true", help="also output RPN proposals and pooled box features"
    )
    parser.add_argument(
        "--portable", action="store_true",
        help="write the portable graph: the RoIAlign nodes' functions inlined, standard ONNX operators only, for "
        "ONNX runtimes that do not expand local functions. Not for TensorRT engines (they need the custom node); "
        "ONNX Runtime and the SDK's openvino backend run either form",
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.conversion.checkpoint_options import load_checkpoint_from_args
    from deploy_sdk.conversion.export import export_onnx
    from deploy_sdk.atomic_file import check_output_file
    from deploy_sdk.errors import DeploySdkError

    if args.max_detections < 1:
        raise DeploySdkError(f"--max-detections must be at least 1, got {args.max_detections}")
    # Refuse an output path that cannot be written before the slow part (loading, tracing), not after it.
    check_output_file(args.output, suffixes=(".onnx",), what="-o/--output")
    print(f"loading {args.checkpoint} ...", flush=True)
    loaded = load_checkpoint_from_args(args.checkpoint, args)
    print(f"  {loaded.arch}, {loaded.num_classes} classes (incl. background)", flush=True)
    export_onnx(
        loaded,
        args.output,
        height=args.height,
        width=args.width,
        max_detections=args.max_detections,
        opset=args.opset,
        debug=args.debug_outputs,
        portable=args.portable,
        log=lambda line: print(line, flush=True),
    )
    return 0
