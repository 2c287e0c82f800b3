"""What `maskrcnn-deploy infer` writes: results.json as a complete COCO file (pycocotools opens it, its
annotations score with COCOeval), --image-ids-from, --save-json-per-image, --draw-min-score, and every JSON
output valid under docs/schemas/. References: pycocotools (COCO, loadRes, annToMask, COCOeval), the SDK's own
`eval` pipeline (deploy_sdk.evaluation) on the same images, the Python API's detections, and the input pixels
where nothing is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from compare import AP_FROM_WRITTEN_RESULTS, JSON_BOX, JSON_SCORE, TOY_BOX_SCALING, assert_close
from PIL import Image
from schema_check import schema_errors
from toy_deployment_graph import TOY_BOX_FRACTIONS

from deploy_sdk import Predictor
from deploy_sdk.cli import main


def _png(path: Path, seed: int, size=(200, 160)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(1, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_results_json_is_a_complete_coco_file_and_matches_the_schemas(toy_graph, tmp_path, capsys):
    from pycocotools.coco import COCO

    files = [_png(tmp_path / "in" / f"p{i}.png", i, size) for i, size in enumerate([(200, 160), (90, 120)])]
    out = tmp_path / "out"
    argv = ["infer", str(toy_graph), str(tmp_path / "in"), "--out", str(out), "--save-json-per-image", "--threads", "1"]
    assert main(argv) == 0
    assert f"and 2 files in {out / 'json'}" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert schema_errors(doc, "results.schema.json") == []
    assert doc["categories"] == [
        {"id": 1, "name": "circle", "supercategory": "object"},
        {"id": 2, "name": "square", "supercategory": "object"},
        {"id": 3, "name": "star", "supercategory": "object"},
    ]
    assert [(im["id"], im["height"], im["width"]) for im in doc["images"]] == [(1, 200, 160), (2, 90, 120)]
    # The schemas are not vacuous: a broken document is refused.
    broken = json.loads(json.dumps(doc))
    broken["annotations"][0]["bbox"] = [1, 2, 3]
    del broken["images"][0]["height"]
    assert len(schema_errors(broken, "results.schema.json")) == 2

    # pycocotools opens the whole file as a data set, and loadRes takes its annotations list.
    coco = COCO(str(out / "results.json"))
    assert sorted(coco.getImgIds()) == [1, 2] and len(coco.getAnnIds()) == 4
    dt = coco.loadRes(doc["annotations"])
    with Predictor(toy_graph, threads=1) as predictor:
        for image_id, path in zip((1, 2), files):
            det = predictor(path)  # full masks, straight from the Python API
            anns = dt.loadAnns(dt.getAnnIds(imgIds=[image_id]))
            assert len(anns) == len(det) == 2
            written = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            for ann, own, box, score, mask in zip(anns, written, det.boxes, det.scores, det.full_masks()):
                np.testing.assert_array_equal(dt.annToMask(ann).astype(bool), mask)
                assert own["area"] == int(mask.sum()) and own["iscrowd"] == 0
                x1, y1, x2, y2 = box.tolist()
                assert_close(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], tol=JSON_BOX, what="COCO bbox")
                assert_close(ann["score"], score, tol=JSON_SCORE, what="COCO score")
            # The per-image file: the same detections as to_json(), boxes x1 y1 x2 y2, valid under its schema.
            per_image = json.loads((out / "json" / f"{path.stem}.json").read_text())
            assert schema_errors(per_image, "detections.schema.json") == []
            assert per_image["image_id"] == image_id and per_image["file_name"] == str(path)
            assert per_image["detections"] == json.loads(det.to_json())["detections"]


def test_draw_min_score_chooses_what_the_overlay_shows(toy_graph, tmp_path):
    src = _png(tmp_path / "in" / "p.png", 3)  # 200 x 160: box 1 (score 0.9) bottom middle, box 2 (0.6) top left
    image = np.asarray(Image.open(src))
    box2 = (slice(0, 50), slice(0, 80))  # TOY_BOX_FRACTIONS[1] * (W, H, W, H)
    box1 = (slice(100, 200), slice(40, 120))
    assert TOY_BOX_FRACTIONS[1].tolist() == [0.0, 0.0, 0.5, 0.25]
    overlays = {}
    for value in ("default", "0.7", "1"):
        out = tmp_path / f"out-{value}"
        extra = [] if value == "default" else ["--draw-min-score", value]
        assert main(["infer", str(toy_graph), str(src), "--out", str(out), "--threads", "1"] + extra) == 0
        overlays[value] = np.asarray(Image.open(out / "p.png"))
        # The JSON keeps every detection whatever is drawn.
        assert len(json.loads((out / "results.json").read_text())["annotations"]) == 2
    np.testing.assert_array_equal(overlays["1"], image)  # nothing scores 1: the image itself
    np.testing.assert_array_equal(overlays["0.7"][box2], image[box2])  # 0.6 < 0.7: box 2 not drawn
    assert (overlays["0.7"][box1] != image[box1]).any()
    assert (overlays["default"][box2] != image[box2]).any()  # default 0.5: both drawn
    np.testing.assert_array_equal(overlays["default"][box1], overlays["0.7"][box1])
    with pytest.raises(SystemExit) as exc:  # argparse: usage and one error line
        main(["infer", str(toy_graph), str(src), "--out", str(tmp_path / "x"), "--draw-min-score", "2"])
    assert exc.value.code == 2


def test_image_ids_from_errors_are_one_line(toy_graph, tmp_path, capsys):
    src = _png(tmp_path / "in" / "p.png", 3)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "other.png"}]}))
    assert main(["infer", str(toy_graph), str(src), "--out", str(tmp_path / "o"), "--image-ids-from", str(ann)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image p.png" in err
    ann.write_text("[1, 2]")
    assert main(["infer", str(toy_graph), str(src), "--out", str(tmp_path / "o"), "--image-ids-from", str(ann)]) == 1
    assert "not a COCO annotations file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_results_with_image_ids_from_score_like_eval(shipped_onnx, tmp_path, capsys):
    """The shipped model on a few synthetic images whose annotation ids are not their positions: COCOeval of
    results.json (--image-ids-from) gives the AP that the SDK's eval pipeline computes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from deploy_sdk.evaluation import evaluate

    data = tmp_path / "ds"
    assert main(["data", "shapes", "--out", str(data), "--num", "3", "--seed", "7", "--quiet"]) == 0
    ann_path = data / "annotations.json"
    gt_doc = json.loads(ann_path.read_text())
    new_id = {im["id"]: 500 - 7 * im["id"] for im in gt_doc["images"]}  # reversed order, not 1..N
    for im in gt_doc["images"]:
        im["id"] = new_id[im["id"]]
    for a in gt_doc["annotations"]:
        a["image_id"] = new_id[a["image_id"]]
    ann_path.write_text(json.dumps(gt_doc))
    capsys.readouterr()

    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                str(shipped_onnx),
                str(data / "images"),
                "--out",
                str(out),
                "--image-ids-from",
                str(ann_path),
                "--no-overlays",
                "--threads",
                "2",
            ]
        )
        == 0
    )
    doc = json.loads((out / "results.json").read_text())
    assert schema_errors(doc, "results.schema.json") == []
    assert sorted(im["id"] for im in doc["images"]) == sorted(new_id.values())
    assert len(doc["annotations"]) > 5

    gt = COCO(str(ann_path))
    dt = gt.loadRes(doc["annotations"])
    got = {}
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        got[iou_type] = float(ev.stats[0])
    with Predictor(shipped_onnx, threads=2) as predictor:
        ref = evaluate(predictor, data / "images", ann_path, progress=False)
    assert ref["box_ap"] > 0.3  # the shipped model finds these shapes
    assert got["bbox"] == AP_FROM_WRITTEN_RESULTS.approx(ref["box_ap"])
    assert got["segm"] == AP_FROM_WRITTEN_RESULTS.approx(ref["mask_ap"])


