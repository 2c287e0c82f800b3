"""`maskrcnn-deploy fp16 model.onnx -o model.fp16.onnx`: the network in fp16, detection logic kept in fp32."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="fp32 deployment ONNX graph from 'maskrcnn-deploy export'")
    parser.add_argument("-o", "--output", type=Path, required=True, help="fp16 ONNX graph to write")
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="NODE", help="node name to keep in fp32 (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import check_output_file
    from deploy_sdk.conversion.fp16 import convert_file_to_fp16

    check_output_file(args.output, suffixes=(".onnx",), what="-o/--output")
    report = convert_file_to_fp16(args.model, args.output, exclude_nodes=args.exclude)
    print(
        f"wrote {args.output}: {len(report.fp16_nodes)} nodes fp16, {report.fp16_initializers} weights stored as "
        f"fp16, {report.casts_to_fp16 + report.casts_to_fp32} casts at fp16/fp32 boundaries"
    )
    return 0
