"""The synthetic data set: determinism, variety, annotations consistent with pixels, COCO files pycocotools reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from deploy_sdk.cli import main
from deploy_sdk.synthetic_shapes import SHAPE_CLASSES, generate_sample, mask_to_rle, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 copy keyword


def test_same_seed_same_sample_and_different_seeds_differ():
    a, b = generate_sample(3, 7), generate_sample(3, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.boxes, b.boxes)
    c = generate_sample(4, 7)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    d = generate_sample(3, 8)
    assert a.image.shape != d.image.shape or not np.array_equal(a.image, d.image)


def test_samples_are_valid_and_varied():
    samples = [generate_sample(11, i, min_size=64, max_size=160) for i in range(24)]
    sizes = {s.image.shape[:2] for s in samples}
    assert len(sizes) > 12, "image sizes and aspect ratios should vary"
    labels = np.concatenate([s.labels for s in samples])
    assert len(SHAPE_CLASSES) >= 5 and set(labels.tolist()) == set(range(1, len(SHAPE_CLASSES) + 1))
    for s in samples:
        h, w = s.image.shape[:2]
        assert 64 <= h <= 160 and 64 <= w <= 160
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
        assert s.masks.shape == (len(s.labels), h, w) and s.masks.dtype == bool
        assert s.boxes.shape == (len(s.labels), 4) and s.boxes.dtype == np.float32
        for mask, box in zip(s.masks, s.boxes):
            # The box is the tight box of the visible mask, x2/y2 exclusive (checked against a naive scan).
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # Visible masks never overlap: a later object hides what it covers of earlier ones.
        if len(s.masks):
            assert s.masks.sum(axis=0).max() <= 1


def test_rle_round_trips_through_pycocotools():
    s = generate_sample(5, 2, min_size=64, max_size=128)
    assert len(s.masks)
    for mask in s.masks:
        rle = mask_to_rle(mask)
        compressed = mask_utils.frPyObjects(rle, *rle["size"])
        assert np.array_equal(mask_utils.decode(compressed).astype(bool), mask)
        assert int(mask_utils.area(compressed)) == int(mask.sum())
    # A mask starting with a foreground pixel (RLE must begin with a zero-length background run).
    corner = np.zeros((5, 4), dtype=bool)
    corner[0, 0] = corner[4, 3] = True
    rle = mask_to_rle(corner)
    assert rle["counts"][0] == 0
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 5, 4)).astype(bool), corner)


def test_written_dataset_loads_in_pycocotools(tmp_path):
    ann = write_dataset(tmp_path, num=3, seed=21, min_size=64, max_size=96)
    coco = COCO(str(ann))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        pixels = np.asarray(Image.open(tmp_path / "images" / info["file_name"]))
        sample = generate_sample(21, img_id - 1, min_size=64, max_size=96)
        assert np.array_equal(pixels, sample.image), "PNG must hold exactly the generated pixels"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert len(anns) == len(sample.labels)
        for a, mask, label in zip(anns, sample.masks, sample.labels):
            assert np.array_equal(coco.annToMask(a).astype(bool), mask)
            assert a["category_id"] == label and a["area"] == mask.sum()


def test_data_command_writes_a_deterministic_set(tmp_path, capsys):
    out = tmp_path / "set"
    args = ["data", "shapes", "--out", str(out), "--num", "3", "--seed", "9", "--min-size", "64", "--max-size", "96"]
    assert main(args) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    first = (out / "annotations.json").read_text()
    assert len(list((out / "images").glob("*.png"))) == 3
    # Refuses to overwrite silently; replaces its own set with --overwrite, identically for the same seed.
    assert main(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--quiet"]) == 0
    assert (out / "annotations.json").read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["set"], "no temporary folders left behind"


def test_data_command_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import deploy_sdk.synthetic_shapes as shapes

    real = shapes.generate_sample
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes, "generate_sample", failing)
    rc = main(["data", "shapes", "--out", str(tmp_path / "set"), "--num", "3", "--min-size", "64", "--max-size", "80"])
    assert rc == 130
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_the_old_set_when_the_swap_fails(tmp_path, monkeypatch, capsys):
    out = tmp_path / "set"
    args = [
        "data",
        "shapes",
        "--out",
        str(out),
        "--num",
        "2",
        "--seed",
        "4",
        "--min-size",
        "48",
        "--max-size",
        "48",
        "--quiet",
    ]
    assert main(args) == 0
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    real_rename = Path.rename

    def rename(self, target):
        # The finished new set (a .partial folder) cannot be moved into place, e.g. the disk was removed.
        if self.name.endswith(".partial") and Path(target) == out:
            raise OSError(5, "Input/output error", str(self), str(target))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    rc = main([a if a != "2" else "3" for a in args] + ["--overwrite"])  # a different set: 3 images
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot write {out}: Input/output error" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
    assert [p.name for p in tmp_path.iterdir()] == ["set"], "no temporary folders left behind"


def test_data_sizes_above_the_ceiling_are_refused(tmp_path, capsys):
    # Before the ceiling this was a MemoryError traceback (one image of 100000x100000 is 120 GB as float32).
    assert (
        main(
            [
                "data",
                "shapes",
                "--out",
                str(tmp_path / "d"),
                "--num",
                "1",
                "--min-size",
                "100000",
                "--max-size",
                "100000",
            ]
        )
        == 1
    )
    assert "<= 4096" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", str(tmp_path / "d"), "--min-size", "4096", "--max-size", "4097"]) == 1
    assert "<= 4096" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
