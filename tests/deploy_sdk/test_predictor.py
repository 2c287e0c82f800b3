"""Predictor on the ONNX Runtime backend with a tiny contract-conforming graph (tests/toy_deployment_graph.py).

The toy graph's outputs are known in closed form, so expectations are hand-worked: box k of an image H×W is
TOY_BOX_FRACTIONS[k] * (W, H, W, H) in original pixels, and its mask is torchvision's paste of toy_masks()[k].
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from compare import TOY_BOX_HAND_WORKED, TOY_BOX_SCALING, assert_close
from PIL import Image
from torchvision.models.detection.roi_heads import paste_masks_in_image
from toy_deployment_graph import TOY_BOX_FRACTIONS, TOY_CLASSES, TOY_LABELS, TOY_SCORES, toy_masks, write_toy_graph

from deploy_sdk import DeploySdkError, Detections, InputImageError, Predictor
from deploy_sdk.preprocessing import resized_size


@pytest.fixture(scope="module")
def predictor(toy_graph):
    return Predictor(toy_graph, batch_size=4, threads=1)


def _image(h, w, value=90, seed=None):
    if seed is None:
        return np.full((h, w, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


def _expected_boxes(h, w):
    # In canvas pixels the graph returns fractions of the resized size; mapping back multiplies by original/resized.
    rh, rw = resized_size(h, w, 64, 128)
    canvas = TOY_BOX_FRACTIONS[:2] * np.array([rw, rh, rw, rh], np.float32)
    ratio = np.array([w / rw, h / rh, w / rw, h / rh], np.float32)
    return canvas * ratio


def _check_detections(det: Detections, h, w):
    assert det.image_size == (h, w)
    assert_close(det.boxes, _expected_boxes(h, w), tol=TOY_BOX_SCALING, what="boxes")
    assert_close(det.boxes, TOY_BOX_FRACTIONS[:2] * [w, h, w, h], tol=TOY_BOX_SCALING, what="boxes")
    np.testing.assert_array_equal(det.scores, TOY_SCORES[:2])
    np.testing.assert_array_equal(det.labels, TOY_LABELS[:2].astype(np.int64))
    assert det.labels.dtype == np.int64 and det.boxes.dtype == np.float32
    assert det.names == [TOY_CLASSES[1], TOY_CLASSES[3]]
    expected = paste_masks_in_image(torch.from_numpy(toy_masks()[:2, None]), torch.from_numpy(det.boxes), (h, w))
    np.testing.assert_array_equal(det.masks, expected[:, 0].numpy() > 0.5)


def test_one_image_hand_worked(predictor):
    det = predictor.predict(_image(100, 200))
    assert isinstance(det, Detections) and len(det) == 2
    # 100x200 at min 64 / max 128: scale 0.64 -> 64x128; box 0 = (0.25, 0.5, 0.75, 1.0) of that, times 1.5625.
    assert_close(det.boxes[0], [50.0, 50.0, 150.0, 100.0], tol=TOY_BOX_HAND_WORKED, what="box 0")
    _check_detections(det, 100, 200)
    assert set(predictor.last_stage_times) == {"preprocess", "inference", "postprocess"}


def test_seven_sizes_batched_in_order(predictor):
    sizes = [(100, 200), (37, 301), (480, 64), (64, 64), (129, 130), (300, 20), (5, 9)]
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    results = predictor.predict(images)  # batch_size 4: one full and one partial batch
    assert isinstance(results, list) and len(results) == 7
    for det, (h, w) in zip(results, sizes):
        _check_detections(det, h, w)
    singles = [predictor.predict(img) for img in images]
    for a, b in zip(results, singles):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_empty_image_content_gives_empty_detections(predictor):
    dets = predictor.predict([np.zeros((50, 70, 3), np.uint8), _image(50, 70)])
    assert len(dets[0]) == 0 and dets[0].masks.shape == (0, 50, 70) and dets[0].image_size == (50, 70)
    assert len(dets[1]) == 2
    assert dets[0].to_coco(1) == []


def test_input_forms_agree(predictor, tmp_path):
    rgb = _image(60, 90, seed=3)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    ref = predictor.predict(rgb)
    for other in (
        predictor.predict(str(tmp_path / "x.png")),
        predictor.predict(tmp_path / "x.png"),
        predictor.predict(Image.fromarray(rgb)),
        predictor.predict(np.stack([rgb, rgb]))[1],
        predictor.predict((rgb,))[0],
    ):
        np.testing.assert_array_equal(other.boxes, ref.boxes)
        np.testing.assert_array_equal(other.masks, ref.masks)


def test_bgr_gray_rgba(toy_graph, predictor):
    rgb = _image(40, 50, seed=4)
    bgr_predictor = Predictor(toy_graph, channel_order="bgr")
    np.testing.assert_array_equal(bgr_predictor.predict(rgb[:, :, ::-1].copy()).boxes, predictor.predict(rgb).boxes)
    gray = rgb[:, :, 1]
    _check_detections(predictor.predict(gray), 40, 50)
    rgba = np.dstack([rgb, np.zeros((40, 50), np.uint8)])
    _check_detections(predictor.predict(rgba), 40, 50)


def test_float_and_empty_images_are_refused_by_name(predictor):
    with pytest.raises(InputImageError, match=r"image 1: dtype float32 is not supported.*\* 255"):
        predictor.predict([_image(10, 10), np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(InputImageError, match="image 0: image is empty"):
        predictor.predict(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(InputImageError, match="not found"):
        predictor.predict("/nonexistent/image.jpg")


def test_huge_image(predictor):
    img = np.zeros((10000, 10000, 3), np.uint8)  # lazily mapped zeros; only sampled rows are read
    assert len(predictor.predict(img)) == 0
    img[4000:4400, 4000:4400] = 200  # wider than the 156-pixel sampling step of the resize to 64x64
    det = predictor.predict(img)
    assert_close(det.boxes, _expected_boxes(10000, 10000), tol=TOY_BOX_SCALING, what="boxes")
    assert det.masks.shape == (2, 10000, 10000)


@pytest.mark.parametrize("mask_format", ["box", "rle", "none"])
def test_mask_formats_agree_with_full_masks(toy_graph, predictor, mask_format):
    images = [_image(100, 200, seed=5), _image(33, 47, seed=6)]
    full = predictor.predict(images)
    other = Predictor(toy_graph, mask_format=mask_format).predict(images)
    for a, b in zip(full, other):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        if mask_format == "none":
            assert not b.has_masks and b.full_masks() is None
        else:
            np.testing.assert_array_equal(b.full_masks(), a.masks)
            assert a.to_coco(3) == b.to_coco(3)


def test_score_threshold_filters(toy_graph):
    det = Predictor(toy_graph, score_threshold=0.7).predict(_image(30, 30))
    assert det.scores.tolist() == pytest.approx([0.9]) and det.masks.shape == (1, 30, 30)


def test_predict_iter_streams_in_order(predictor, tmp_path):
    sizes = [(20 + 7 * i, 30 + 11 * i) for i in range(11)]
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    images[5] = np.zeros((25, 25, 3), np.uint8)
    Image.fromarray(images[2]).save(tmp_path / "two.png")
    inputs = list(images)
    inputs[2] = tmp_path / "two.png"
    streamed = list(predictor.predict_iter(iter(inputs), batch_size=3))
    assert len(streamed) == 11
    for det, ref in zip(streamed, predictor.predict(images)):
        assert det.image_size == ref.image_size
        np.testing.assert_array_equal(det.boxes, ref.boxes)
        np.testing.assert_array_equal(det.masks, ref.masks)
    assert len(streamed[5]) == 0


def test_predict_iter_reports_bad_input(predictor):
    with pytest.raises(InputImageError, match="image 4"):
        list(predictor.predict_iter([_image(10, 10)] * 4 + [np.zeros((3, 3), np.float64)], batch_size=2))


def test_four_threads_give_one_threads_results(predictor):
    images = [_image(30 + 13 * i, 80 - 5 * i, seed=i) for i in range(6)]
    expected = predictor.predict(images)
    failures = []

    def work():
        try:
            for _ in range(5):
                for det, ref in zip(predictor.predict(images), expected):
                    np.testing.assert_array_equal(det.boxes, ref.boxes)
                    np.testing.assert_array_equal(det.masks, ref.masks)
        except Exception as exc:  # collected and re-raised in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc (Linux only)")
def test_500_predictions_do_not_grow_memory(predictor):
    images = [_image(48, 64, seed=1), _image(64, 40, seed=2)]
    for _ in range(50):  # warm-up: allocator pools and ONNX Runtime arenas reach their steady size
        predictor.predict(images[0])
    before = _rss_mb()
    for i in range(500):
        predictor.predict(images[i % 2])
    growth = _rss_mb() - before
    assert growth < 50, f"resident memory grew by {growth:.1f} MB over 500 predictions"


def test_uint8_graph_input(tmp_path):
    model = write_toy_graph(tmp_path / "u8.onnx", input_type="uint8")
    pred = Predictor(model)
    assert pred.backend.input_dtype == np.uint8
    _check_detections(pred.predict(_image(100, 200)), 100, 200)


def test_fixed_size_graph(tmp_path):
    model = write_toy_graph(tmp_path / "fixed.onnx", fixed_size=(64, 96))
    pred = Predictor(model, batch_size=3)
    assert pred.backend.fixed_size == (64, 96)
    dets = pred.predict([_image(90, 300), _image(64, 64)])
    # 90x300 does not fit 64x96 at min 64/max 128 (38x128), so it is scaled down to 28x96 and boxes map back.
    assert_close(dets[0].boxes, TOY_BOX_FRACTIONS[:2] * [300, 90, 300, 90], tol=TOY_BOX_SCALING, what="boxes")


def test_predictor_argument_errors(toy_graph, tmp_path):
    with pytest.raises(DeploySdkError, match="batch_size must be at least 1"):
        Predictor(toy_graph, batch_size=0)
    with pytest.raises(DeploySdkError, match="mask_format must be one of"):
        Predictor(toy_graph, mask_format="polygons")
    with pytest.raises(DeploySdkError, match="unknown backend 'tflite'"):
        Predictor(toy_graph, backend="tflite")
    with pytest.raises(DeploySdkError, match="model file not found"):
        Predictor(tmp_path / "missing.onnx")
    (tmp_path / "model.xyz").write_bytes(b"")
    with pytest.raises(DeploySdkError, match="cannot tell the backend"):
        Predictor(tmp_path / "model.xyz")
    with pytest.raises(DeploySdkError, match="channel_order"):
        Predictor(toy_graph, channel_order="rbg")


def test_predict_iter_overlaps_preprocessing_with_inference(toy_graph):
    """Pre-processing of later batches runs in worker threads while the backend infers the current batch."""
    import time

    from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend

    spans = {"infer": [], "prepare": []}

    class SlowBackend(OnnxRuntimeBackend):
        def _infer(self, images, image_sizes):
            start = time.perf_counter()
            time.sleep(0.05)
            out = super()._infer(images, image_sizes)
            spans["infer"].append((start, time.perf_counter(), threading.current_thread().name))
            return out

    pred = Predictor(SlowBackend(toy_graph, threads=1), preprocess_workers=2)
    original = pred._prepare

    def timed_prepare(images):
        start = time.perf_counter()
        time.sleep(0.03)
        out = original(images)
        spans["prepare"].append((start, time.perf_counter(), threading.current_thread().name))
        return out

    pred._prepare = timed_prepare
    results = list(pred.predict_iter((_image(40, 40 + i, seed=i) for i in range(12)), batch_size=2))
    assert len(results) == 12
    assert all(name.startswith("maskrcnn-pre") for _, _, name in spans["prepare"])
    assert all(name == threading.main_thread().name for _, _, name in spans["infer"])
    overlapping = sum(1 for ps, pe, _ in spans["prepare"] for is_, ie, _ in spans["infer"] if ps < ie and is_ < pe)
    assert overlapping >= 3, spans


@pytest.mark.parametrize("mask_format", ["full", "box", "rle"])
def test_torch_output_path_matches_numpy_path(toy_graph, mask_format):
    """GPU backends hand torch tensors to the predictor, which then pastes masks with torch; exercised here with
    CPU tensors, it must give the numpy path's results in every mask format."""
    from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend

    class TorchOutputs(OnnxRuntimeBackend):
        returns_torch = True

        def _infer(self, images, image_sizes):
            return {k: torch.from_numpy(v) for k, v in super()._infer(images, image_sizes).items()}

    images = [_image(100, 200, seed=1), np.zeros((20, 20, 3), np.uint8), _image(57, 31, seed=2)]
    expected = Predictor(toy_graph, mask_format=mask_format, score_threshold=0.5).predict(images)
    got = Predictor(TorchOutputs(toy_graph), mask_format=mask_format, score_threshold=0.5).predict(images)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.full_masks(), b.full_masks())
        assert a.to_coco(7) == b.to_coco(7)
