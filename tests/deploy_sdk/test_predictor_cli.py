"""`maskrcnn-deploy infer` on the toy graph: overlays, COCO results readable by pycocotools, clean errors."""

from __future__ import annotations

import json

import numpy as np
from compare import TOY_BOX_COCO, assert_close
from PIL import Image
from toy_deployment_graph import TOY_BOX_FRACTIONS, write_toy_graph

from deploy_sdk.cli import main


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 + i, np.uint8)).save(folder / f"img{i}.png")


def test_infer_writes_overlays_and_coco_results(tmp_path, capsys):
    model = write_toy_graph(tmp_path / "toy.onnx")
    _write_images(tmp_path / "a", [(60, 80), (100, 40), (33, 90)])
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "black.png")
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(model),
            str(tmp_path / "a"),
            str(tmp_path / "black.png"),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    assert "6 detections in 4 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "black.png",
        "images.json",
        "img0.png",
        "img1.png",
        "img2.png",
        "results.json",
    ]
    overlay = np.asarray(Image.open(out / "img1.png"))
    assert overlay.shape == (100, 40, 3) and (overlay != 41).any()

    images = json.loads((out / "images.json").read_text())["images"]
    results = json.loads((out / "results.json").read_text())["annotations"]
    assert [im["file_name"].split("/")[-1] for im in images] == ["img0.png", "img1.png", "img2.png", "black.png"]
    assert len(results) == 6 and {r["image_id"] for r in results} == {1, 2, 3}
    first = results[0]
    x1, y1, x2, y2 = (TOY_BOX_FRACTIONS[0] * [80, 60, 80, 60]).tolist()
    assert_close(first["bbox"], [x1, y1, x2 - x1, y2 - y1], tol=TOY_BOX_COCO, what="COCO bbox")

    # The results load into pycocotools as a results file for these images.
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": images, "annotations": [], "categories": [{"id": i, "name": str(i)} for i in range(1, 4)]}
    gt.createIndex()
    dt = gt.loadRes(results)
    assert len(dt.getAnnIds()) == 6
    assert dt.annToMask(dt.loadAnns(dt.getAnnIds(imgIds=[1]))[0]).shape == (60, 80)


def test_infer_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    model = write_toy_graph(tmp_path / "toy.onnx")
    out = tmp_path / "out"
    assert main(["infer", str(model), str(tmp_path / "missing.png"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "image file not found" in err
    (tmp_path / "empty").mkdir()
    assert main(["infer", str(model), str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "contains no images" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"no png")
    assert main(["infer", str(model), str(tmp_path / "bad.png"), "--out", str(out)]) == 1
    assert "cannot read image file" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    assert not [p for p in out.glob("*") if p.name.endswith(".partial")] if out.exists() else True


def test_model_argument_errors_name_the_fix(tmp_path, capsys):
    img = tmp_path / "i.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(img)
    url = "https://example.com/models/m.onnx"
    assert main(["infer", url, str(img), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{url} is a URL" in err and "https:/example" not in err and "curl -L -o m.onnx" in err
    odd = tmp_path / "model.xyz"
    odd.write_bytes(b"\x00" * 8)
    assert main(["infer", str(odd), str(img), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot tell the backend" in err and "--backend on the command line" in err
    assert not (tmp_path / "o").exists()