def _write_video(path: Path, frames):
    cv2 = pytest.importorskip("cv2", reason="the video extra (opencv-python-headless) is not installed")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_video_gives_an_annotated_video_and_one_json_line_per_frame(toy_graph, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2", reason="the video extra (opencv-python-headless) is not installed")
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [
        np.stack([(xx * 2 + 10 * k) % 250 + 3, (yy * 2) % 250 + 3, np.full_like(xx, 120)], -1).astype(np.uint8)
        for k in range(5)
    ]
    clip = tmp_path / "clip.mp4"
    _write_video(clip, frames)
    out = tmp_path / "out"
    assert main(["infer", str(toy_graph), str(clip), "--out", str(out), "--batch-size", "2", "--threads", "1"]) == 0
    assert "clip.mp4: 10 detections in 5 frames" in capsys.readouterr().out
    lines = (out / "clip.frames.jsonl").read_text().splitlines()
    assert len(lines) == 5
    for k, line in enumerate(lines):
        item = json.loads(line)
        assert schema_errors(item, "detections.schema.json") == []
        assert item["frame"] == k and item["time_s"] == pytest.approx(k / 10.0)
        assert item["image_size"] == [h, w]
        boxes = np.array([d["box"] for d in item["detections"]])
        expected = TOY_BOX_FRACTIONS[:2] * [w, h, w, h]  # hand-worked
        assert_close(boxes, expected, tol=TOY_BOX_SCALING, what="boxes")
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame)
    cap.release()
    assert len(decoded) == 5 and decoded[0].shape == (h, w, 3)
    # Box 1 (bottom middle) is tinted in the annotated video; the bottom-left corner is the frame itself
    # (up to the codec's losses).
    src = cv2.VideoCapture(str(clip))
    ok, first = src.read()
    src.release()
    assert ok
    corner = (slice(60, h), slice(0, 25))
    assert np.abs(decoded[0][corner].astype(int) - first[corner].astype(int)).mean() < 8
    inside = (slice(60, h), slice(40, 90))
    assert np.abs(decoded[0][inside].astype(int) - first[inside].astype(int)).mean() > 20

    argv = ["infer", str(toy_graph), str(clip), "--out", str(tmp_path / "two"), "--max-frames", "2", "--no-overlays"]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["clip.frames.jsonl"]
    assert len((tmp_path / "two" / "clip.frames.jsonl").read_text().splitlines()) == 2


