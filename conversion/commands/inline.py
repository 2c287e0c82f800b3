"""`maskrcnn-deploy inline model.onnx -o model.portable.onnx`: the graph with standard ONNX operators only.

Every custom-domain node (the ``MultiLevelRoIAlign`` poolers) is replaced by its model-local function body, for
ONNX runtimes that do not expand local functions (OpenVINO 2026.4 is one). The result passes the full ONNX checker
and strict shape inference and keeps the metadata. ONNX Runtime, the SDK's openvino backend (which inlines in
memory) and TensorRT (which needs the custom node for its plugin) take the exported file itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="deployment ONNX graph (fp32, fp16 or INT8) from this SDK")
    parser.add_argument("-o", "--output", type=Path, required=True, help="portable ONNX graph to write")


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import check_output_file
    from deploy_sdk.conversion.graph_passes import write_portable_graph

    check_output_file(args.output, suffixes=(".onnx",), what="-o/--output")
    expanded = write_portable_graph(args.model, args.output)
    print(
        f"wrote {args.output}: {expanded} custom-domain node(s) replaced by their function bodies; standard ONNX "
        "operators only"
    )
    return 0
