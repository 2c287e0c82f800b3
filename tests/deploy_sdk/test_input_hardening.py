"""Inputs that used to give wrong results without an error, unbounded memory, or an error far from the call.

16-bit images, EXIF orientation, the pixel limit (checked before decoding), the resize's memory on extreme aspect
ratios, predict() decoding batch by batch, and clear errors for closed predictors/images and bad arguments.
Expectations are hand-worked or from naive references written here.
"""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from compare import JPEG_BLOCK_MEAN, PIXELS_VS_FLOAT64_BILINEAR, TOY_BOX_SCALING, assert_close
from PIL import Image
from toy_deployment_graph import TOY_BOX_FRACTIONS

import deploy_sdk.predictor as predictor_module
from deploy_sdk import DeploySdkError, InputImageError, Predictor, preprocessing
from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend
from deploy_sdk.preprocessing import load_image, resize_bilinear, resized_size


@pytest.fixture(scope="module")
def predictor(toy_graph):
    return Predictor(toy_graph, batch_size=4, threads=1)


def _png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes = b"") -> bytes:
    """A PNG file: signature, IHDR, one IDAT holding ``raw`` (filter-byte-prefixed rows) compressed, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any image's pixels are decoded (Image.load is where every Pillow decode happens)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixels were decoded; the size check must come first")

    monkeypatch.setattr(Image.Image, "load", refuse)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---------------------------------------------------------------------------------------------------------------
# 16-bit images

# 16-bit samples and their 8-bit values by hand: value >> 8 (the high byte). 40000 = 156 * 256 + 64.
SAMPLES_16 = np.array([[0, 255, 256, 4095], [32768, 65535, 1000, 40000]], np.uint16)
EXPECTED_8 = np.array([[0, 0, 1, 15], [128, 255, 3, 156]], np.uint8)


def test_16bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(SAMPLES_16).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow does read it as 16-bit data
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], EXPECTED_8)


def test_16bit_paths_agree_with_uint16_arrays(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(SAMPLES_16).save(path)
    gray = np.repeat(EXPECTED_8[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_image(SAMPLES_16), gray)  # uint16 [H, W] array
    np.testing.assert_array_equal(load_image(SAMPLES_16.astype(">u2")), gray)  # big-endian too
    with Image.open(path) as im:
        np.testing.assert_array_equal(load_image(np.asarray(im)), gray)
        np.testing.assert_array_equal(load_image(im), gray)  # an open PIL image in mode I;16
    # Mode "I" (how older Pillow opens 16-bit PNGs) with 16-bit values: the same rule.
    np.testing.assert_array_equal(load_image(Image.fromarray(SAMPLES_16.astype(np.int32))), gray)


def test_16bit_rgb_png_and_uint16_rgb_array_agree(tmp_path):
    # Pillow reads 16-bit RGB PNGs itself (keeping the high byte); a uint16 RGB(A) array must give the same pixels.
    rgb16 = np.array([[[0, 300, 65535], [40000, 256, 255]]], np.uint16)  # 1x2 RGB
    expected = np.array([[[0, 1, 255], [156, 1, 0]]], np.uint8)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(2, 1, 16, 2, raw))
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(rgb16), expected)
    rgba16 = np.concatenate([rgb16, np.full((1, 2, 1), 65535, np.uint16)], axis=2)
    np.testing.assert_array_equal(load_image(rgba16), expected)
    np.testing.assert_array_equal(load_image(rgb16[:, :, ::-1], channel_order="bgr"), expected)


def test_undefined_deep_images_are_refused():
    with pytest.raises(InputImageError, match="mode 'I'.*-5..70000"):
        load_image(Image.fromarray(np.array([[-5, 70000]], np.int32)))
    with pytest.raises(InputImageError, match="mode 'F'.*ambiguous"):
        load_image(Image.fromarray(np.array([[0.5, 1.0]], np.float32)))


# ---------------------------------------------------------------------------------------------------------------
# EXIF orientation


def _asymmetric(h: int = 2, w: int = 3) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[0, 0] = (255, 0, 0)
    img[0, w - 1] = (0, 255, 0)
    img[h - 1, 0] = (0, 0, 255)
    return img


def _save_with_orientation(img: np.ndarray, path, orientation: int, **kwargs) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(path, exif=exif, **kwargs)


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (6, lambda a: np.rot90(a, k=-1)),  # stored rotated 90 counter-clockwise: turn it clockwise
        (8, lambda a: np.rot90(a, k=1)),
        (3, lambda a: a[::-1, ::-1]),
        (2, lambda a: a[:, ::-1]),
        (1, lambda a: a),
    ],
)
def test_exif_orientation_is_applied_to_files(tmp_path, orientation, upright):
    img = _asymmetric()
    path = tmp_path / "o.png"
    _save_with_orientation(img, path, orientation)
    np.testing.assert_array_equal(load_image(path), upright(img))


def test_exif_orientation_of_a_jpeg(tmp_path):
    # 16x24 in 8x8 blocks of flat colour, so JPEG stays close to the source; orientation 6 gives 24x16.
    img = np.zeros((16, 24, 3), np.uint8)
    img[:8, :8] = (250, 20, 20)
    img[8:, 16:] = (20, 20, 250)
    path = tmp_path / "phone.jpg"
    _save_with_orientation(img, path, 6, quality=95, subsampling=0)
    out = load_image(path)
    assert out.shape == (24, 16, 3)
    expected = np.rot90(img, k=-1)  # red block top right, blue block bottom left
    for y in range(0, 24, 8):
        for x in range(0, 16, 8):
            block = out[y : y + 8, x : x + 8].reshape(-1, 3).mean(axis=0)
            assert_close(block, expected[y, x], tol=JPEG_BLOCK_MEAN, what=f"block at {y},{x}")


def test_exif_rotated_file_gives_results_and_overlay_in_upright_pixels(predictor, tmp_path):
    img = np.full((40, 100, 3), 90, np.uint8)
    path = tmp_path / "rotated.png"
    _save_with_orientation(img, path, 6)
    det = predictor.predict(path)
    assert det.image_size == (100, 40)  # upright: 100 high, 40 wide
    expected = TOY_BOX_FRACTIONS[:2] * [40, 100, 40, 100]
    assert_close(det.boxes, expected, tol=TOY_BOX_SCALING, what="boxes")
    assert det.masks.shape == (2, 100, 40)
    assert det.draw(load_image(path)).shape == (100, 40, 3)
    assert det.draw(path).shape == (100, 40, 3)


def test_pil_images_are_taken_as_given(tmp_path):
    img = _asymmetric()
    path = tmp_path / "o.png"
    _save_with_orientation(img, path, 6)
    with Image.open(path) as im:
        np.testing.assert_array_equal(load_image(im), img)


# ---------------------------------------------------------------------------------------------------------------
# The pixel limit, before decoding


def test_limit_is_pillows_decompression_bomb_limit():
    # Pillow refuses files of more than twice its MAX_IMAGE_PIXELS (default 89,478,485): one limit for all inputs.
    assert preprocessing.MAX_IMAGE_PIXELS == 2 * 89_478_485 == 178_956_970


def test_huge_header_is_refused_before_decoding_by_pillow_check(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(20000, 20000, 8, 0))  # 400 MP declared in a ~60-byte file
    with pytest.raises(InputImageError, match=r"bomb.png.*MAX_IMAGE_PIXELS = 178956970"):
        load_image(path)


def test_huge_header_is_refused_before_decoding_by_the_sdk_check(tmp_path, monkeypatch, no_decoding):
    # With Pillow's own check off, the SDK's limit still holds, from the header alone: 1 x 200M pixels.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "strip.png"
    path.write_bytes(_png_bytes(200_000_000, 1, 8, 0))
    with pytest.raises(InputImageError, match=r"200000000x1 = 200000000 pixels is more than this SDK accepts"):
        load_image(path)
    with Image.open(path) as im:  # a lazily opened PIL image: refused before it is decoded, too
        with pytest.raises(InputImageError, match="more than this SDK accepts"):
            load_image(im)


def test_pillow_warning_turned_into_an_error_is_an_input_error(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(100_000_000, 1, 8, 0))  # above Pillow's warning threshold, below its error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InputImageError, match="MAX_IMAGE_PIXELS"):
            load_image(path)


def test_limit_applies_to_arrays_without_touching_their_pixels():
    limit = preprocessing.MAX_IMAGE_PIXELS
    # Zero-stride views: the size of a huge image, without its memory.
    at_limit = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (1, limit, 3))
    assert load_image(at_limit).shape == (1, limit, 3)
    over = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (1, limit + 1, 3))
    with pytest.raises(InputImageError, match=f"image: {limit + 1}x1 = {limit + 1} pixels is more than"):
        load_image(over)


def test_limit_can_be_lowered_and_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocessing, "MAX_IMAGE_PIXELS", 100)
    assert load_image(np.zeros((10, 10, 3), np.uint8)).shape == (10, 10, 3)
    with pytest.raises(InputImageError, match=r"MAX_IMAGE_PIXELS = 100 pixels"):
        load_image(np.zeros((10, 11, 3), np.uint8))
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(path)
    with pytest.raises(InputImageError, match=r"11x10 = 110 pixels"):
        load_image(path)
    with pytest.raises(InputImageError, match="11x10"):
        load_image(Image.fromarray(np.zeros((10, 11), np.uint8)))


# ---------------------------------------------------------------------------------------------------------------
# The resize's memory at extreme aspect ratios


def _naive_bilinear(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Per-pixel bilinear, align_corners=False, in float64: the textbook formula, [C, oh, ow]."""
    h, w, c = img.shape
    out = np.zeros((c, oh, ow))
    for r in range(oh):
        sy = max((r + 0.5) * h / oh - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for q in range(ow):
            sx = max((q + 0.5) * w / ow - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, lx = min(x0 + 1, w - 1), sx - x0
            top = (1 - lx) * img[y0, x0].astype(float) + lx * img[y0, x1]
            bottom = (1 - lx) * img[y1, x0].astype(float) + lx * img[y1, x1]
            out[:, r, q] = (1 - ly) * top + ly * bottom
    return out


def test_resize_of_a_long_strip_needs_memory_for_the_output_only():
    strip = np.zeros((1, 8_000_000, 3), np.uint8)  # 24 MB; floats of it would be 96 MB each
    strip[0, ::2] = 200
    rh, rw = resized_size(1, 8_000_000, 800, 1333)
    assert (rh, rw) == (1, 1333)
    tracemalloc.start()
    try:
        out = resize_bilinear(strip, rh, rw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"resize of a 1x8M strip peaked at {peak / 2**20:.1f} MiB"
    # Every output pixel samples between two neighbouring source columns, one 200 and one 0 (or exactly one).
    assert out.shape == (3, 1, 1333) and out.min() >= 0 and out.max() <= 200


def test_resize_with_gathered_columns_matches_naive_bilinear(monkeypatch):
    # Whole rows at once (the default budget), row-chunked (1000 bytes) and pixel-wise (1 byte) gathers give the
    # same floats, and those are the textbook bilinear values up to the float32 source coordinates (as PyTorch).
    img = np.random.default_rng(7).integers(0, 256, (9, 700, 3), dtype=np.uint8)
    for oh, ow in [(4, 31), (9, 50), (13, 90), (20, 1400)]:
        results = []
        for budget in (preprocessing._GATHER_ROW_BYTES, 1000, 1):
            monkeypatch.setattr(preprocessing, "_GATHER_ROW_BYTES", budget)
            results.append(resize_bilinear(img, oh, ow))
            np.testing.assert_array_equal(resize_bilinear(img[:, :, ::-1], oh, ow), results[-1][::-1])
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])
        assert_close(results[0], _naive_bilinear(img, oh, ow), tol=PIXELS_VS_FLOAT64_BILINEAR, what=f"{oh}x{ow}")


# ---------------------------------------------------------------------------------------------------------------
# predict() decodes batch by batch


def _record_decodes_and_inference(monkeypatch, pred):
    events = []
    real_load = predictor_module.load_image

    def recording_load(image, *args, **kwargs):
        events.append("decode")
        return real_load(image, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "load_image", recording_load)
    real_infer = pred.backend.infer

    def recording_infer(images, image_sizes):
        events.append(("infer", int(images.shape[0])))
        return real_infer(images, image_sizes)

    monkeypatch.setattr(pred.backend, "infer", recording_infer)
    return events


def _max_decoded_ahead(events) -> int:
    decoded = inferred = worst = 0
    for e in events:
        if e == "decode":
            decoded += 1
        else:
            worst = max(worst, decoded - inferred)  # decoded and waiting, this batch included
            inferred += e[1]
    return worst


def test_predict_decodes_batch_by_batch(toy_graph, monkeypatch):
    pred = Predictor(toy_graph, batch_size=3, threads=1)
    events = _record_decodes_and_inference(monkeypatch, pred)
    sizes = [(20 + i, 30 + 2 * i) for i in range(10)]
    results = pred.predict([np.full((h, w, 3), 90, np.uint8) for h, w in sizes])
    assert [d.image_size for d in results] == sizes
    assert [e for e in events if e != "decode"] == [("infer", 3)] * 3 + [("infer", 1)]
    assert events.count("decode") == 10
    assert _max_decoded_ahead(events) == 3


def test_predict_iter_read_ahead_is_bounded(toy_graph, monkeypatch):
    pred = Predictor(toy_graph, batch_size=2, threads=1, preprocess_workers=1)
    events = _record_decodes_and_inference(monkeypatch, pred)
    results = list(pred.predict_iter(np.full((30, 40, 3), 90, np.uint8) for _ in range(12)))
    assert len(results) == 12
    assert _max_decoded_ahead(events) <= 2 * (1 + 1)  # batch_size * (preprocess_workers + 1)


def test_predict_reports_a_bad_image_in_a_later_batch_by_index(predictor):
    images = [np.full((20, 20, 3), 90, np.uint8)] * 6 + [np.zeros((20, 20, 3), np.float32)]
    with pytest.raises(InputImageError, match="image 6: dtype float32"):
        predictor.predict(images)


def test_empty_inputs_give_empty_results(predictor):
    assert predictor.predict([]) == []
    assert predictor.predict(np.zeros((0, 10, 10, 3), np.uint8)) == []
    assert list(predictor.predict_iter([])) == []


# ---------------------------------------------------------------------------------------------------------------
# Clear errors at the call


def test_closed_predictor_says_so(toy_graph):
    pred = Predictor(toy_graph, threads=1)
    img = np.full((20, 20, 3), 90, np.uint8)
    assert len(pred.predict(img)) == 2
    pred.close()
    pred.close()  # twice is fine
    with pytest.raises(DeploySdkError, match="predictor is closed"):
        pred.predict(img)
    with pytest.raises(DeploySdkError, match="predictor is closed"):
        pred.predict_iter([img])  # at the call, not at the first next()


def test_closed_backend_says_so(toy_graph):
    backend = OnnxRuntimeBackend(toy_graph, threads=1)
    backend.close()
    with pytest.raises(DeploySdkError, match="onnxruntime backend .* is closed"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32), np.array([[64, 64]], np.int64))


