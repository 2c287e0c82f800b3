"""COCO evaluation: perfect predictions give AP 1, hand-worked perturbations give the hand-worked AP;
`maskrcnn-deploy eval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from compare import AP_HAND_WORKED
from PIL import Image
from pycocotools import mask as mask_utils

from deploy_sdk.cli import main
from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn
from deploy_sdk.detections import Detections
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.evaluation import METRIC_KEYS, detections_to_coco, evaluate
from deploy_sdk.synthetic_shapes import SHAPE_CLASSES, generate_sample, mask_to_rle, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 copy keyword


def _square_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def _dets(masks, scores, labels, h, w) -> Detections:
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Detections(
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.array(scores, dtype=np.float32),
        labels=np.array(labels, dtype=np.int64),
        masks=np.stack(masks) if masks else np.zeros((0, h, w), bool),
        image_size=(h, w),
    )


def _write_coco(tmp_path, h, w, gt_masks, label=1):
    """One flat grey image with the given ground-truth masks, all of category ``label``."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / "images" / "a.png")
    anns = []
    for i, m in enumerate(gt_masks):
        ys, xs = np.nonzero(m)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": label,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float(m.sum()),
                "segmentation": mask_to_rle(m),
                "iscrowd": 0,
            }
        )
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
        "annotations": anns,
        "categories": [{"id": label, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "images", tmp_path / "ann.json"


def test_perfect_predictions_give_ap_1(tmp_path):
    seed, lo, hi = 31, 64, 112
    write_dataset(tmp_path, num=4, seed=seed, min_size=lo, max_size=hi)

    def ground_truth(images):
        # The evaluator passes images in file order; regenerate each one's annotations from its pixels' index.
        out = []
        for image in images:
            idx = next(i for i in range(4) if np.array_equal(generate_sample(seed, i, lo, hi).image, image))
            s = generate_sample(seed, idx, lo, hi)
            out.append(
                Detections(s.boxes, np.ones(len(s.labels), np.float32), s.labels, s.masks, image_size=image.shape[:2])
            )
        return out

    m = evaluate(ground_truth, tmp_path / "images", tmp_path / "annotations.json", batch_size=3, progress=False)
    for key in METRIC_KEYS:
        assert m[key] == pytest.approx(1.0), key
    assert m["num_images"] == 4 and m["num_detections"] > 0


def test_a_false_positive_between_two_hits(tmp_path):
    """Hand-worked: GT A and B; predictions A (0.9), a miss (0.8), B (0.7).
    Precision/recall: (1, 0.5), (0.5, 0.5), (2/3, 1). COCO's interpolated precision is 1 at the 51 recall points
    0.00..0.50 and 2/3 at the 50 points 0.51..1.00: AP = (51 + 50 * 2/3) / 101 at every IoU threshold."""
    h, w = 200, 200
    a = _square_mask(h, w, 10, 10, 60, 60)
    b = _square_mask(h, w, 100, 100, 150, 150)
    fp = _square_mask(h, w, 160, 10, 190, 40)
    images, ann = _write_coco(tmp_path, h, w, [a, b])
    m = evaluate(lambda ims: [_dets([a, fp, b], [0.9, 0.8, 0.7], [1, 1, 1], h, w)], images, ann, progress=False)
    expected = (51 + 50 * 2 / 3) / 101
    for key in METRIC_KEYS:
        assert m[key] == AP_HAND_WORKED.approx(expected), key


def test_an_imprecise_box_counts_at_low_iou_thresholds_only(tmp_path):
    """Hand-worked: GT 100x100, prediction its top 62 rows: IoU 0.62, a hit at thresholds 0.50, 0.55, 0.60 and a
    miss at the 7 others, so AP = 3/10, AP50 = 1, AP75 = 0 (boxes and masks alike)."""
    h, w = 200, 200
    gt = _square_mask(h, w, 50, 50, 150, 150)
    pred = _square_mask(h, w, 50, 50, 150, 112)
    images, ann = _write_coco(tmp_path, h, w, [gt])
    m = evaluate(lambda ims: [_dets([pred], [0.9], [1], h, w)], images, ann, progress=False)
    for kind in ("box", "mask"):
        assert m[f"{kind}_ap"] == AP_HAND_WORKED.approx(0.3)
        assert m[f"{kind}_ap50"] == pytest.approx(1.0)
        assert m[f"{kind}_ap75"] == pytest.approx(0.0)


def test_no_detections_and_wrong_class_give_zero(tmp_path):
    h, w = 100, 100
    gt = _square_mask(h, w, 10, 10, 50, 50)
    images, ann = _write_coco(tmp_path, h, w, [gt])
    assert evaluate(lambda ims: [_dets([], [], [], h, w)], images, ann, progress=False)["mask_ap"] == 0.0
    wrong = evaluate(lambda ims: [_dets([gt], [0.9], [2], h, w)], images, ann, progress=False)
    assert wrong["box_ap"] == 0.0 and wrong["mask_ap"] == 0.0


def test_detections_to_coco_round_trip():
    h, w = 30, 40
    masks = [_square_mask(h, w, 3, 4, 20, 9), _square_mask(h, w, 0, 0, 40, 30)]
    det = _dets(masks, [0.5, 0.25], [2, 5], h, w)
    entries = detections_to_coco(det, image_id=7)
    json.dumps(entries)  # must be JSON-serializable as is
    assert [e["bbox"] for e in entries] == [[3.0, 4.0, 17.0, 5.0], [0.0, 0.0, 40.0, 30.0]]
    assert [e["category_id"] for e in entries] == [2, 5] and entries[0]["image_id"] == 7
    for e, m in zip(entries, masks):
        rle = dict(e["segmentation"], counts=e["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
    no_masks = Detections(det.boxes, det.scores, det.labels, None)
    assert all("segmentation" not in e for e in detections_to_coco(no_masks, 1))


def test_evaluate_input_errors(tmp_path):
    with pytest.raises(DeploySdkError, match="annotation file not found"):
        evaluate(lambda x: x, tmp_path, tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DeploySdkError, match="not a COCO annotation file"):
        evaluate(lambda x: x, tmp_path, tmp_path / "bad.json")
    (tmp_path / "x").mkdir()
    images, ann = _write_coco(tmp_path / "x", 20, 20, [])
    (images / "a.png").unlink()
    with pytest.raises(DeploySdkError, match="1 image file"):
        evaluate(lambda x: x, images, ann)


def _tiny_model():
    cfg = ArchConfig(
        "resnet18_fpn",
        len(SHAPE_CLASSES) + 1,
        fpn_channels=32,
        box_head_dim=64,
        mask_head_dims=(32, 32),
        mask_predictor_dim=32,
        min_size=64,
        max_size=96,
    )
    torch.manual_seed(0)
    return build_resnet_fpn_maskrcnn(cfg).eval()


def test_eval_command_end_to_end(tmp_path, capsys):
    write_dataset(tmp_path / "ds", num=2, seed=17, min_size=64, max_size=80)
    torch.save(_tiny_model().state_dict(), tmp_path / "tiny.pth")
    out = tmp_path / "metrics.json"
    argv = [
        "eval",
        str(tmp_path / "tiny.pth"),
        "--images",
        str(tmp_path / "ds" / "images"),
        "--annotations",
        str(tmp_path / "ds" / "annotations.json"),
        "--json",
        str(out),
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "2 images" in printed
    metrics = json.loads(out.read_text())
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_images"] == 2


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("bbox", "10 20 30 40", "annotation 0 (id 1): 'bbox' must be [x, y, width, height]"),
        ("bbox", [1, 2, 3], "annotation 0 (id 1): 'bbox' must be"),
        ("bbox", [1, 2, -3, 4], "annotation 0 (id 1): 'bbox' must be"),
        ("area", "big", "annotation 0 (id 1): 'area' must be a number >= 0"),
        ("image_id", 99, "annotation 0 (id 1): 'image_id' must be the id of an entry of 'images'"),
        ("category_id", "1", "annotation 0 (id 1): 'category_id' must be an integer"),
        ("segmentation", "mask", "annotation 0 (id 1): 'segmentation' must be polygons"),
        ("segmentation", [[1, 2, 3]], "annotation 0 (id 1): 'segmentation' must be polygons"),
        ("iscrowd", 2, "annotation 0 (id 1): 'iscrowd' must be 0 or 1"),
    ],
)
def test_malformed_annotation_fields_are_named(tmp_path, field, value, expected):
    images, ann = _write_coco(tmp_path, 20, 20, [_square_mask(20, 20, 2, 2, 10, 10)])
    data = json.loads(ann.read_text())
    data["annotations"][0][field] = value
    ann.write_text(json.dumps(data))
    with pytest.raises(DeploySdkError) as info:
        evaluate(lambda x: x, images, ann)
    message = str(info.value)
    assert message.startswith(f"{ann}: {expected}") and "\n" not in message


def test_malformed_image_entries_are_named(tmp_path):
    images, ann = _write_coco(tmp_path, 20, 20, [])
    data = json.loads(ann.read_text())
    data["images"][0]["height"] = "20"
    ann.write_text(json.dumps(data))
    with pytest.raises(DeploySdkError, match=r"image 0 \(id 1\): 'height' must be a positive integer, got '20'"):
        evaluate(lambda x: x, images, ann)


def test_eval_command_malformed_annotation_is_one_line_before_the_model(tmp_path, capsys, monkeypatch):
    import deploy_sdk.conversion.commands.evaluate as evaluate_cmd

    monkeypatch.setattr(evaluate_cmd, "make_predictor", lambda args: pytest.fail("the model must not be loaded"))
    images, ann = _write_coco(tmp_path, 20, 20, [_square_mask(20, 20, 2, 2, 10, 10)])
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = "2,2,8,8"
    ann.write_text(json.dumps(data))
    rc = main(["eval", str(tmp_path / "model.onnx"), "--images", str(images), "--annotations", str(ann)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == (
        f"maskrcnn-deploy eval: error: {ann}: annotation 0 (id 1): 'bbox' must be [x, y, width, height]: "
        "4 numbers, width and height >= 0, got '2,2,8,8'"
    )
