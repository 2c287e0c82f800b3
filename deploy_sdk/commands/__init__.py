"""Subcommands of `maskrcnn-deploy` that belong to the runtime layer (numpy + onnxruntime + Pillow only).

:data:`COMMANDS` is this package's registry, read by :mod:`deploy_sdk.cli`: (name, module, one-line help). Each
module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when its command runs.
Commands that need torch live with the conversion code (:mod:`deploy_sdk.conversion.commands`), those that need
the benchmarks with them (:mod:`deploy_sdk.benchmarks.commands`). Shared flags: :mod:`deploy_sdk.commands.options`.
"""

COMMANDS = (
    ("data", "deploy_sdk.commands.data", "generate a synthetic instance-segmentation data set (COCO format)"),
    ("infer", "deploy_sdk.commands.infer", "run a model on images; write overlays and COCO results"),
    ("inspect", "deploy_sdk.commands.inspect", "what a .onnx, engine or checkpoint holds: classes, shapes, ops"),
    ("serve", "deploy_sdk.commands.serve", "serve a model over HTTP on Ray Serve (dynamic batching, replicas)"),
    ("batch", "deploy_sdk.commands.batch", "offline batch inference on Ray Data: sharded, resumable COCO results"),
    ("triton-repo", "deploy_sdk.commands.triton_repo", "write a Triton Inference Server model repository"),
)
