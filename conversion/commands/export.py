"""`maskrcnn-deploy export`: checkpoint -> one deployment ONNX graph (dynamic batch; dynamic or fixed H/W)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments
from deploy_sdk.conversion.export_options import DEFAULT_OPSET, check_export_options

__all__ = ["add_arguments", "run", "require_convert_extra"]

# What export needs beyond the runtime install; all come with the 'convert' extra.
_CONVERT_PACKAGES = ("torch", "torchvision", "onnx")


def require_convert_extra(purpose: str) -> None:
    """:class:`MissingDependencyError` naming the ``convert`` extra when torch, torchvision or onnx is not
    installed; found by name (``importlib.util.find_spec``), nothing is imported."""
    import importlib.util

    from deploy_sdk.errors import MissingDependencyError

    for package in _CONVERT_PACKAGES:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a broken or blocked package counts as missing
            found = False
        if not found:
            raise MissingDependencyError(package, "convert", purpose)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # On a runtime-only install `export --help` already says which extra to install (one line, no traceback);
    # torch is looked for, not imported, so the help and the option checks take no seconds.
    require_convert_extra("maskrcnn-deploy export")

    parser.add_argument("checkpoint", help="checkpoint file (.pth, .pt or .safetensors)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    add_checkpoint_arguments(parser)
    parser.add_argument("--height", type=int, default=None, help="fixed input height (multiple of 32)")
    parser.add_argument("--width", type=int, default=None, help="fixed input width (multiple of 32)")
    parser.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default 100)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--input-dtype",
        choices=["float32", "uint8"],
        default="float32",
        help="type of the graph's 'images' input (default float32). uint8 takes a quarter of the bytes per "
        "upload (host pre-processing, GPU inference: ONNX Runtime CUDA, TensorRT with preprocess='numpy'); the "
        "resized pixels are then rounded to integers, a difference of at most half a grey level from the "
        "PyTorch model's float resize. The Predictor feeds whichever type the graph declares",
    )
    parser.add_argument(
        "--debug-outputs", action="store_true", help="also output RPN proposals and pooled box features"
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="write the portable graph: the RoIAlign nodes' functions inlined, standard ONNX operators only, for "
        "ONNX runtimes that do not expand local functions. Not for TensorRT engines (they need the custom node); "
        "ONNX Runtime and the SDK's openvino backend run either form",
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import check_output_file

    # Refuse options that cannot work, and an output path that cannot be written, before the slow part (importing
    # torch, loading the checkpoint, tracing: seconds), not after it.
    check_export_options(height=args.height, width=args.width, max_detections=args.max_detections, opset=args.opset)
    check_output_file(args.output, suffixes=(".onnx",), what="-o/--output")
    from deploy_sdk.conversion.checkpoint_options import load_checkpoint_from_args
    from deploy_sdk.conversion.export import export_onnx

    print(f"loading {args.checkpoint} ...", flush=True)
    loaded = load_checkpoint_from_args(args.checkpoint, args)
    print(f"  {loaded.arch}, {loaded.num_classes} classes (incl. background)", flush=True)
    how = "given by --from" if getattr(args, "source", None) else "detected from the checkpoint's keys"
    print(f"  source: {loaded.semantics.source} ({how})", flush=True)
    from deploy_sdk.conversion.checkpoints.class_names import describe_class_names

    print(f"  {describe_class_names(loaded.class_names)}", flush=True)
    export_onnx(
        loaded,
        args.output,
        height=args.height,
        width=args.width,
        max_detections=args.max_detections,
        opset=args.opset,
        debug=args.debug_outputs,
        portable=args.portable,
        input_dtype=args.input_dtype,
        log=lambda line: print(line, flush=True),
    )
    return 0
