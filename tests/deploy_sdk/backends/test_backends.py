"""The backend base class's input checks and the ONNX Runtime / torch backends' own errors and settings."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from repo_paths import REPO_ROOT
from toy_deployment_graph import toy_metadata, write_toy_graph

from deploy_sdk import DeploySdkError, EngineError, MissingDependencyError, Predictor
from deploy_sdk.backends.base import OUTPUT_NAMES, Backend, parse_device
from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend


class _EchoBackend(Backend):
    """Returns zeros of the contract's shapes; records what it was given."""

    name = "echo"

    def __init__(self, max_batch_size=None, fixed_size=None, drop=None):
        self.metadata = toy_metadata()
        self.max_batch_size, self.fixed_size, self.drop = max_batch_size, fixed_size, drop

    def _infer(self, images, image_sizes):
        b = images.shape[0]
        out = {
            "num_detections": np.zeros(b, np.int32),
            "boxes": np.zeros((b, 3, 4), np.float32),
            "scores": np.zeros((b, 3), np.float32),
            "labels": np.zeros((b, 3), np.int32),
            "masks": np.zeros((b, 3, 28, 28), np.float32),
        }
        if self.drop:
            out.pop(self.drop)
        return out


def _batch(b=2, h=64, w=96, dtype=np.float32):
    return np.zeros((b, 3, h, w), dtype), np.array([[h, w]] * b, np.int64)


@pytest.mark.parametrize(
    "images, sizes, message",
    [
        (np.zeros((3, 64, 64), np.float32), np.array([[64, 64]]), r"\[B, 3, H, W\]"),
        (np.zeros((1, 3, 64, 64), np.uint8), np.array([[64, 64]]), "images are uint8 but the model takes float32"),
        (np.zeros((1, 3, 64, 64), np.float32), np.array([[64, 64]], np.int32), "image_sizes must be"),
        (np.zeros((2, 3, 64, 64), np.float32), np.array([[64, 64]]), r"image_sizes must be \[2, 2\]"),
        (np.zeros((1, 3, 64, 64), np.float32), np.array([[65, 64]]), "within the 64x64 canvas"),
        (np.zeros((1, 3, 64, 70), np.float32), np.array([[64, 64]]), "not a multiple of 32"),
        (np.zeros((0, 3, 64, 64), np.float32), np.zeros((0, 2), np.int64), "empty batch"),
    ],
)
def test_base_class_checks_inputs(images, sizes, message):
    with pytest.raises(DeploySdkError, match=message):
        _EchoBackend().infer(images, sizes)


def test_base_class_limits_and_outputs():
    with pytest.raises(DeploySdkError, match="exceeds the model's maximum batch size 2"):
        _EchoBackend(max_batch_size=2).infer(*_batch(3))
    with pytest.raises(DeploySdkError, match="built for 64x64 only"):
        _EchoBackend(fixed_size=(64, 64)).infer(*_batch(1, 64, 96))
    with pytest.raises(EngineError, match=r"did not return the outputs \['masks'\]"):
        _EchoBackend(drop="masks").infer(*_batch())
    out = _EchoBackend().infer(*_batch())
    assert list(out) == list(OUTPUT_NAMES)


def test_predictor_caps_batch_size_at_the_backend_maximum():
    pred = Predictor(_EchoBackend(max_batch_size=2), batch_size=8)
    assert pred.batch_size == 2
    dets = pred.predict([np.full((40, 50, 3), 9, np.uint8)] * 5)
    assert len(dets) == 5 and all(len(d) == 0 for d in dets)


def test_parse_device():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("CUDA") == ("cuda", 0)
    assert parse_device("cuda:3") == ("cuda", 3)
    with pytest.raises(DeploySdkError, match="device must be"):
        parse_device("cuda:x")


def test_onnxruntime_backend_reads_the_model(tmp_path):
    backend = OnnxRuntimeBackend(write_toy_graph(tmp_path / "m.onnx"), threads=1)
    assert backend.metadata == toy_metadata()
    assert backend.input_dtype == np.float32 and backend.max_batch_size is None and backend.fixed_size is None
    assert backend.thread_safe
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 1
    import onnxruntime as ort

    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    out = backend.infer(np.full((2, 3, 64, 96), 5, np.float32), np.array([[64, 96], [32, 64]], np.int64))
    np.testing.assert_array_equal(out["num_detections"], [2, 2])
    np.testing.assert_allclose(out["boxes"][1, 0], [16, 16, 48, 32])  # (0.25, 0.5, 0.75, 1.0) of 64 wide, 32 high


