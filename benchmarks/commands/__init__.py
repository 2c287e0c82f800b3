"""Subcommands of `maskrcnn-deploy` that belong to the benchmarks layer (on top of conversion and the runtime).

:data:`COMMANDS` is this package's registry, read by :mod:`deploy_sdk.cli`: (name, module, one-line help). Each
module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when its command runs.
"""

COMMANDS = (
    ("demo", "deploy_sdk.benchmarks.commands.demo", "run the shipped model end to end on generated images"),
    ("bench", "deploy_sdk.benchmarks.commands.bench", "latency and throughput, side by side with baselines"),
)
