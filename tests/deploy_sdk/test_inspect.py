"""`maskrcnn-deploy inspect FILE`: .onnx graphs (fp32, fp16, INT8), engines and checkpoints.

What inspect reports (read from the protobuf wire format, without the onnx package) is compared with what the
onnx package itself reads from the same files; a checkpoint's parameter count with torchvision's model; an
engine's header with the header written.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

from deploy_sdk.cli import main
from deploy_sdk.commands.inspect import inspect_file

ROOT = REPO_ROOT


def _dims(value_info):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_inspect_onnx_agrees_with_the_onnx_package(shipped_onnx):
    import onnx
    from onnx import helper

    model = onnx.load(str(shipped_onnx))
    report = inspect_file(shipped_onnx)
    assert report["kind"] == "onnx" and report["precision"] == "fp32"
    assert report["size_bytes"] == shipped_onnx.stat().st_size
    expect_io = [
        [
            {
                "name": v.name,
                "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": _dims(v),
            }
            for v in values
        ]
        for values in (model.graph.input, model.graph.output)
    ]
    assert [report["inputs"], report["outputs"]] == expect_io
    # K and the mask size are fixed in the declared output shapes
    assert report["outputs"][1]["shape"][1:] == [100, 4] and report["outputs"][4]["shape"][1:] == [100, 28, 28]
    ops = collections.Counter((n.domain, n.op_type) for n in model.graph.node)
    assert report["num_nodes"] == len(model.graph.node)
    assert report["ops"]["Conv"] == ops[("", "Conv")]
    assert report["opsets"] == {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    plugin = [p for p in report["plugin_nodes"] if p["op"] == "MultiLevelRoIAlign"]
    assert len(plugin) == 1 and plugin[0]["count"] == ops[("maskrcnn_deploy", "MultiLevelRoIAlign")] >= 2
    assert plugin[0]["local_function"] and plugin[0]["function_nodes"] == len(model.functions[0].node)
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert report["metadata"]["class_names"] == props["maskrcnn_deploy.class_names"]
    weight_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert report["weights"]["float32"]["bytes"] == weight_bytes

    rc, text, _ = _cli(["inspect", str(shipped_onnx)])
    assert rc == 0
    assert "precision: fp32" in text and "7 classes incl. background: __background__, circle" in text
    assert "boxes           float32  [batch, 100, 4]" in text
    assert f"plugin nodes: {plugin[0]['count']} x maskrcnn_deploy.MultiLevelRoIAlign" in text
    rc, as_json, _ = _cli(["inspect", str(shipped_onnx), "--json"])
    assert rc == 0 and json.loads(as_json) == json.loads(json.dumps(report))


def test_inspect_reduced_precision_graphs(shipped_conversion):
    import onnx

    fp16 = inspect_file(shipped_conversion.file(".fp16.onnx"))
    model = onnx.load(str(shipped_conversion.file(".fp16.onnx")))
    half = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16["precision"] == "fp16"
    assert fp16["weights"]["float16"] == {
        "tensors": len(half),
        "bytes": sum(onnx.numpy_helper.to_array(t).nbytes for t in half),
    }
    int8 = inspect_file(shipped_conversion.file(".int8.onnx"))
    model = onnx.load(str(shipped_conversion.file(".int8.onnx")))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert int8["precision"] == "int8"
    assert int8["quantization"] == {
        "QuantizeLinear": ops["QuantizeLinear"],
        "DequantizeLinear": ops["DequantizeLinear"],
    }
    rc, text, _ = _cli(["inspect", str(shipped_conversion.file(".int8.onnx"))])
    assert rc == 0 and f"quantization: {ops['QuantizeLinear']} QuantizeLinear" in text


def test_inspect_engine_header_without_tensorrt(tmp_path, shipped_onnx):
    from deploy_sdk.engine_file import EngineHeader, GpuIdentity, write_engine_file

    meta = inspect_file(shipped_onnx)["metadata"]
    from deploy_sdk.model_metadata import ModelMetadata
    from deploy_sdk.onnx_summary import read_onnx_summary

    metadata = ModelMetadata.from_props(read_onnx_summary(shipped_onnx).metadata_props)
    metadata.precision = "fp16"
    header = EngineHeader(
        metadata=metadata,
        tensorrt_version="10.13.0.35",
        gpu=GpuIdentity("NVIDIA H100 80GB HBM3", "9.0"),
        profile={
            "images": {"min": [1, 3, 32, 32], "opt": [2, 3, 512, 512], "max": [4, 3, 512, 512]},
            "image_sizes": {"min": [1, 2], "opt": [2, 2], "max": [4, 2]},
        },
    )
    path = tmp_path / "m.engine"
    write_engine_file(path, b"\x00plan" * 100, header)
    report = inspect_file(path)
    assert report["kind"] == "engine" and report["tensorrt_version"] == "10.13.0.35"
    assert report["gpu"] == "NVIDIA H100 80GB HBM3" and report["compute_capability"] == "9.0"
    assert report["precision"] == "fp16" and report["plan_bytes"] == 500
    assert report["inputs"][0]["shape"] == ["1..4", 3, "32..512", "32..512"]
    assert report["metadata"]["class_names"] == meta["class_names"]
    rc, text, _ = _cli(["inspect", str(path)])
    assert rc == 0 and "built with TensorRT 10.13.0.35 on NVIDIA H100 80GB HBM3 (compute capability 9.0)" in text
    # a name does not make an engine: a .engine file without the header is refused in one line
    (tmp_path / "bare.engine").write_bytes(b"\x01\x02" * 64)
    rc, _, err = _cli(["inspect", str(tmp_path / "bare.engine")])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "not a maskrcnn-deploy engine file" in err


def test_inspect_checkpoint_counts_what_torchvision_holds(shipped_model_file, shipped_loaded):
    report = inspect_file(shipped_model_file)
    module = shipped_loaded.model
    # torchvision's parameters and buffers, plus the normalization mean and std (3 values each) the deployment
    # module holds as buffers
    values = sum(t.numel() for t in module.state_dict().values()) + 3 + 3
    assert report["kind"] == "checkpoint" and report["format"] == "safetensors"
    assert sum(p["values"] for p in report["parameters"].values()) == values
    assert report["metadata"]["class_names"] == list(shipped_loaded.class_names)
    assert report["metadata"]["arch"] == shipped_loaded.arch


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"hello\n", "is a text file"),
        (None, "its data ends in the middle of a field"),  # a truncated graph
    ],
)
def test_inspect_bad_onnx_files(tmp_path, shipped_onnx, content, expected):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content if content is not None else shipped_onnx.read_bytes()[:5000])
    rc, _, err = _cli(["inspect", str(path)])
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("maskrcnn-deploy inspect: error: ") and "bad.onnx" in err
    assert expected in err or "a field runs past the end" in err, err
    rc, _, err = _cli(["inspect", str(tmp_path / "none.onnx")])
    assert rc == 1 and "file not found" in err


_RUNTIME_ONLY = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "onnx"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, Block())
import contextlib, io
from deploy_sdk.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["inspect", sys.argv[1], "--json"])
print("RESULT " + json.dumps({"rc": rc, "out": out.getvalue(),
                              "heavy": sorted(m for m in ("torch", "onnx") if m in sys.modules)}))
"""


def test_inspect_onnx_on_the_runtime_only_install(tmp_path, shipped_onnx):
    script = tmp_path / "runtime_only.py"
    script.write_text(_RUNTIME_ONLY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(script), str(shipped_onnx)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(tmp_path),
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-2000:]
    result = json.loads(line[0][len("RESULT ") :])
    assert result["rc"] == 0 and not result["heavy"]
    assert json.loads(result["out"])["metadata"]["num_classes"] == 7
