"""`maskrcnn-deploy triton-repo`: the written config.pbtxt parses with Triton's own `ModelConfig` protobuf (the one the
`tritonclient` package ships; unknown fields or bad syntax fail the parse) and declares exactly the graph's
inputs and outputs as the `onnx` package reads them from the file (an independent reader: the writer asks ONNX
Runtime), with dynamic batching, the version folder holding the model, and a README. An engine gives a
`tensorrt_plan` config with the bare plan (the SDK's header stripped) and the plugin library named and copied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from deploy_sdk.errors import DeploySdkError
from deploy_sdk.serving.triton_repo import write_triton_repository

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

# ONNX TensorProto element types to Triton's, written out by hand from the two enums' documentation.
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    9: "TYPE_BOOL",
}


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _onnx_io(path: Path) -> Tuple[List[Tuple[str, str, List[int]]], List[Tuple[str, str, List[int]]]]:
    """(name, Triton type, dims with -1 for symbolic ones) of the graph's inputs and outputs, batch first."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def rows(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append((v.name, ONNX_TO_TRITON[t.elem_type], dims))
        return out

    return rows(graph.input), rows(graph.output)


def _declared(tensors) -> List[Tuple[str, str, List[int]]]:
    """What a config declares per tensor, as the full shape the model sees (batch dimension -1 put back, a
    `reshape` applied)."""
    out = []
    for t in tensors:
        dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        out.append((t.name, mc.DataType.Name(t.data_type), [-1] + dims))
    return out


def test_onnx_repository_matches_the_graph(shipped_onnx, tmp_path):
    from deploy_sdk import Predictor

    config_path = write_triton_repository(
        shipped_onnx, tmp_path / "repo", name="mrcnn", version=3, max_batch_size=6, max_queue_delay_us=2500, instances=2
    )
    assert config_path == tmp_path / "repo" / "mrcnn" / "config.pbtxt"
    config = _parse(config_path)
    assert config.name == "mrcnn" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 6
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert list(config.dynamic_batching.preferred_batch_size) == [3, 6]
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(2, "KIND_CPU")]

    inputs, outputs = _onnx_io(shipped_onnx)
    assert [name for name, _, _ in inputs] == ["images", "image_sizes"]  # the graph contract
    assert [name for name, _, _ in outputs] == ["num_detections", "boxes", "scores", "labels", "masks"]
    assert _declared(config.input) == inputs
    assert _declared(config.output) == outputs
    # Triton needs a dimension besides the batch: num_detections [B] is declared [1] and reshaped to [].
    num = next(t for t in config.output if t.name == "num_detections")
    assert list(num.dims) == [1] and list(num.reshape.shape) == []

    # The version folder holds the graph, unchanged; the metadata parameter is the model's own.
    assert (tmp_path / "repo" / "mrcnn" / "3" / "model.onnx").read_bytes() == Path(shipped_onnx).read_bytes()
    metadata = json.loads(config.parameters["maskrcnn_deploy.metadata"].string_value)
    with Predictor(shipped_onnx) as predictor:
        assert metadata["class_names"] == list(predictor.metadata.class_names)
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme and 'client.infer("mrcnn"' in readme
    assert "LD_PRELOAD" not in readme


def test_cli_writes_the_repository(shipped_onnx, tmp_path, capsys):
    from deploy_sdk.cli import main

    assert main(["triton-repo", str(shipped_onnx), "--out", str(tmp_path / "r")]) == 0
    config = _parse(tmp_path / "r" / "maskrcnn" / "config.pbtxt")
    assert config.max_batch_size == 8 and (tmp_path / "r" / "maskrcnn" / "1" / "model.onnx").is_file()
    assert "config.pbtxt" in capsys.readouterr().out


def _engine(path: Path, onnx_path: Path, profile: Dict[str, Dict[str, List[int]]]) -> bytes:
    import onnx

    from deploy_sdk.engine_file import EngineHeader, GpuIdentity, write_engine_file
    from deploy_sdk.model_metadata import ModelMetadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    plan = b"not a real plan, but bytes Triton would load" * 10
    header = EngineHeader(ModelMetadata.from_props(props), "10.13.0", GpuIdentity("NVIDIA H200", "9.0"), profile)
    write_engine_file(path, plan, header)
    return plan


def test_engine_repository_is_a_tensorrt_plan_with_the_plugin(shipped_onnx, tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is importable: the writer would ask it to deserialize this fake plan")
    except ImportError:
        pass
    profile = {
        "images": {"min": [1, 3, 64, 64], "opt": [2, 3, 512, 512], "max": [4, 3, 512, 512]},
        "image_sizes": {"min": [1, 2], "opt": [2, 2], "max": [4, 2]},
    }
    engine = tmp_path / "model.engine"
    plan = _engine(engine, shipped_onnx, profile)
    plugin = tmp_path / "libmaskrcnn_roi_align.so"
    plugin.write_bytes(b"\x7fELF a plugin library")
    config_path = write_triton_repository(engine, tmp_path / "repo", max_batch_size=8, plugin_library=plugin)
    config = _parse(config_path)
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
    assert config.max_batch_size == 4  # capped by the engine's profile
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
    # The engine's I/O is the ONNX graph's (it was built from one): the same names, types and shapes.
    inputs, outputs = _onnx_io(shipped_onnx)
    assert _declared(config.input) == inputs
    assert _declared(config.output) == outputs
    # The bare plan (Triton does not know the SDK's header) and the plugin library beside it, named in the
    # config's comments and the README for LD_PRELOAD / --backend-config.
    assert (tmp_path / "repo" / "maskrcnn" / "1" / "model.plan").read_bytes() == plan
    copied = tmp_path / "repo" / "plugins" / plugin.name
    assert copied.read_bytes() == plugin.read_bytes()
    text = config_path.read_text()
    assert f"LD_PRELOAD=<repo>/plugins/{plugin.name}" in text and "--backend-config=tensorrt,plugins=" in text
    assert "10.13.0" in text and "NVIDIA H200" in text
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert f"LD_PRELOAD={copied.resolve()}" in readme
    # The header does not record the images type: without TensorRT to ask, float32 is assumed and said so;
    # images_dtype names it for an engine built from a uint8 graph.
    assert "images assumed float32" in text
    config = _parse(write_triton_repository(engine, tmp_path / "repo8", plugin_library=plugin, images_dtype="uint8"))
    assert [(t.name, mc.DataType.Name(t.data_type)) for t in config.input] == [
        ("images", "TYPE_UINT8"),
        ("image_sizes", "TYPE_INT64"),
    ]


def test_bad_inputs_get_one_line_errors(shipped_onnx, tmp_path):
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    cases = [
        (tmp_path / "missing.onnx", {}, "not found"),
        (other, {}, "export or build the model first"),
        (shipped_onnx, {"name": "a/b"}, "plain folder name"),
        (shipped_onnx, {"max_batch_size": 0}, "positive"),
    ]
    for model, kwargs, words in cases:
        with pytest.raises(DeploySdkError, match=words) as info:
            write_triton_repository(model, tmp_path / "repo", **kwargs)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "repo").exists()