def test_onnxruntime_backend_errors(tmp_path):
    with pytest.raises(EngineError, match="ONNX model not found.*maskrcnn-deploy export"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(EngineError, match="ONNX Runtime cannot load"):
        OnnxRuntimeBackend(tmp_path / "junk.onnx")
    with pytest.raises(EngineError, match="carries no maskrcnn-deploy metadata.*export"):
        OnnxRuntimeBackend(write_toy_graph(tmp_path / "nometa.onnx", with_metadata=False))
    model = onnx.load(str(write_toy_graph(tmp_path / "m.onnx")))
    model.graph.output.pop()  # drop "masks": no longer the contract
    onnx.save(model, str(tmp_path / "nomasks.onnx"))
    with pytest.raises(EngineError, match="is not a deployment graph"):
        OnnxRuntimeBackend(tmp_path / "nomasks.onnx")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MissingDependencyError, match=r"onnxruntime-gpu.*maskrcnn-deploy\[gpu\]"):
            OnnxRuntimeBackend(write_toy_graph(tmp_path / "m.onnx"), device="cuda")


def test_torch_backend_without_torch_names_the_convert_extra(monkeypatch, tmp_path):
    from deploy_sdk.conversion.torch_backend import TorchBackend

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"torch backend.*maskrcnn-deploy\[convert\]"):
        TorchBackend(tmp_path / "model.safetensors")


def test_backends_are_found_by_name_in_the_registry(monkeypatch, tmp_path):
    """``Predictor(..., backend="torch")`` reaches the conversion layer's torch backend through the registry's
    "module:Class" string; a missing torch or conversion package names the ``convert`` extra."""
    from deploy_sdk.backends import REGISTRY, backend_class
    from deploy_sdk.conversion.torch_backend import TorchBackend

    assert backend_class("torch") is TorchBackend and backend_class("onnxruntime") is OnnxRuntimeBackend
    assert set(REGISTRY) == {"onnxruntime", "tensorrt", "openvino", "torch"}
    with pytest.raises(DeploySdkError, match="unknown backend 'nope'"):
        backend_class("nope")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"torch backend.*'torch'.*maskrcnn-deploy\[convert\]"):
        Predictor(ckpt, backend="torch")
    monkeypatch.setitem(sys.modules, "deploy_sdk.conversion.torch_backend", None)
    with pytest.raises(MissingDependencyError, match=r"torch backend.*maskrcnn-deploy\[convert\]"):
        Predictor(ckpt)  # backend from the suffix


def test_import_deploy_sdk_needs_no_torch(tmp_path):
    """``import deploy_sdk`` and the ONNX Runtime path work with torch and tensorrt unimportable."""
    import subprocess

    model = write_toy_graph(tmp_path / "m.onnx")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
        "import numpy as np, deploy_sdk\n"
        f"p = deploy_sdk.Predictor({str(model)!r})\n"
        "d = p.predict(np.full((50, 60, 3), 3, np.uint8))\n"
        "assert len(d) == 2, d\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stderr


def test_torch_backend_makes_every_tensor_on_its_device():
    """The CPU stand-in for the GPU run below: with the default device set to ``meta``, a tensor made without
    ``device=`` anywhere on the torch backend's path (GPU pre-processing, the deployment module, torch mask
    pasting) becomes a meta tensor and fails the run or changes its results. On CUDA, such a tensor is a CPU
    tensor, which broke the torch backend there."""
    torch = pytest.importorskip("torch")
    from fixtures_models import parity_failures
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.torch_backend import TorchBackend

    loaded = load_torchvision_model(build_tiny_maskrcnn())
    images = [np.random.default_rng(i).integers(0, 256, (120 + 10 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    for mask_format in ("full", "rle"):
        predictor = Predictor(
            TorchBackend(loaded, device="cpu"), batch_size=2, preprocess="torch", mask_format=mask_format
        )
        expected = predictor.predict(images)
        torch.set_default_device("meta")
        try:
            got = predictor.predict(images)
        finally:
            torch.set_default_device(None)
        assert sum(len(d.scores) for d in expected) > 0
        assert not parity_failures(expected, got, min_score=0.0, score_diff=0.0)


@pytest.mark.needs_cuda
def test_torch_backend_cuda_matches_cpu(tmp_path):
    """GPU check of the torch backend (deployment module + GPU mask pasting) against its own CPU run."""
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.torch_backend import TorchBackend

    loaded = load_torchvision_model(build_tiny_maskrcnn())
    images = [np.random.default_rng(i).integers(0, 256, (120 + 10 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    cpu = Predictor(TorchBackend(loaded, device="cpu"), batch_size=2).predict(images)
    gpu = Predictor(TorchBackend(loaded, device="cuda"), batch_size=2).predict(images)
    from fixtures_models import parity_failures

    assert not parity_failures(cpu, gpu, min_score=0.0, score_diff=1e-3)