def test_video_without_opencv_is_one_line_naming_the_extra(toy_graph, tmp_path, monkeypatch, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 32)
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # import cv2 -> ImportError
    assert main(["infer", str(toy_graph), str(clip), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'maskrcnn-deploy[video]'" in err
    assert not (tmp_path / "o").exists()


def test_unreadable_video_is_one_line(toy_graph, tmp_path, capsys):
    pytest.importorskip("cv2", reason="the video extra (opencv-python-headless) is not installed")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 32)
    assert main(["infer", str(toy_graph), str(clip), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot open the video" in err
    leftovers = [p for p in (tmp_path / "o").rglob("*")] if (tmp_path / "o").exists() else []
    assert leftovers == []


@pytest.mark.slow
def test_images_redone_after_a_bad_one_keep_their_colours(shipped_onnx, tmp_path):
    """A corrupt file in a batch makes infer redo that batch image by image; the good images of that batch must
    give what a clean run gives (regression: they were decoded to RGB and then read as BGR video frames)."""
    from fixtures_models import held_out_images

    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(held_out_images(3)):
        Image.fromarray(image).save(folder / f"{i}.png")
    clean = tmp_path / "clean"
    assert (
        main(
            [
                "infer",
                str(shipped_onnx),
                str(folder),
                "--out",
                str(clean),
                "--batch-size",
                "1",
                "--no-overlays",
                "--threads",
                "2",
            ]
        )
        == 0
    )
    (folder / "3-bad.png").write_bytes(b"not a png")
    mixed = tmp_path / "mixed"
    assert (
        main(
            [
                "infer",
                str(shipped_onnx),
                str(folder),
                "--out",
                str(mixed),
                "--batch-size",
                "4",
                "--no-overlays",
                "--threads",
                "2",
            ]
        )
        == 1
    )  # one failure
    want = json.loads((clean / "results.json").read_text())["annotations"]
    got = json.loads((mixed / "results.json").read_text())["annotations"]
    assert len(want) > 3
    assert [(a["image_id"], a["category_id"], a["score"], a["bbox"]) for a in got] == [
        (a["image_id"], a["category_id"], a["score"], a["bbox"]) for a in want
    ]
