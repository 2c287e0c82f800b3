"""Pre-processing against torch/torchvision: the resize, the output sizes, the canvas, the input policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import PIXELS_OTHER_KERNEL, PIXELS_SAME_KERNEL, assert_close
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from deploy_sdk.errors import InputImageError
from deploy_sdk.preprocessing import (
    boxes_to_original,
    canvas_size,
    load_image,
    prepare_batch,
    resize_bilinear,
    resized_size,
)

SIZES = [(100, 37), (257, 511), (480, 640), (1000, 333), (31, 29), (384, 512), (383, 700), (600, 601)]


@pytest.mark.parametrize("hw", SIZES)
def test_resize_matches_torchvision_transform(hw):
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected, _ = _resize_image_and_masks(torch.from_numpy(img).permute(2, 0, 1).float(), 384, 512)
    rh, rw = resized_size(*hw, 384, 512)
    assert (rh, rw) == tuple(expected.shape[1:])
    # 0-255 units: 1e-4 relative to the pixel range, i.e. float32 rounding of the interpolation.
    assert_close(resize_bilinear(img, rh, rw), expected, tol=PIXELS_SAME_KERNEL, what=f"resize of {hw}")


def test_resize_at_scale_one_is_the_image_as_in_torchvision():
    # 800x1216 under R50's 800/1333 is scale 1: torchvision still interpolates, and gets the pixels back exactly.
    img = np.random.default_rng(3).integers(0, 256, (800, 1216, 3), dtype=np.uint8)
    expected, _ = _resize_image_and_masks(torch.from_numpy(img).permute(2, 0, 1).float(), 800, 1333)
    assert resized_size(800, 1216, 800, 1333) == (800, 1216)
    out = resize_bilinear(img, 800, 1216)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected.numpy())


def test_resize_matches_interpolate_on_odd_scales():
    rng = np.random.default_rng(1)
    for _ in range(10):
        h, w = rng.integers(5, 300, 2)
        oh, ow = rng.integers(3, 400, 2)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(img).permute(2, 0, 1)[None].float(),
            size=(int(oh), int(ow)),
            mode="bilinear",
            align_corners=False,
        )[0]
        got = resize_bilinear(img, int(oh), int(ow))
        assert_close(got, expected, tol=PIXELS_OTHER_KERNEL, what=f"{h}x{w}->{oh}x{ow}")


def test_resized_sizes_match_torchvision_for_many_shapes():
    # Sizes where h * scale lands near an integer are where a float32 scale or a rounding would differ.
    for h in range(300, 1300, 37):
        for w in (h - 1, h + 1, 2 * h + 3, h // 2 + 5):
            expected, _ = _resize_image_and_masks(torch.zeros(1, h, w), 384, 512)
            assert resized_size(h, w, 384, 512) == tuple(expected.shape[1:]), (h, w)


def test_canvas_and_batch_match_torchvision_batch_images():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(300, 200), (123, 456), (500, 510)]]
    transform = GeneralizedRCNNTransform(384, 512, [0.0] * 3, [1.0] * 3)
    ref_list, _ = transform([torch.from_numpy(i).permute(2, 0, 1).float() for i in images])
    batch = prepare_batch(images, 384, 512)
    assert batch.images.shape == tuple(ref_list.tensors.shape)
    assert [tuple(s) for s in batch.image_sizes.tolist()] == [tuple(s) for s in ref_list.image_sizes]
    assert batch.image_sizes.dtype == np.int64 and batch.images.dtype == np.float32
    assert_close(batch.images, ref_list.tensors, tol=PIXELS_SAME_KERNEL, what="padded canvas")
    assert batch.original_sizes == [(300, 200), (123, 456), (500, 510)]


def test_uint8_canvas_and_fixed_size():
    img = np.full((90, 300, 3), 200, np.uint8)
    batch = prepare_batch([img], 64, 128, fixed=(64, 96), dtype=np.uint8)
    # min/max sizes give 38x128, wider than the fixed 96: scaled down further, keeping the aspect ratio.
    assert batch.images.shape == (1, 3, 64, 96) and batch.images.dtype == np.uint8
    assert batch.image_sizes.tolist() == [[28, 96]]
    assert (batch.images[0, :, :28, :96] == 200).all() and (batch.images[0, :, 28:] == 0).all()
    assert canvas_size([(28, 96)], 32, (64, 96)) == (64, 96)
    assert canvas_size([(28, 97), (33, 5)], 32) == (64, 128)


def test_boxes_to_original_matches_torchvision_resize_boxes():
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 380, (20, 4)).astype(np.float32)
    expected = resize_boxes(torch.from_numpy(boxes), [384, 293], [517, 395])
    assert_close(boxes_to_original(boxes, (384, 293), (517, 395)), expected, what="boxes in original pixels")


def test_load_image_policy(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = load_image(rgb)
    assert (out == rgb).all() and np.shares_memory(out, rgb)  # no copy for the common case
    assert (load_image(rgb[:, :, ::-1], channel_order="bgr") == rgb).all()
    gray = rgb[:, :, 0]
    assert (load_image(gray) == np.repeat(gray[:, :, None], 3, axis=2)).all()
    assert (load_image(gray[:, :, None]) == load_image(gray)).all()
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    assert (load_image(rgba) == rgb).all()
    # Files and PIL images agree with Pillow's own RGB conversion.
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert (load_image(tmp_path / "a.png") == rgb).all()
    assert (load_image(Image.fromarray(gray)) == load_image(gray)).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((10, 10, 3), np.float32), "float32 is not supported"),
        (np.zeros((10, 10, 3), np.int32), "int32 is not supported.*uint16 arrays are read as 16-bit"),
        (np.zeros((10, 10, 3), bool), "bool is not supported"),
        (np.full((10, 10, 3), np.nan, np.float64), "float64 is not supported.*\\* 255"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((3, 10, 10), np.uint8), "not an image"),
        (np.zeros((10, 10, 2), np.uint8), "not an image"),
        ([[1, 2]], "expected a numpy array"),
        ("/nonexistent/x.png", "not found"),
    ],
)
def test_load_image_errors_name_the_problem(bad, message):
    with pytest.raises(InputImageError, match=message):
        load_image(bad)


def test_unreadable_file_is_an_input_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(InputImageError, match="cannot read image file"):
        load_image(path)


def test_huge_image_is_resized_without_reading_every_pixel():
    # 10000x10000x3 zeros: np.zeros maps pages lazily, and the resize only touches the rows it samples.
    img = np.zeros((10000, 10000, 3), np.uint8)
    img[5000:5100, 2000:2100] = 255
    rh, rw = resized_size(10000, 10000, 384, 512)
    out = resize_bilinear(load_image(img), rh, rw)
    # 10000 * (384 / 10000) is 383.99999999999994 in double precision, so torch's floor gives 383, and so do we.
    assert (rh, rw) == (383, 383) and out.shape == (3, 383, 383)
    # The bright square lands at 0.0384 scale: around rows 192..196, columns 77..80.
    ys, xs = np.nonzero(out[0] > 0)
    assert 190 <= ys.min() and ys.max() <= 197 and 75 <= xs.min() and xs.max() <= 81
