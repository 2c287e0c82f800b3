"""`maskrcnn-deploy triton-repo MODEL --out DIR`: a Triton Inference Server model repository for MODEL.

``.onnx`` → ``onnxruntime_onnx``; an engine of ``maskrcnn-deploy build`` → ``tensorrt_plan`` (the bare plan, and
the RoIAlign plugin library for ``LD_PRELOAD`` / ``--backend-config``). Inputs and outputs as the graph declares
them, dynamic batching, version folder, and ``DIR/README.md`` with the server command and a client call. See
:mod:`deploy_sdk.serving.triton_repo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy_sdk.commands.options import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model: .onnx, or an .engine of maskrcnn-deploy build")
    parser.add_argument("--out", type=Path, required=True, help="repository folder (created if needed)")
    parser.add_argument("--name", default="maskrcnn", help="model name in the repository (default maskrcnn)")
    parser.add_argument("--version", type=positive_int, default=1, help="version folder (default 1)")
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        help="largest batch Triton forms (default 8; capped by an engine's profile)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=5000,
        help="dynamic batcher's longest wait to fill a batch, microseconds (default 5000)",
    )
    parser.add_argument("--instances", type=positive_int, default=1, help="model instances (default 1)")
    parser.add_argument(
        "--plugin-library",
        type=Path,
        default=None,
        help="RoIAlign plugin library to ship with an engine (default: the installed one)",
    )
    parser.add_argument(
        "--images-dtype",
        choices=["float32", "uint8"],
        default=None,
        help="an engine's images type where TensorRT is not importable to read it (default float32; "
        "uint8 for an engine built from an export --input-dtype uint8 graph)",
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.serving.triton_repo import write_triton_repository

    config = write_triton_repository(
        args.model,
        args.out,
        name=args.name,
        version=args.version,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
        plugin_library=args.plugin_library,
        images_dtype=args.images_dtype,
    )
    print(f"wrote {config} and {config.parent / str(args.version)}; client call in {args.out / 'README.md'}")
    return 0