def test_closed_pil_images_are_input_errors(predictor, tmp_path):
    im = Image.fromarray(np.full((20, 30, 3), 90, np.uint8))
    im.close()
    with pytest.raises(InputImageError, match="image 0: the PIL image cannot be read.*closed"):
        predictor.predict([im])
    path = tmp_path / "x.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path)
    with Image.open(path) as lazy:
        pass  # closed before its pixels were read
    with pytest.raises(InputImageError, match="closed"):
        load_image(lazy)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_predict_iter_checks_batch_size_at_the_call(predictor, bad):
    with pytest.raises(DeploySdkError, match="batch_size must be a positive integer"):
        predictor.predict_iter([np.zeros((5, 5, 3), np.uint8)], batch_size=bad)


@pytest.mark.parametrize("bad", [-3, -1, 1.5, "4", True])
def test_threads_must_be_a_positive_integer(toy_graph, bad):
    with pytest.raises(DeploySdkError, match=r"threads must be a positive integer.*got"):
        Predictor(toy_graph, threads=bad)
    with pytest.raises(DeploySdkError, match=r"threads must be a positive integer"):
        OnnxRuntimeBackend(toy_graph, threads=bad)


def test_threads_none_zero_and_numpy_ints_are_fine(toy_graph):
    for threads in (None, 0, 1, np.int64(2)):
        assert len(Predictor(toy_graph, threads=threads).predict(np.full((9, 9, 3), 90, np.uint8))) == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((10, 10, 3), np.float16), "float16 is not supported"),
        (np.full((10, 10, 3), np.inf, np.float32), "float32 is not supported"),
        (np.zeros((10, 10, 3), np.int64), "int64 is not supported"),
        (np.zeros((10, 10, 3), object), "object is not supported"),
        (np.zeros((10, 10, 5), np.uint8), "not an image"),
        (np.zeros((10,), np.uint8), "not an image"),
        (np.zeros((2, 10, 10, 3, 1), np.uint8), "not an image"),
        (np.zeros((10, 0), np.uint8), "empty"),
        (np.zeros((0, 0), np.uint16), "empty"),
        (None, "expected a numpy array"),
    ],
)
def test_bad_arrays_are_named_input_errors(predictor, bad, message):
    with pytest.raises(InputImageError, match=message):
        predictor.predict(bad)


