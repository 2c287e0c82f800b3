"""`maskrcnn-deploy build`: everything up to the TensorRT calls, then the calls themselves against a recording fake.

The tests run where TensorRT is not installed. The fake module below implements only the calls
``deploy_sdk.conversion.tensorrt_build`` makes (names and signatures checked against the tensorrt-stubs package by
mypy: ``test_tensorrt_calls_type_check_against_stubs`` in test_backends_tensorrt.py) and records them, so the tests
check what is asked of TensorRT: network flags per major version, the plugin library loaded and its creator looked
up, the profile, the workspace, the timing cache, the graph handed to the parser (RoIAlign function stripped, node
kept), parse errors, and the engine file written with its metadata.
The real build runs in ``test_real_tensorrt_build`` (needs_tensorrt).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest
from precision_toy_graph import TOY_OP, make_toy_graph, toy_metadata

from deploy_sdk.cli import main as cli_main
from deploy_sdk.conversion import tensorrt_build
from deploy_sdk.conversion.tensorrt_build import BuildOptions, ProfileSpec, build_engine, parse_hw, profile_shapes
from deploy_sdk.engine_file import GpuIdentity, read_engine_file
from deploy_sdk.errors import DeploySdkError, EngineError, MissingDependencyError, PluginError


# ------------------------------------------------------------------------------------------ profile from options
def test_default_profile_covers_the_models_canvas_range():
    shapes = profile_shapes(ProfileSpec(), toy_metadata())  # max_size 96, stride 32
    assert shapes == {
        "images": {"min": [1, 3, 32, 32], "opt": [1, 3, 96, 96], "max": [1, 3, 96, 96]},
        "image_sizes": {"min": [1, 2], "opt": [1, 2], "max": [1, 2]},
    }
    md = toy_metadata()
    md.max_size = 1333  # not a multiple of 32: the largest canvas rounds up, as the runtime pads
    assert profile_shapes(ProfileSpec(), md)["images"]["max"] == [1, 3, 1344, 1344]


def test_profile_from_options():
    spec = ProfileSpec(
        min_batch=1, opt_batch=2, max_batch=8, min_shape=(64, 64), opt_shape=(384, 512), max_shape=(512, 512)
    )
    shapes = profile_shapes(spec, toy_metadata())
    assert shapes["images"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 384, 512], "max": [8, 3, 512, 512]}
    assert shapes["image_sizes"] == {"min": [1, 2], "opt": [2, 2], "max": [8, 2]}
    # opt/max batch default to the batch below them
    assert profile_shapes(ProfileSpec(min_batch=4), toy_metadata())["images"]["max"][0] == 4


@pytest.mark.parametrize(
    "spec, message",
    [
        (ProfileSpec(min_batch=0), "1 <= --min-batch"),
        (ProfileSpec(min_batch=4, opt_batch=2, max_batch=8), "--opt-batch"),
        (ProfileSpec(max_shape=(500, 512)), "not a multiple of 32.*512x512"),
        (ProfileSpec(min_shape=(128, 128), opt_shape=(64, 64), max_shape=(256, 256)), "height must satisfy"),
    ],
)
def test_inconsistent_profile_options_are_refused(spec, message):
    with pytest.raises(DeploySdkError, match=message):
        profile_shapes(spec, toy_metadata())


def test_fixed_size_graph_profile():
    md = toy_metadata()
    md.fixed_height, md.fixed_width = 320, 480
    shapes = profile_shapes(ProfileSpec(max_batch=2), md)
    assert shapes["images"] == {"min": [1, 3, 320, 480], "opt": [1, 3, 320, 480], "max": [2, 3, 320, 480]}
    with pytest.raises(DeploySdkError, match="fixed input size 320x480"):
        profile_shapes(ProfileSpec(max_shape=(512, 512)), md)


def test_parse_hw():
    assert parse_hw("384x512") == (384, 512)
    assert parse_hw("640") == (640, 640)
    with pytest.raises(DeploySdkError, match="HEIGHTxWIDTH"):
        parse_hw("big")


# --------------------------------------------------------------------------------------------- missing TensorRT
def test_missing_tensorrt_names_the_build_and_the_extra(tmp_path, monkeypatch):
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    options = BuildOptions(ProfileSpec(), plugin_library=tmp_path / "never-read.so")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingDependencyError, match=r"^building a TensorRT engine needs TensorRT and an NVIDIA GPU"):
        build_engine(src, tmp_path / "m.engine", options)
    # tensorrt-stubs alone leaves an importable, empty namespace package: still "missing"
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(MissingDependencyError, match=r"^building a TensorRT engine needs .*only its type stubs"):
        build_engine(src, tmp_path / "m.engine", options)
    assert not (tmp_path / "m.engine").exists()


def test_cli_build_without_tensorrt_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    assert cli_main(["build", str(src), "-o", str(tmp_path / "m.engine")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt" in err and "maskrcnn-deploy[gpu]" in err
    assert not (tmp_path / "m.engine").exists()


def test_not_a_deployment_graph(tmp_path):
    model = make_toy_graph()
    model.graph.input[1].name = "sizes"
    model.graph.node[-3].input[0] = "sizes"
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="graph inputs"):
        tensorrt_build.read_graph(path)
    with pytest.raises(EngineError, match="does not exist"):
        tensorrt_build.read_graph(tmp_path / "none.onnx")


# ------------------------------------------------------------------------------------------ recording fake TRT
class _Calls(list):
    def named(self, name):
        return [c for c in self if c[0] == name]


def _fake_tensorrt(version: str, calls: _Calls, parse_errors=(), build_fails=False, creator=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        VERBOSE, WARNING = "verbose", "warning"

        def __init__(self, severity):
            calls.append(("logger", severity))

    class Registry:
        def load_library(self, path):
            calls.append(("load_library", path))
            return object()  # TensorRT's IPluginLibrary handle; None when loading fails

        def get_creator(self, name, version, namespace):
            calls.append(("get_creator", name, version, namespace))
            return object() if creator else None

    class Dims(list):
        pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, list(lo), list(opt), list(hi)))

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_cache", bytes(data)))
            self._cache = Cache(data)
            return self._cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self._cache

    class Error:
        def __init__(self, name, op, desc):
            self._v = (name, op, desc)

        def node_name(self):
            return self._v[0]

        def node_operator(self):
            return self._v[1]

        def desc(self):
            return self._v[2]

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, data, path):
            calls.append(("parse", onnx.load_from_string(bytes(data)), path))
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, index):
            return Error(*parse_errors[index])

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", 40)
            monitor.phase_start("layer 17", "Tactic selection", 3)  # depth 2: not printed
            assert monitor.step_complete("layer 17", 0) is True
            monitor.phase_finish("layer 17")
            monitor.phase_finish("Tactic selection")
            monitor.phase_finish("Building engine")
            return None if build_fails else memoryview(b"PLAN" + bytes(range(16)))

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.Logger = Logger
    trt.Dims = Dims
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.IProgressMonitor = IProgressMonitor
    trt.get_plugin_registry = Registry
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    return trt


@pytest.fixture
def toy_onnx(tmp_path, monkeypatch):
    path = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(path))
    plugin = tmp_path / "libplugin.so"
    plugin.write_bytes(b"\x7fELF")
    monkeypatch.setattr(tensorrt_build, "current_gpu", lambda: GpuIdentity("NVIDIA H100 80GB HBM3", "9.0"))
    return path, plugin


def _install(monkeypatch, trt):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)


def test_build_with_tensorrt_10_records_the_expected_calls(toy_onnx, tmp_path, monkeypatch, capsys):
    src, plugin = toy_onnx
    calls = _Calls()
    _install(monkeypatch, _fake_tensorrt("10.13.0.35", calls))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    engine = tmp_path / "out" / "m.engine"
    options = BuildOptions(
        profile=ProfileSpec(max_batch=2, max_shape=(96, 96)),
        workspace_gb=1.5,
        timing_cache=cache,
        plugin_library=plugin,
    )
    header = build_engine(src, engine, options)

    assert calls.named("create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED on TensorRT 10
    assert calls.named("load_library") == [("load_library", str(plugin))]
    assert calls.named("get_creator") == [("get_creator", TOY_OP, "1", "")]
    ((_, parsed, path),) = calls.named("parse")
    assert path == str(src.resolve())
    assert not parsed.functions  # RoIAlign local function stripped ...
    assert [n.op_type for n in parsed.graph.node].count(TOY_OP) == 1  # ... node kept for the plugin
    assert calls.named("set_shape") == [
        ("set_shape", "images", [1, 3, 32, 32], [1, 3, 96, 96], [2, 3, 96, 96]),
        ("set_shape", "image_sizes", [1, 2], [1, 2], [2, 2]),
    ]
    assert calls.named("pool") == [("pool", "workspace", int(1.5 * 2**30))]
    assert calls.named("create_cache") == [("create_cache", b"old")]
    assert cache.read_bytes() == b"old+timed"

    read_header, plan = read_engine_file(engine)
    assert plan == b"PLAN" + bytes(range(16))
    assert read_header.metadata == toy_metadata()
    assert read_header.tensorrt_version == "10.13.0.35" and read_header.gpu.compute_capability == "9.0"
    assert read_header.profile["images"]["max"] == [2, 3, 96, 96]
    assert header.engine_sha256 == read_header.engine_sha256
    err = capsys.readouterr().err
    assert "Building engine (2 steps)" in err and "Tactic selection done" in err and "layer 17" not in err


def test_build_with_tensorrt_11_sets_no_network_flag(toy_onnx, tmp_path, monkeypatch):
    src, plugin = toy_onnx
    calls = _Calls()
    _install(monkeypatch, _fake_tensorrt("11.0.0.9", calls))
    build_engine(src, tmp_path / "m.engine", BuildOptions(ProfileSpec(), plugin_library=plugin))
    assert calls.named("create_network") == [("create_network", 0)]  # strongly typed is the only mode
    assert calls.named("pool") == []  # no --workspace: TensorRT's default
    assert calls.named("create_cache") == [("create_cache", b"")]


def test_parse_errors_name_every_node_and_op(toy_onnx, tmp_path, monkeypatch):
    src, plugin = toy_onnx
    errors = [("/roi_heads/box_roi_pool", TOY_OP, "no plugin creator"), ("/postprocess/topk", "TopK", "k too big")]
    _install(monkeypatch, _fake_tensorrt("10.13.0.35", _Calls(), parse_errors=errors))
    with pytest.raises(EngineError) as info:
        build_engine(src, tmp_path / "m.engine", BuildOptions(ProfileSpec(), plugin_library=plugin))
    text = str(info.value)
    assert f"node '/roi_heads/box_roi_pool' (op {TOY_OP}): no plugin creator" in text
    assert "node '/postprocess/topk' (op TopK): k too big" in text
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_and_missing_creator_leave_no_engine(toy_onnx, tmp_path, monkeypatch):
    src, plugin = toy_onnx
    _install(monkeypatch, _fake_tensorrt("10.13.0.35", _Calls(), build_fails=True))
    with pytest.raises(EngineError, match="failed to build"):
        build_engine(src, tmp_path / "m.engine", BuildOptions(ProfileSpec(), plugin_library=plugin))
    _install(monkeypatch, _fake_tensorrt("10.13.0.35", _Calls(), creator=False))
    with pytest.raises(PluginError, match="no 'MultiLevelRoIAlign' version 1 creator"):
        build_engine(src, tmp_path / "m.engine", BuildOptions(ProfileSpec(), plugin_library=plugin))
    with pytest.raises(PluginError, match=r"'MultiLevelRoIAlign' was not found at .*nope\.so"):
        build_engine(src, tmp_path / "m.engine", BuildOptions(ProfileSpec(), plugin_library=tmp_path / "nope.so"))
    assert list(tmp_path.glob("*.engine")) == [] and list(tmp_path.glob(".m.engine*")) == []


def test_cli_build_with_fake_tensorrt(toy_onnx, tmp_path, monkeypatch, capsys):
    src, plugin = toy_onnx
    _install(monkeypatch, _fake_tensorrt("10.13.0.35", _Calls()))
    out = tmp_path / "m.engine"
    argv = ["build", str(src), "-o", str(out), "--max-batch", "4", "--max-shape", "96x96", "--plugin", str(plugin)]
    assert cli_main(argv) == 0
    assert "TensorRT 10.13.0.35" in capsys.readouterr().out
    assert read_engine_file(out)[0].profile["image_sizes"]["max"] == [4, 2]
    assert cli_main(["build", str(src), "-o", str(out), "--max-shape", "100x96", "--plugin", str(plugin)]) == 1


# ------------------------------------------------------------------------------------------------- real TensorRT
@pytest.mark.needs_tensorrt
@pytest.mark.slow
def test_real_tensorrt_build(tmp_path):
    """Export a tiny random-weight model, build it with the real TensorRT and plugin, deserialize the engine."""
    import tensorrt as trt
    import torch

    from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn
    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.export import export_onnx
    from deploy_sdk.engine_file import check_engine_compatible, current_gpu

    torch.manual_seed(0)
    model = build_resnet_fpn_maskrcnn(
        ArchConfig(
            "resnet18_fpn",
            num_classes=3,
            fpn_channels=32,
            box_head_dim=64,
            mask_head_dims=(32,),
            mask_predictor_dim=32,
            min_size=128,
            max_size=160,
        )
    ).eval()
    src = tmp_path / "tiny.onnx"
    export_onnx(load_torchvision_model(model), src)
    engine = tmp_path / "tiny.engine"
    build_engine(src, engine, BuildOptions(ProfileSpec(max_batch=2, max_shape=(160, 160))))
    header, plan = read_engine_file(engine)
    check_engine_compatible(header, trt.__version__, current_gpu())
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    deserialized = runtime.deserialize_cuda_engine(plan)
    names = {deserialized.get_tensor_name(i) for i in range(deserialized.num_io_tensors)}
    assert {"images", "image_sizes", "num_detections", "boxes", "scores", "labels", "masks"} <= names
    assert np.asarray(header.profile["images"]["max"]).tolist() == [2, 3, 160, 160]
