"""The layers import downwards only: benchmarks > conversion > runtime (``deploy_sdk``), with the CLI on top.

The imports themselves (at any depth: lazy ones inside functions and TYPE_CHECKING ones included) are checked by
import-linter (``make lint`` runs ``lint-imports``; the contracts are pyproject.toml's ``[tool.importlinter]``).
This file keeps what import-linter cannot see:

- the runtime layer (every module of ``deploy_sdk`` outside ``deploy_sdk.conversion`` and
  ``deploy_sdk.benchmarks``) imports, and its CLI commands build their parsers, with the conversion and
  benchmarks packages, torch, torchvision and onnx all unimportable;
- on a runtime-only install (torch, torchvision and onnx missing) the top-level help lists every command and
  `maskrcnn-deploy eval model.onnx` runs;
- statically, no runtime module names the conversion or benchmarks layer in a module-path string (what
  ``importlib.import_module`` or ``require`` would import) outside the two registries that exist to name them (the
  CLI's command packages and the predictor's backend table), and no conversion module names the benchmarks layer.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import deploy_sdk

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(deploy_sdk.__file__).resolve().parent
UPPER_LAYERS = ("conversion", "benchmarks")  # subpackages of deploy_sdk that are not the runtime layer

# Runtime-layer assignments whose strings may name an upper layer's module: the registries.
REGISTRIES = {
    "deploy_sdk.cli": {"COMMAND_PACKAGES"},
    "deploy_sdk.backends": {"REGISTRY"},
}

# ------------------------------------------------------------------------------------------- in a subprocess

# Installed first in a fresh interpreter: a meta path finder that makes the given modules unimportable and
# remembers who asked.
_BLOCKER = r'''
import importlib.abc, sys, traceback

BLOCKED = %(blocked)r
_HERE = __file__ if "__file__" in globals() else "<string>"


def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if _blocked(fullname):
            raise ModuleNotFoundError(f"{fullname} is made unimportable by the layer test", name=fullname)
        return None


_already = sorted(m for m in sys.modules if _blocked(m))
assert not _already, f"imported before the blocker was installed: {_already}"
sys.meta_path.insert(0, _Block())


def culprit(exc):
    """file:line of the innermost frame outside importlib that led to ``exc`` (the import statement)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and "importlib" not in f.filename and f.filename != _HERE]
    f = frames[-1] if frames else None
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}" if f else "?"
'''

_IMPORT_RUNTIME = r"""
import importlib, json, os, pkgutil

import deploy_sdk

SKIP = {"deploy_sdk." + name for name in %(upper)r}


def runtime_modules(path, prefix):
    for info in pkgutil.iter_modules(path, prefix):
        if info.name in SKIP:
            continue
        yield info.name
        if info.ispkg:
            yield from runtime_modules([os.path.join(info.module_finder.path, info.name.rpartition(".")[2])],
                                       info.name + ".")


names = ["deploy_sdk"] + sorted(runtime_modules(deploy_sdk.__path__, "deploy_sdk."))
failures = []
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures.append({"module": name, "error": f"{type(exc).__name__}: {exc}", "at": culprit(exc)})

# The CLI: top-level help and the runtime commands' parsers; the torch backend asked for by name.
import contextlib, io

cli = {}


def check_cli():
    from deploy_sdk.cli import commands, main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli["help_rc"] = main(["--help"])
    cli["help"] = out.getvalue()
    cli["commands"] = [c[0] for c in commands()]
    for name in cli["commands"]:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                main([name, "--help"])
            code = "no SystemExit"
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = f"{type(exc).__name__}: {exc} (imported at {culprit(exc)})"
        cli[name] = code

    from deploy_sdk.backends import backend_class

    try:
        backend_class("torch")
        cli["torch_backend"] = "no error"
    except BaseException as exc:
        cli["torch_backend"] = f"{type(exc).__name__}: {exc}"


try:
    check_cli()
except BaseException as exc:
    cli["error"] = f"{type(exc).__name__}: {exc} (at {culprit(exc)})"

print("RESULT " + json.dumps({"modules": names, "failures": failures, "cli": cli}))
"""


def _run_blocked(blocked: Tuple[str, ...], body: str, tmp_path: Path, args: Tuple[str, ...] = ()) -> Dict:
    script = tmp_path / "layer_check.py"
    script.write_text(_BLOCKER % {"blocked": blocked} + body)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_runtime_layer_imports_without_conversion_benchmarks_or_torch(tmp_path):
    blocked = (
        "deploy_sdk.conversion",
        "deploy_sdk.benchmarks",
        "conversion",
        "benchmarks",
        "torch",
        "torchvision",
        "onnx",
    )
    result = _run_blocked(blocked, _IMPORT_RUNTIME % {"upper": UPPER_LAYERS}, tmp_path)
    problems = [f"{f['module']}: {f['error']} (imported at {f['at']})" for f in result["failures"]]
    assert not problems, "runtime-layer modules that need an upper layer or torch:\n" + "\n".join(problems)
    # The walk found the runtime modules, and only them.
    modules = set(result["modules"])
    assert {
        "deploy_sdk.cli",
        "deploy_sdk.predictor",
        "deploy_sdk.commands.infer",
        "deploy_sdk.backends.onnxruntime",
        "deploy_sdk.commands.options",
    } <= modules
    assert not [m for m in modules if m.startswith(("deploy_sdk.conversion", "deploy_sdk.benchmarks"))]

    cli = result["cli"]
    assert "error" not in cli, cli["error"]
    assert cli["help_rc"] == 0 and "infer" in cli["help"] and "data" in cli["help"], cli["help"]
    # the upper layers' packages are absent; the serving commands are the runtime's (Ray imported when they run)
    # inspect is the runtime's too: .onnx files and engines are read without onnx, torch or TensorRT
    assert set(cli["commands"]) == {"data", "infer", "inspect", "serve", "batch", "triton-repo"}, cli["commands"]
    for name in cli["commands"]:
        assert cli[name] == 0, f"maskrcnn-deploy {name} --help: {cli[name]}"
    assert cli["torch_backend"].startswith("MissingDependencyError")
    assert "maskrcnn-deploy[convert]" in cli["torch_backend"], cli["torch_backend"]


_RUNTIME_ONLY_EVAL = r"""
import contextlib, io, json, sys
from deploy_sdk.cli import main

out = io.StringIO()
with contextlib.redirect_stdout(out):
    help_rc = main(["--help"])
try:
    with contextlib.redirect_stdout(io.StringIO()):
        main(["eval", "--help"])
    eval_help = "no SystemExit"
except SystemExit as exc:
    eval_help = exc.code
from deploy_sdk.cli import commands

helps = {}
for name, _, _ in commands():
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            helps[name] = [main([name, "--help"]), err.getvalue()]
    except SystemExit as exc:
        helps[name] = [exc.code, err.getvalue()]
model, images, annotations = sys.argv[1:4]
run = io.StringIO()
with contextlib.redirect_stdout(run):
    eval_rc = main(["eval", model, "--images", images, "--annotations", annotations, "--quiet"])
print("RESULT " + json.dumps({"help_rc": help_rc, "help": out.getvalue(), "eval_help": eval_help, "helps": helps,
                              "eval_rc": eval_rc, "eval_out": run.getvalue()}))
"""


def test_runtime_only_install_lists_every_command_and_evaluates_an_onnx_file(tmp_path):
    """torch, torchvision and onnx missing, the whole ``deploy_sdk`` package present: `maskrcnn-deploy --help`
    shows every command in the usual order, every command's --help works or names the extra to install, and
    `eval model.onnx` runs (the conversion layer's eval command imports torch only for a checkpoint)."""
    from toy_deployment_graph import write_toy_graph

    from deploy_sdk.synthetic_shapes import write_dataset

    model = write_toy_graph(tmp_path / "toy.onnx")
    write_dataset(tmp_path / "ds", num=2, seed=3, min_size=48, max_size=48)
    result = _run_blocked(
        ("torch", "torchvision", "onnx"),
        _RUNTIME_ONLY_EVAL,
        tmp_path,
        (str(model), str(tmp_path / "ds" / "images"), str(tmp_path / "ds" / "annotations.json")),
    )
    assert result["help_rc"] == 0
    listed = [line.split()[0] for line in result["help"].splitlines() if line.startswith("  ")]
    assert listed == [
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
        "serve",
        "batch",
        "triton-repo",
    ]
    assert result["eval_help"] == 0
    # Every command's --help works, or says in one line which extra to install (no traceback).
    for name, (code, err) in result["helps"].items():
        assert code == 0 or (code == 1 and "maskrcnn-deploy[convert]" in err and len(err.splitlines()) == 1), (
            name,
            code,
            err,
        )
    assert result["eval_rc"] == 0 and "AP50" in result["eval_out"], result


def test_top_level_help_imports_no_upper_layer_command_module():
    """The registries are read for the help; the command modules (and so torch) only when a command runs."""
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from deploy_sdk.cli import commands, main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--help"]) == 0
        loaded = sorted(m for _, m, _ in commands() if m in sys.modules)
        heavy = sorted(m for m in ("torch", "torchvision", "onnx") if m in sys.modules)
        assert not loaded and not heavy, (loaded, heavy)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr


def test_every_registered_command_has_a_module():
    import importlib.util

    from deploy_sdk.cli import commands

    table = commands()
    assert len({name for name, _, _ in table}) == len(table)
    for name, module, text in table:
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        assert text and "\n" not in text


# ------------------------------------------------------------------------------------------------ static


def _python_files(top: Path, skip_dirs: Tuple[str, ...] = ()) -> Iterator[Path]:
    """The ``.py`` files under ``top``; ``skip_dirs``: folder names directly under ``top`` to leave out."""
    for folder, dirs, files in os.walk(top):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not (here == top and d in skip_dirs))
        yield from (here / f for f in sorted(files) if f.endswith(".py"))


def _module_name(path: Path, top: Path, package: str) -> Tuple[str, bool]:
    parts = list(path.relative_to(top).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([package] + parts), is_package


_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")


def module_strings(path: Path, module: str) -> List[Tuple[int, str, bool]]:
    """(line, module path, in a registry) for every string in ``path`` that reads like a dotted module path
    (``a.b`` or ``a.b:Name``); "in a registry": the string is part of a value assigned to one of ``module``'s
    :data:`REGISTRIES`."""
    tree = ast.parse(path.read_text(), str(path))
    allowed: Set[int] = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id in REGISTRIES.get(module, ()) for t in targets):
            allowed |= {id(n) for n in ast.walk(node.value)}
    return [
        (node.lineno, node.value.partition(":")[0], id(node) in allowed)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_PATH.match(node.value)
    ]


def _names(target: str, prefixes: Tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def string_violations(package_dir: Path) -> List[str]:
    """Every module-path string under ``package_dir`` (a ``deploy_sdk`` folder) that names a higher layer."""
    problems: List[str] = []
    layers = [
        # (files, their package, its folder, what they must not name)
        (
            _python_files(package_dir, skip_dirs=UPPER_LAYERS),
            "deploy_sdk",
            package_dir,
            ("deploy_sdk.conversion", "deploy_sdk.benchmarks", "conversion", "benchmarks"),
        ),
        (
            _python_files(package_dir / "conversion"),
            "deploy_sdk.conversion",
            package_dir / "conversion",
            ("deploy_sdk.benchmarks", "benchmarks"),
        ),
    ]
    for files, package, top, forbidden in layers:
        for path in files:
            module, _ = _module_name(path, top, package)
            for line, target, in_registry in module_strings(path, module):
                if _names(target, forbidden) and not in_registry:
                    where = f"{module} ({path.relative_to(package_dir.parent)}:{line})"
                    problems.append(f"{where}: string {target!r} names a higher layer")
    return problems


def test_no_module_names_a_higher_layer_in_a_string():
    problems = "\n".join(string_violations(PACKAGE_DIR))
    assert not problems, f"module paths against the layering (benchmarks > conversion > deploy_sdk):\n{problems}"


def test_the_string_check_sees_module_paths_and_allows_the_registries(tmp_path):
    """The checker itself: it catches a ``require``-style string, an ``importlib.import_module`` argument and a
    ``module:Class`` string in the runtime and a benchmarks path in conversion, and lets the registries (and the
    benchmarks layer) name the upper layers."""
    pkg = tmp_path / "deploy_sdk"
    for sub in ("", "commands", "backends", "conversion", "benchmarks"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "cli.py").write_text('COMMAND_PACKAGES = ("deploy_sdk.commands", "deploy_sdk.conversion.commands")\n')
    (pkg / "backends" / "__init__.py").write_text('REGISTRY = {"torch": "deploy_sdk.conversion.torch_backend:T"}\n')
    (pkg / "backends" / "torchy.py").write_text('require("deploy_sdk.conversion.deploy_module", "convert", "x")\n')
    (pkg / "commands" / "dyn.py").write_text(
        'import importlib\n\ndef run():\n    return importlib.import_module("deploy_sdk.benchmarks.harness")\n'
    )
    (pkg / "commands" / "table.py").write_text('OTHER = {"torch": "deploy_sdk.conversion.torch_backend:T"}\n')
    (pkg / "conversion" / "up.py").write_text('WHERE = "deploy_sdk.benchmarks.report"\n')
    (pkg / "benchmarks" / "ok.py").write_text('WHAT = "deploy_sdk.conversion.export"\n')
    (pkg / "commands" / "fine.py").write_text('WHAT = "deploy_sdk.predictor"\nimport deploy_sdk.errors\n')
    text = "\n".join(string_violations(pkg))
    for module in ("backends.torchy", "commands.dyn", "commands.table", "conversion.up"):
        assert f"deploy_sdk.{module} " in text, (module, text)
    for module in ("cli", "backends", "benchmarks.ok", "commands.fine"):
        assert f"deploy_sdk.{module} " not in text, (module, text)
