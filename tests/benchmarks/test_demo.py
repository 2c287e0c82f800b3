"""`maskrcnn-deploy demo`: the shipped model by default; its ONNX export reused only when the checkpoint and the
exporter are both unchanged."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

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


def test_demo_runs_the_shipped_model_by_default(tmp_path, monkeypatch):
    """Without --checkpoint the demo loads the model the package carries (deploy_sdk/models/shapes_r18, found
    through importlib.resources; here, in a checkout, the repository's models/shapes_r18 through the link)."""
    pytest.importorskip("torch")
    from deploy_sdk.conversion import checkpoint

    shipped = REPO_ROOT / "models" / "shapes_r18" / "model.safetensors"
    if not shipped.is_file():
        pytest.skip("models/shapes_r18/model.safetensors is not in this checkout (training writes it)")
    loaded = []

    class Loaded(Exception):
        pass

    def load_checkpoint(path, **kwargs):
        loaded.append(path)
        raise Loaded

    monkeypatch.setattr(checkpoint, "load_checkpoint", load_checkpoint)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    with pytest.raises(Loaded):
        demo.run(parser.parse_args(["--out", str(tmp_path / "out")]))
    assert loaded == [shipped.resolve()]


def test_the_demo_table_adds_openvino_where_the_extra_is_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name in ("openvino", "onnx") else real(name, *a)
    )
    assert demo.bench_systems() == "sdk-openvino-fp32,torch"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert demo.bench_systems() == "torch"
