"""`maskrcnn-deploy`: the command-line entry point.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the command being run is imported, so `maskrcnn-deploy infer` does not pay for importing torch.
Errors derived from :class:`deploy_sdk.DeploySdkError` become one line on stderr and exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional, Sequence, Tuple

from deploy_sdk.errors import DeploySdkError
from deploy_sdk.version import __version__

# (command, module, one-line help)
COMMANDS: List[Tuple[str, str, str]] = [
    ("demo", "deploy_sdk.commands.demo", "run the shipped model end to end on generated images"),
    ("data", "deploy_sdk.commands.data", "generate a synthetic instance-segmentation data set (COCO format)"),
    ("eval", "deploy_sdk.commands.evaluate", "COCO box and mask AP of a model on a COCO-format data set"),
    ("export", "conversion.commands.export", "export a checkpoint to one deployment ONNX graph"),
    ("check", "conversion.commands.check", "compare an exported ONNX graph with the PyTorch reference"),
    ("infer", "deploy_sdk.commands.infer", "run a model on images; write overlays and COCO results"),
    ("fp16", "conversion.commands.fp16", "convert an exported ONNX graph to fp16"),
    ("quantize", "conversion.commands.quantize", "post-training INT8 quantization with explicit Q/DQ"),
    ("build", "conversion.commands.build", "build a TensorRT engine from an exported ONNX graph"),
    ("bench", "benchmarks.commands.bench", "latency and throughput, side by side with baselines"),
]


def _top_help() -> str:
    width = max(len(c[0]) for c in COMMANDS)
    lines = [
        f"usage: maskrcnn-deploy COMMAND [options]   (maskrcnn-deploy {__version__})",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, _, text in COMMANDS]
    lines += ["", "Run 'maskrcnn-deploy COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"maskrcnn-deploy {__version__}")
        return 0
    table = {name: (module, text) for name, module, text in COMMANDS}
    if argv[0] not in table:
        print(f"maskrcnn-deploy: unknown command '{argv[0]}'\n\n{_top_help()}", file=sys.stderr)
        return 2
    module_name, text = table[argv[0]]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"maskrcnn-deploy {argv[0]}", description=text)
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except DeploySdkError as exc:
        print(f"maskrcnn-deploy {argv[0]}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"maskrcnn-deploy {argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
