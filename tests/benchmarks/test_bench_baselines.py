"""The benchmark baselines do what the torchvision model does: torch-eager and torchvision's own ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compare import EXACT, TORCHVISION_ONNX_MASK_PIXELS, TORCHVISION_ONNX_VS_MODULE, assert_close  # noqa: E402
from tiny_maskrcnn import build_tiny_maskrcnn  # noqa: E402

from deploy_sdk.benchmarks.baselines import TorchEagerSystem, TorchvisionOnnxSystem, export_torchvision_onnx  # noqa: E402
from deploy_sdk.benchmarks.commands.bench import bench_images  # noqa: E402
from deploy_sdk.benchmarks.harness import CpuClock, run_side_by_side  # noqa: E402

NAMES = ["__background__", "a", "b"]
SIZE = (120, 150)


def tiny_maskrcnn():
    """A random-weight ResNet-18-FPN Mask R-CNN, narrower still than the export tests' (fast on two cores)."""
    return build_tiny_maskrcnn(seed=0, num_classes=3, width=16)


@pytest.fixture(scope="module")
def model():
    return tiny_maskrcnn()


@pytest.fixture(scope="module")
def images():
    return bench_images(3, SIZE, seed=5)


@pytest.fixture(scope="module")
def reference(model, images):
    # The independent reference: the torchvision module called the ordinary way.
    with torch.no_grad():
        return model([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255 for im in images])


def test_bench_images_are_deterministic_and_sized():
    a = bench_images(2, (100, 140), seed=1)
    b = bench_images(2, (100, 140), seed=1)
    assert [im.shape for im in a] == [(100, 140, 3)] * 2 and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])


def _assert_matches_reference(dets, reference, images, tol, mask_pixels=0.0):
    for det, ref, im in zip(dets, reference, images):
        assert det.image_size == im.shape[:2]
        assert len(det) == len(ref["scores"]) > 0
        assert_close(det.boxes, ref["boxes"], tol=tol, what="boxes")
        assert_close(det.scores, ref["scores"], tol=tol, what="scores")
        np.testing.assert_array_equal(det.labels, ref["labels"].numpy())
        assert det.masks.dtype == bool and det.masks.shape == (len(det),) + im.shape[:2]
        mismatch = np.mean(det.masks != (ref["masks"][:, 0].numpy() > 0.5))
        assert mismatch <= mask_pixels, f"pasted masks differ on {mismatch:.2%} of pixels"


def test_torch_eager_replays_the_module_forward(model, images, reference):
    system = TorchEagerSystem(model, NAMES)
    clock = CpuClock()
    clock.start()
    dets = system.run(images, clock)
    times = clock.stop()
    assert set(times) == {"preprocess", "inference", "postprocess", "total"}
    assert sum(times[s] for s in ("preprocess", "inference", "postprocess")) <= times["total"] + 1e-6
    _assert_matches_reference(dets, reference, images, tol=EXACT)
    assert dets[0].class_names == NAMES


@pytest.mark.slow
def test_torchvision_onnx_matches_the_module_at_the_traced_size(model, images, reference, tmp_path):
    path = export_torchvision_onnx(model, tmp_path / "tv.onnx", sample_hw=SIZE)
    assert not list(tmp_path.glob("*.partial"))
    system = TorchvisionOnnxSystem(path, NAMES, threads=2)
    clock = CpuClock()
    clock.start()
    dets = system.run(images, clock)
    clock.stop()
    _assert_matches_reference(
        dets, reference, images, tol=TORCHVISION_ONNX_VS_MODULE, mask_pixels=TORCHVISION_ONNX_MASK_PIXELS
    )

    # Both baselines side by side through the harness, two batch sizes.
    results = run_side_by_side(
        [system, TorchEagerSystem(model, NAMES)], images, [1, 2], warmup=1, iters=2, progress=False
    )
    assert [(r.system, r.batch_size) for r in results] == [
        ("torchvision-onnx", 1),
        ("torch-eager", 1),
        ("torchvision-onnx", 2),
        ("torch-eager", 2),
    ]
    for r in results:
        assert r.latency.count == 2 and r.latency.p50_ms > 0
        assert r.detections_per_image == pytest.approx(100.0)  # random weights: the per-image cap is reached


@pytest.mark.slow
def test_torchvision_onnx_on_openvino_matches_the_module(model, images, reference, tmp_path):
    """torchvision's own export compiled by OpenVINO (``torchvision-onnx-openvino``) does what the module does."""
    pytest.importorskip("openvino", reason="the torchvision-onnx-openvino baseline needs the 'openvino' package")
    from deploy_sdk.benchmarks.baselines import TorchvisionOpenVinoSystem

    path = export_torchvision_onnx(model, tmp_path / "tv.onnx", sample_hw=SIZE)
    system = TorchvisionOpenVinoSystem(path, NAMES, threads=2)
    assert int(system.compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    clock = CpuClock()
    clock.start()
    dets = system.run(images, clock)
    times = clock.stop()
    assert {"preprocess", "inference", "postprocess"} <= set(times)
    _assert_matches_reference(
        dets, reference, images, tol=TORCHVISION_ONNX_VS_MODULE, mask_pixels=TORCHVISION_ONNX_MASK_PIXELS
    )
