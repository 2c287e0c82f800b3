"""`maskrcnn-deploy`: the command-line entry point.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the command being run is imported, so `maskrcnn-deploy infer` does not pay for importing torch.
Errors derived from :class:`deploy_sdk.DeploySdkError` become one line on stderr and exit code 1, and so do an
:class:`OSError` that names a file (a path the file system refused) and :class:`MemoryError`; anything else is a
bug and keeps its traceback. Ctrl-C exits with 130 and SIGTERM with 143, both after ``with`` blocks and
``finally`` clauses have run, so no temporary ``.*.partial`` output is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

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


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that the program unwinds as for Ctrl-C: ``with`` blocks and
    ``finally`` clauses run and delete temporary output (the default SIGTERM action would kill the process on the
    spot and leave its ``.*.partial`` files behind)."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Terminated` in the main thread; further SIGTERMs are ignored so that
    they cannot interrupt the clean-up (a SIGKILL still ends the process). No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1, refused at parse time otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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
    prefix = f"maskrcnn-deploy {argv[0]}"
    try:
        with sigterm_unwinds():
            module = importlib.import_module(module_name)
            parser = argparse.ArgumentParser(prog=prefix, description=text)
            module.add_arguments(parser)
            args = parser.parse_args(argv[1:])
            return int(module.run(args) or 0)
    except DeploySdkError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise  # no path to name: a bug, keep the traceback
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"{prefix}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{prefix}: error: out of memory; use smaller inputs or a smaller batch", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{prefix}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
