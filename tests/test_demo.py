"""`maskrcnn-deploy demo` reuses its ONNX export only when the checkpoint and the exporter are both unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy_sdk import conversion
from deploy_sdk.benchmarks.commands import demo


def test_export_key_names_the_checkpoint_and_changes_with_the_exporter(tmp_path, monkeypatch):
    key = demo.export_key("ab" * 32)
    assert key == demo.export_key("ab" * 32)
    assert key.startswith("checkpoint " + "ab" * 32 + " exporter ")
    assert demo.export_key("cd" * 32) != key
    # The same sources elsewhere give the same key; one edited line in the exporter gives another.
    copy = tmp_path / "conversion"
    shutil.copytree(Path(conversion.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(conversion, "__file__", str(copy / "__init__.py"))
    assert demo.export_key("ab" * 32) == key
    with open(copy / "deploy_module.py", "a") as f:
        f.write("\n# an edit\n")
    assert demo.export_key("ab" * 32) != key


def test_export_is_current_only_with_the_same_key(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    key = demo.export_key("ab" * 32)
    assert not demo._export_is_current(onnx_path, key)  # no export yet
    onnx_path.write_bytes(b"graph")
    assert not demo._export_is_current(onnx_path, key)  # an export without a key file (an older demo's)
    (tmp_path / "model.onnx.key").write_text(key + "\n")
    assert demo._export_is_current(onnx_path, key)
    assert not demo._export_is_current(onnx_path, demo.export_key("cd" * 32))
    assert not demo._export_is_current(onnx_path, demo.export_key(""))  # a checkpoint without a hash