# ---------------------------------------------------------------------------------------------------------------
# Aspect ratios the resize cannot represent


@pytest.mark.parametrize("h, w", [(1, 128), (1, 129), (1, 200), (129, 1), (2, 256), (2, 257), (5, 9), (3, 20_000)])
def test_refused_exactly_where_torchvision_cannot_resize(h, w):
    import torch
    from torchvision.models.detection.transform import _resize_image_and_masks

    try:
        _resize_image_and_masks(torch.zeros(3, h, w), 64, 128)
        torchvision_ok = True
    except RuntimeError:  # "Input and output sizes should be greater than 0"
        torchvision_ok = False
    if torchvision_ok:
        preprocessing.check_resizable(h, w, 64, 128)
    else:
        with pytest.raises(
            InputImageError, match=r"aspect ratio of \d+:1, more than this model's max_size:1 \(128:1\)"
        ):
            preprocessing.check_resizable(h, w, 64, 128)


def test_predictor_refuses_a_long_strip_by_name(predictor):
    strip = np.full((1, 2_000_000, 3), 90, np.uint8)
    with pytest.raises(InputImageError, match=r"image 1: 2000000x1 pixels has an aspect ratio of 2000000:1"):
        predictor.predict([np.full((10, 10, 3), 90, np.uint8), strip])
    assert len(predictor.predict(np.full((1, 128, 3), 90, np.uint8))) == 2  # 128:1 is still fine at max_size 128
