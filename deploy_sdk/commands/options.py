"""Command-line pieces shared by the commands of every layer: argparse types, the ``--trust-checkpoint`` flag,
and SIGTERM handling.

They live in the runtime layer (the bottom one) so that the runtime commands (``infer``) and the commands of the
layers above (``eval``, ``export``, ``demo``, ``bench``) share one definition without a runtime module importing
``deploy_sdk.conversion`` or the CLI entry point (:mod:`deploy_sdk.cli`, the top layer, which re-exports them).
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from typing import Iterator

__all__ = [
    "TRUST_CHECKPOINT_HELP",
    "Terminated",
    "add_trust_checkpoint_argument",
    "positive_int",
    "sigterm_unwinds",
]


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1, refused at parse time otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


TRUST_CHECKPOINT_HELP = (
    "allow a checkpoint that is more than tensors (e.g. a whole model saved with torch.save(model)) to be "
    "unpickled with torch.load(weights_only=False). Unpickling runs arbitrary code from the file: use this only "
    "for files you trust. Without it such files are refused; a state dict or a .safetensors file never needs it"
)


def add_trust_checkpoint_argument(parser) -> None:
    """Add ``--trust-checkpoint`` (to a parser or an argument group); see :data:`TRUST_CHECKPOINT_HELP`."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)


# The Predictor backends of the runtime layer (the torch backend needs deploy_sdk.conversion and its extra).
RUNTIME_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")


def add_runtime_arguments(parser, per: str) -> None:
    """Add ``--backend`` (:data:`RUNTIME_BACKENDS`), ``--device`` and ``--threads`` for the Predictor of each
    ``per`` (e.g. "replica", "worker") of a serving command."""
    parser.add_argument(
        "--backend", default="auto", choices=RUNTIME_BACKENDS, help="default: from the model file's suffix"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, default=None, help=f"intra-op threads per {per}")


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
