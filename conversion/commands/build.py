"""`maskrcnn-deploy build MODEL.onnx -o model.engine`: a TensorRT engine with one optimization profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy_sdk.backends.tensorrt import import_tensorrt

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="deployment ONNX graph (fp32, fp16 or INT8 Q/DQ)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="engine file to write")
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts (default 1)")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for (default: min)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch (default: opt)")
    parser.add_argument("--min-shape", default=None, metavar="HxW", help="smallest padded canvas (default 32x32)")
    parser.add_argument("--opt-shape", default=None, metavar="HxW", help="canvas TensorRT tunes for (default: max)")
    parser.add_argument(
        "--max-shape", default=None, metavar="HxW", help="largest padded canvas (default: the model's max size)"
    )
    parser.add_argument("--timing-cache", type=Path, default=None, help="read and update this timing-cache file")
    parser.add_argument("--workspace", type=float, default=None, metavar="GB", help="workspace memory limit in GiB")
    parser.add_argument("--plugin", type=Path, default=None, help="RoIAlign plugin library (default: the SDK's)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def run(args: argparse.Namespace) -> int:
    import_tensorrt("maskrcnn-deploy build")  # before anything heavy is imported

    from deploy_sdk.atomic_file import check_output_file
    from deploy_sdk.conversion.tensorrt_build import BuildOptions, ProfileSpec, build_engine, parse_hw

    check_output_file(args.output, what="-o/--output")  # before the (minutes long) build
    if args.timing_cache is not None:
        check_output_file(args.timing_cache, what="--timing-cache")
    spec = ProfileSpec(
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        min_shape=parse_hw(args.min_shape) if args.min_shape else None,
        opt_shape=parse_hw(args.opt_shape) if args.opt_shape else None,
        max_shape=parse_hw(args.max_shape) if args.max_shape else None,
    )
    options = BuildOptions(
        profile=spec,
        workspace_gb=args.workspace,
        timing_cache=args.timing_cache,
        plugin_library=args.plugin,
        verbose=args.verbose,
    )
    header = build_engine(args.model, args.output, options, out=sys.stderr)
    print(
        f"wrote {args.output}: {header.engine_size / 2**20:.1f} MiB, TensorRT {header.tensorrt_version}, "
        f"{header.gpu}, precision {header.metadata.precision}"
    )
    return 0
