"""`maskrcnn-deploy`: the command-line entry point, the top layer (above the runtime, conversion and benchmarks).

The subcommands are registered by the packages that own them: each of :data:`COMMAND_PACKAGES` has a
``COMMANDS`` tuple of (name, module, one-line help) in its ``commands/__init__.py``. Each command module exposes
``add_arguments(parser)`` and ``run(args) -> int``, and only the module of the command being run is imported, so
`maskrcnn-deploy --help` and `maskrcnn-deploy infer` do not pay for importing torch.
Errors derived from :class:`deploy_sdk.DeploySdkError` become one line on stderr and exit code 1, and so do an
:class:`OSError` that names a file (a path the file system refused) and :class:`MemoryError`; anything else is a
bug and keeps its traceback. Ctrl-C exits with 130 and SIGTERM with 143, both after ``with`` blocks and
``finally`` clauses have run, so no temporary ``.*.partial`` output is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional, Sequence, Tuple

from deploy_sdk.commands.options import Terminated, positive_int, sigterm_unwinds
from deploy_sdk.errors import DeploySdkError, MissingDependencyError
from deploy_sdk.local_paths import refuse_url
from deploy_sdk.version import __version__

__all__ = ["COMMAND_PACKAGES", "Terminated", "commands", "main", "positive_int", "sigterm_unwinds"]

# The packages whose ``COMMANDS`` registries make up the CLI, lowest layer first. A package that is not installed
# is skipped (its commands are then unknown); a registry that fails to import for any other reason is a bug.
COMMAND_PACKAGES: Tuple[str, ...] = (
    "deploy_sdk.commands",
    "deploy_sdk.conversion.commands",
    "deploy_sdk.benchmarks.commands",
)

# The order of the top-level help: the order a new user meets the commands. Registered commands not named here
# follow, in registry order.
HELP_ORDER: Tuple[str, ...] = (
    "demo",
    "data",
    "convert",
    "eval",
    "export",
    "check",
    "infer",
    "inspect",
    "inline",
    "fp16",
    "quantize",
    "build",
    "bench",
)


# Optional packages and the pip extra that installs each: a command that needs one on an install without it ends
# in one line naming the extra, not in a ModuleNotFoundError traceback.
OPTIONAL_PACKAGES = {
    "torch": "convert",
    "torchvision": "convert",
    "onnx": "convert",
    "safetensors": "convert",
    "pycocotools": "convert",
    "tensorrt": "gpu",
    "openvino": "openvino",
    "matplotlib": "bench",
}


# Options whose value is a network address, not a path (Ray's ``ray://head:10001``): never refused as a URL.
_ADDRESS_OPTIONS = ("--address", "--url", "--endpoint")


def _refuse_urls(arguments: Sequence[str]) -> None:
    """Every path this CLI takes is local: a URL is refused by name before argparse turns it into a Path
    (which would collapse ``https://`` into ``https:/``). Values of :data:`_ADDRESS_OPTIONS` are exempt."""
    previous = ""
    for value in arguments:
        option, _, inline = value.partition("=") if value.startswith("--") else ("", "", "")
        if previous not in _ADDRESS_OPTIONS and option not in _ADDRESS_OPTIONS:
            refuse_url(inline if option and inline else value, "argument")
        previous = value


def _is_missing(exc: ModuleNotFoundError, package: str) -> bool:
    """True when ``exc`` says that ``package`` itself (or a package above it) is not installed."""
    missing = exc.name or ""
    return bool(missing) and (package == missing or package.startswith(missing + "."))


def commands() -> List[Tuple[str, str, str]]:
    """Every registered command as (name, module, one-line help), in the order of the top-level help."""
    found: List[Tuple[str, str, str]] = []
    for package in COMMAND_PACKAGES:
        try:
            registry = importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if _is_missing(exc, package):
                continue
            raise
        for name, module, text in registry.COMMANDS:
            if any(name == seen for seen, _, _ in found):
                raise RuntimeError(f"command {name!r} is registered twice (again by {package})")
            found.append((name, module, text))
    rank = {name: i for i, name in enumerate(HELP_ORDER)}
    return sorted(found, key=lambda c: rank.get(c[0], len(rank)))  # stable: unlisted ones keep registry order


def _top_help(table: Sequence[Tuple[str, str, str]]) -> str:
    width = max(len(c[0]) for c in table)
    lines = [
        f"usage: maskrcnn-deploy COMMAND [options]   (maskrcnn-deploy {__version__})",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, _, text in table]
    lines += ["", "Run 'maskrcnn-deploy COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"maskrcnn-deploy {__version__}")
        return 0
    registered = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(registered))
        return 0 if argv else 2
    table = {name: (module, text) for name, module, text in registered}
    if argv[0] not in table:
        print(f"maskrcnn-deploy: unknown command '{argv[0]}'\n\n{_top_help(registered)}", file=sys.stderr)
        return 2
    module_name, text = table[argv[0]]
    prefix = f"maskrcnn-deploy {argv[0]}"
    try:
        with sigterm_unwinds():
            _refuse_urls(argv[1:])
            module = importlib.import_module(module_name)
            parser = argparse.ArgumentParser(prog=prefix, description=text)
            module.add_arguments(parser)
            args = parser.parse_args(argv[1:])
            return int(module.run(args) or 0)
    except DeploySdkError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        extra = OPTIONAL_PACKAGES.get((exc.name or "").split(".")[0])
        if extra is None:
            raise  # not an optional dependency: a broken installation or a bug, keep the traceback
        # A command reached an optional package its extra provides (a code path without its own require()).
        package = (exc.name or "").split(".")[0]
        print(f"{prefix}: error: {MissingDependencyError(package, extra, prefix)}", file=sys.stderr)
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
