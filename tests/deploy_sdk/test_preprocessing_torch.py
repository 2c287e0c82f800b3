"""Pre-processing on the backend's device (deploy_sdk.preprocessing_torch), run here on the CPU device.

The reference is torchvision's own GeneralizedRCNNTransform (resize + batch_images, with identity normalization);
the numpy path (deploy_sdk.preprocessing.prepare_batch) must lay the batch out identically. The same code runs on
a CUDA device for the tensorrt backend and the torch backend on CUDA; that run is the needs_cuda test below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import PIXELS_OTHER_KERNEL, PIXELS_SAME_KERNEL, assert_close
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from toy_deployment_graph import write_toy_graph

from deploy_sdk import DeploySdkError, Predictor
from deploy_sdk.backends.base import Backend
from deploy_sdk.preprocessing import prepare_batch
from deploy_sdk.preprocessing_torch import prepare_batch_torch

SHAPES = [(300, 200), (123, 456), (500, 510), (384, 512)]  # the last one is scale 1


def _images(shapes, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in shapes]


def test_matches_torchvision_transform_and_the_numpy_layout():
    images = _images(SHAPES)
    transform = GeneralizedRCNNTransform(384, 512, [0.0] * 3, [1.0] * 3)
    ref, _ = transform([torch.from_numpy(i).permute(2, 0, 1).float() for i in images])
    batch = prepare_batch_torch(images, 384, 512, device="cpu")
    assert isinstance(batch.images, torch.Tensor) and batch.images.dtype == torch.float32
    assert tuple(batch.images.shape) == tuple(ref.tensors.shape)
    assert [tuple(s) for s in batch.image_sizes.tolist()] == [tuple(s) for s in ref.image_sizes]
    assert batch.image_sizes.dtype == np.int64
    # torchvision's kernel and ours are the same interpolate call: equal to float32 rounding of the kernel.
    assert_close(batch.images, ref.tensors, tol=PIXELS_SAME_KERNEL, what="canvas vs torchvision")
    host = prepare_batch(images, 384, 512)
    assert host.images.shape == tuple(batch.images.shape)
    np.testing.assert_array_equal(host.image_sizes, batch.image_sizes)
    assert host.original_sizes == batch.original_sizes == list(SHAPES)
    assert_close(batch.images, host.images, tol=PIXELS_SAME_KERNEL, what="canvas vs numpy path")


def test_uint8_and_fixed_canvas_follow_the_numpy_path():
    images = _images([(200, 300), (90, 400)], seed=5)
    host = prepare_batch(images, 64, 128, fixed=(64, 96), dtype=np.uint8)
    dev = prepare_batch_torch(images, 64, 128, device="cpu", fixed=(64, 96), dtype=np.uint8)
    assert dev.images.dtype == torch.uint8 and tuple(dev.images.shape) == host.images.shape == (2, 3, 64, 96)
    np.testing.assert_array_equal(dev.image_sizes, host.image_sizes)
    diff = np.abs(dev.images.numpy().astype(np.int16) - host.images.astype(np.int16))
    # The two kernels sum in different orders (1e-5 apart): a value at exactly .5 may round either way.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


class _DeviceEcho(Backend):
    """Takes device tensors and records what it was given; returns no detections."""

    name = "device-echo"
    device_inputs = True

    def __init__(self, metadata, device="cpu"):
        self.metadata, self.device, self.seen = metadata, device, []

    def _infer(self, images, image_sizes):
        self.seen.append(images)
        b = int(images.shape[0])
        return {
            "num_detections": np.zeros(b, np.int32),
            "boxes": np.zeros((b, 1, 4), np.float32),
            "scores": np.zeros((b, 1), np.float32),
            "labels": np.zeros((b, 1), np.int32),
            "masks": np.zeros((b, 1, 28, 28), np.float32),
        }


def test_predictor_hands_device_tensors_to_backends_that_take_them(tmp_path):
    from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend

    metadata = OnnxRuntimeBackend(write_toy_graph(tmp_path / "toy.onnx")).metadata
    images = _images([(100, 80), (64, 64), (70, 90)], seed=9)
    backend = _DeviceEcho(metadata)
    pred = Predictor(backend, batch_size=2, preprocess="torch")
    assert pred.preprocess == "torch"
    pred.predict(images)
    assert [type(t) for t in backend.seen] == [torch.Tensor, torch.Tensor]
    expected = prepare_batch(images[:2], int(metadata.min_size), int(metadata.max_size), int(metadata.size_divisible))
    assert_close(backend.seen[0], expected.images, tol=PIXELS_SAME_KERNEL, what="first batch")
    # "auto" keeps numpy pre-processing on a CPU backend; a tensor of another device is refused.
    assert Predictor(_DeviceEcho(metadata)).preprocess == "numpy"
    other = _DeviceEcho(metadata, device="cuda:0")
    with pytest.raises(DeploySdkError, match="tensor on cpu but the backend runs on cuda:0"):
        other.infer(torch.zeros(1, 3, 32, 32), np.array([[32, 32]], np.int64))


def test_preprocess_option_errors(tmp_path):
    model = write_toy_graph(tmp_path / "toy.onnx")
    with pytest.raises(DeploySdkError, match="takes numpy arrays: use preprocess='numpy'"):
        Predictor(model, preprocess="torch")
    with pytest.raises(DeploySdkError, match="preprocess must be one of auto, numpy, torch"):
        Predictor(model, preprocess="gpu")


def test_torch_backend_gives_the_same_detections_with_either_preprocessing():
    from fixtures_models import parity_failures
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.torch_backend import TorchBackend

    loaded = load_torchvision_model(build_tiny_maskrcnn())
    images = [np.random.default_rng(i).integers(0, 256, (120 + 10 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    backend = TorchBackend(loaded, device="cpu")
    numpy_path = Predictor(backend, batch_size=2, preprocess="numpy").predict(images)
    torch_path = Predictor(backend, batch_size=2, preprocess="torch").predict(images)
    assert sum(len(d) for d in numpy_path) > 0
    assert not parity_failures(numpy_path, torch_path, min_score=0.0, score_diff=1e-3)


@pytest.mark.needs_cuda
def test_cuda_preprocessing_matches_cpu_and_is_the_gpu_default():
    images = _images(SHAPES, seed=4)
    cpu = prepare_batch_torch(images, 384, 512, device="cpu")
    gpu = prepare_batch_torch(images, 384, 512, device="cuda")
    assert gpu.images.device.type == "cuda"
    assert_close(gpu.images.cpu(), cpu.images, tol=PIXELS_OTHER_KERNEL, what="cuda vs cpu canvas")
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.torch_backend import TorchBackend

    pred = Predictor(TorchBackend(load_torchvision_model(build_tiny_maskrcnn()), device="cuda"))
    assert pred.preprocess == "torch"
