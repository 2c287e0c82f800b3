"""Command-line options of the commands that take a checkpoint (eval, export, check, demo).

Kept apart from ``deploy_sdk.conversion.checkpoint`` so that building a parser does not import torch: `maskrcnn-deploy
eval model.onnx` must work on a runtime-only install.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Union

# The flag is defined in the runtime layer, where `maskrcnn-deploy infer` (the torch backend) needs it too.
from deploy_sdk.commands.options import TRUST_CHECKPOINT_HELP, add_trust_checkpoint_argument

__all__ = [
    "TRUST_CHECKPOINT_HELP",
    "add_checkpoint_arguments",
    "add_trust_checkpoint_argument",
    "load_checkpoint_from_args",
]


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--arch``, ``--num-classes``, ``--class-names``, ``--min-size``, ``--max-size``, ``--from``, ``--config``
    and ``--trust-checkpoint``."""
    group = parser.add_argument_group("checkpoint options (used only when the model is a checkpoint)")
    group.add_argument(
        "--arch",
        default=None,
        help="architecture, e.g. maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, resnet18_fpn, resnet101_fpn, "
        "mobilenet_v3_large_fpn (default: detected from the weights)",
    )
    group.add_argument(
        "--num-classes", type=int, default=None, help="number of classes including the background (default: detected)"
    )
    group.add_argument(
        "--class-names",
        default=None,
        metavar="JSON",
        help="JSON list of class names, index = label id "
        "(default: <checkpoint>.classes.json, then the checkpoint's own, else class_<id>)",
    )
    group.add_argument("--min-size", type=int, default=None, help="override the model's resize min size (pixels)")
    group.add_argument("--max-size", type=int, default=None, help="override the model's resize max size (pixels)")
    group.add_argument(
        "--from",
        dest="source",
        default=None,
        choices=("torchvision", "detectron2", "mmdet"),
        help="the framework the checkpoint was trained with (default: detected from its keys, and printed)",
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="the framework's own config of the checkpoint (detectron2 config.yaml; read as data, never executed); "
        "default: the framework's model-zoo defaults",
    )
    add_trust_checkpoint_argument(group)


def load_checkpoint_from_args(path: Union[str, Path], args: argparse.Namespace):
    """``deploy_sdk.conversion.checkpoint.load_checkpoint`` with the options of :func:`add_checkpoint_arguments`."""
    from deploy_sdk.errors import require

    require("torch", "convert", "loading a checkpoint")
    require("torchvision", "convert", "loading a checkpoint")
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    loaded = load_checkpoint(
        path,
        arch=args.arch,
        num_classes=args.num_classes,
        class_names=args.class_names,
        min_size=args.min_size,
        max_size=args.max_size,
        trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)),
        source=getattr(args, "source", None),
        config=getattr(args, "config", None),
    )
    return loaded
