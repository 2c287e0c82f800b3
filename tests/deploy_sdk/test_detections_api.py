"""The Python API around `Detections` and `Predictor`: the README's snippet run as written, the source image
reference (draw()/plot()/save() without an image), to_json(), __call__, warmup(), the full-mask memory warning,
and the label font that grows with the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from compare import JSON_BOX, JSON_SCORE, assert_close
from PIL import Image
from repo_paths import REPO_ROOT
from toy_deployment_graph import write_toy_graph

from deploy_sdk import Detections, Predictor
from deploy_sdk.detections import decode_rle, label_font_size

ROOT = REPO_ROOT


def _readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_snippet_runs_as_written(tmp_path):
    """The README's first Python block, extracted verbatim and run in a fresh interpreter, in a folder with a
    model.onnx (the toy deployment graph) and the two images it names."""
    blocks = _readme_python_blocks()
    snippet = next(b for b in blocks if "from deploy_sdk import Predictor" in b)
    write_toy_graph(tmp_path / "model.onnx")
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((50, 40, 3), 120, np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "snippet.py").write_text(snippet)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # What the snippet says it writes: an overlay per image, next to it.
    for name, shape in (("a.png", (60, 80, 3)), ("b.jpg", (50, 40, 3))):
        overlay = np.asarray(Image.open(tmp_path / f"{name}.overlay.png"))
        assert overlay.shape == shape
    assert proc.stdout.count("[") >= 2  # it printed the boxes


def _image(h, w, value=100):
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_detections_keep_their_source_and_draw_without_an_image(toy_graph, tmp_path):
    path = tmp_path / "p.png"
    arr = _image(60, 80, 7)
    Image.fromarray(arr).save(path)
    with Predictor(toy_graph, threads=1) as predictor:
        from_path, from_array = predictor([path, arr])
        assert from_path.source == path and from_array.source is arr  # a reference, not a copy
        assert len(from_path) > 0
        # Without an argument draw() uses the source; the same as passing the image explicitly.
        np.testing.assert_array_equal(from_path.draw(), from_path.draw(arr))
        np.testing.assert_array_equal(from_array.draw(), from_array.draw(arr))
        # BGR arrays: the source is drawn in the order it was given in.
    with Predictor(toy_graph, threads=1, channel_order="bgr") as predictor:
        bgr = predictor(np.ascontiguousarray(arr[:, :, ::-1]))
        np.testing.assert_array_equal(bgr.draw(), from_array.draw(arr))
    bare = Detections.empty((10, 10))
    with pytest.raises(ValueError, match="pass the image"):
        bare.draw()


def test_plot_uses_the_min_score_and_save_writes_overlay_and_json(toy_graph, tmp_path):
    arr = _image(60, 80, 3)
    with Predictor(toy_graph, threads=1) as predictor:
        det = predictor.predict(arr)
    assert det.scores.tolist() == pytest.approx([0.9, 0.6])  # the toy graph's two detections
    # plot() = draw(min_score=0.5); a detection below min_score is not drawn.
    np.testing.assert_array_equal(det.plot(), det.draw(min_score=0.5))
    only_first = det.plot(min_score=0.7)
    assert (only_first != det.plot()).any()
    np.testing.assert_array_equal(
        only_first,
        Detections(
            boxes=det.boxes[:1],
            scores=det.scores[:1],
            labels=det.labels[:1],
            masks=det.masks[:1],
            class_names=det.class_names,
            image_size=det.image_size,
        ).draw(arr),
    )
    png = det.save(tmp_path / "o.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), det.plot())
    doc = json.loads(det.save(tmp_path / "o.json").read_text())
    assert doc == json.loads(det.to_json())
    assert doc["image_size"] == [60, 80] and len(doc["detections"]) == len(det)
    full = det.full_masks()
    for i, item in enumerate(doc["detections"]):
        assert_close(item["box"], det.boxes[i], tol=JSON_BOX, what="JSON box")
        assert_close(item["score"], det.scores[i], tol=JSON_SCORE, what="JSON score")
        assert item["label"] == int(det.labels[i]) and item["name"] == det.names[i]
        np.testing.assert_array_equal(decode_rle(item["segmentation"]), full[i])  # the RLE is the mask
    with pytest.raises(Exception, match="suffix"):
        det.save(tmp_path / "o.txt")
    assert not (tmp_path / "o.txt").exists()


def test_call_is_predict_and_warmup_runs_the_pipeline(toy_graph):
    arr = _image(40, 50, 5)
    with Predictor(toy_graph, threads=1, batch_size=2) as predictor:
        a = predictor(arr)
        b = predictor.predict(arr)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.masks, b.masks)
        times = predictor.warmup(runs=2)
        assert len(times) == 2 and all(t > 0 for t in times)
        predictor.close()
        with pytest.raises(Exception, match="closed"):
            predictor.warmup()


def test_full_masks_warn_once_above_the_limit(toy_graph):
    arr = _image(60, 80, 9)
    with Predictor(toy_graph, threads=1) as predictor:
        predictor.full_mask_warn_bytes = 60 * 80 - 1  # one full mask of this image is over the limit
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor.predict(arr)
            predictor.predict([arr, arr])
        memory = [w for w in caught if "mask_format" in str(w.message)]
        assert len(memory) == 1 and "MiB" in str(memory[0].message)
    with Predictor(toy_graph, threads=1, mask_format="rle") as predictor:  # other formats never warn
        predictor.full_mask_warn_bytes = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor.predict(arr)
        assert not [w for w in caught if "mask_format" in str(w.message)]
    with Predictor(toy_graph, threads=1) as predictor:  # the default limit: a small image is far below it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor.predict(arr)
        assert not [w for w in caught if "mask_format" in str(w.message)]


def test_label_font_grows_with_the_image():
    assert label_font_size(60, 80) == 11  # the floor on small images
    assert label_font_size(4000, 6000) == 100  # 2.5% of the short side
    det = Detections(
        boxes=np.array([[10, 200, 900, 700]], np.float32),
        scores=np.array([0.9], np.float32),
        labels=np.array([1], np.int64),
        masks=None,
        class_names=["bg", "thing"],
        image_size=(800, 1000),
    )
    img = np.full((800, 1000, 3), 128, np.uint8)
    big = det.draw(img)
    small = det.draw(img, font_size=11)

    # The label's black background sits above the box; its height follows the font size (20 vs 11 px).
    def label_rows(overlay):
        column = overlay[:195, 40]
        return int((column != 128).any(axis=1).sum())

    assert label_rows(big) > 1.5 * label_rows(small) > 0


def test_draw_is_the_same_for_every_mask_format_and_blends_as_stated(toy_graph):
    from deploy_sdk.detections import _palette

    arr = _image(120, 160, 11)
    draws = {}
    for form in ("full", "box", "rle"):
        with Predictor(toy_graph, threads=1, mask_format=form) as predictor:
            draws[form] = predictor(arr).draw()
    np.testing.assert_array_equal(draws["box"], draws["full"])
    np.testing.assert_array_equal(draws["rle"], draws["full"])
    # The centre of detection 0 (box x 40..120, y 60..120; the toy's disc mask covers it): alpha 0.45 of its colour.
    want = np.rint(arr[90, 80].astype(np.float32) * 0.55 + _palette(2)[0] * 0.45)
    np.testing.assert_array_equal(draws["full"][90, 80], want.astype(np.uint8))
    assert (arr == _image(120, 160, 11)).all()  # the caller's image is not drawn on
