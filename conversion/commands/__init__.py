"""Subcommands of `maskrcnn-deploy` that belong to the conversion layer (checkpoints, export, precision graphs,
TensorRT engines, evaluation of checkpoints).

:data:`COMMANDS` is this package's registry, read by :mod:`deploy_sdk.cli`: (name, module, one-line help). Each
module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when its command runs.
Building a parser must not import torch (``maskrcnn-deploy eval model.onnx`` runs on a runtime-only install), so
these modules import torch, torchvision and onnx inside ``run``.
"""

COMMANDS = (
    ("eval", "deploy_sdk.conversion.commands.evaluate", "COCO box and mask AP of a model on a COCO-format data set"),
    ("export", "deploy_sdk.conversion.commands.export", "export a checkpoint to one deployment ONNX graph"),
    (
        "check",
        "deploy_sdk.conversion.commands.check",
        "compare two models (checkpoint, .onnx, fp16/INT8 .onnx, engine) detection by detection",
    ),
    ("inline", "deploy_sdk.conversion.commands.inline", "write the portable graph: standard ONNX operators only"),
    ("fp16", "deploy_sdk.conversion.commands.fp16", "convert an exported ONNX graph to fp16"),
    ("quantize", "deploy_sdk.conversion.commands.quantize", "post-training INT8 quantization with explicit Q/DQ"),
    ("build", "deploy_sdk.conversion.commands.build", "build a TensorRT engine from an exported ONNX graph"),
    (
        "convert",
        "deploy_sdk.conversion.commands.convert",
        "the whole pipeline in one command: export, check, fp16/INT8, engine; a summary table",
    ),
)
