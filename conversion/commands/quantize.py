"""`maskrcnn-deploy quantize model.onnx --calib DIR -o model.int8.onnx`: post-training INT8 with explicit Q/DQ."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deploy_sdk.conversion.quantize import CALIBRATION_METHODS

    parser.add_argument("model", type=Path, help="fp32 deployment ONNX graph from 'maskrcnn-deploy export'")
    parser.add_argument("--calib", type=Path, required=True, help="directory of calibration images (not eval images)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="INT8 Q/DQ ONNX graph to write")
    parser.add_argument("--num-images", type=int, default=100, help="calibration images to use (default 100)")
    parser.add_argument(
        "--method",
        choices=sorted(CALIBRATION_METHODS),
        default="minmax",
        help="activation range calibration (default minmax)",
    )
    parser.add_argument(
        "--target",
        choices=["tensorrt", "cpu"],
        default="tensorrt",
        help="tensorrt: symmetric int8 activations, builds with TensorRT and runs on ONNX Runtime (default); "
        "cpu: uint8 activations, fastest on ONNX Runtime CPU, not buildable by TensorRT",
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="NODE", help="node name to keep in float (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import check_output_file
    from deploy_sdk.conversion.quantize import quantize_int8

    check_output_file(args.output, suffixes=(".onnx",), what="-o/--output")  # before the calibration run
    report = quantize_int8(
        args.model,
        args.output,
        args.calib,
        num_images=args.num_images,
        method=args.method,
        exclude_nodes=args.exclude,
        target=args.target,
    )
    print(
        f"wrote {args.output}: {len(report.quantized_nodes)} layers INT8, calibrated on "
        f"{report.num_calibration_images} images ({report.method}), for {report.target}"
    )
    return 0
