"""Offline batch inference on a local Ray cluster (`maskrcnn-deploy batch`, `deploy_sdk.serving.run_batch_job`):
its COCO results equal `Predictor` called directly on the same blocks of images; a job SIGKILLed halfway and run
again resumes (finished blocks skipped) and gives byte-for-byte the JSON of an uninterrupted run, every image
exactly once; unreadable images are listed as failures with the reason; a rerun with other inputs is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from fixtures_models import held_out_images
from repo_paths import REPO_ROOT

from deploy_sdk.errors import DeploySdkError, InputImageError
from deploy_sdk.serving.offline import resolve_inputs

BATCH = 2
COUNT = 11  # 10 images and one corrupt file: 6 blocks of 2 (the last one short)


def _save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch_images")
    for i, image in enumerate(held_out_images(COUNT - 1)):
        _save_png(image, folder / f"img{i:02d}.png")
    (folder / "img05b.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")  # sorts 7th: inside block 3
    return folder


@pytest.fixture(scope="module")
def reference(shipped_onnx, image_dir) -> Dict[str, Any]:
    """What the job must write, from Predictor called directly: the files in name order, image ids 1.., each block
    of BATCH consecutive readable images as one batch (as the job runs it), COCO results in id order."""
    from deploy_sdk import Predictor
    from deploy_sdk.preprocessing import load_image

    files = sorted(image_dir.iterdir())
    results: List[Dict[str, Any]] = []
    images: List[Dict[str, Any]] = []
    failed: List[str] = []
    with Predictor(shipped_onnx, batch_size=BATCH, threads=1, mask_format="rle") as predictor:
        for start in range(0, len(files), BATCH):
            block = []
            for image_id, f in enumerate(files[start : start + BATCH], start + 1):
                try:
                    block.append((image_id, f, load_image(f)))
                except InputImageError:
                    failed.append(str(f))
            for (image_id, f, image), det in zip(block, predictor.predict([im for _, _, im in block])):
                images.append({"id": image_id, "file_name": str(f), "height": image.shape[0], "width": image.shape[1]})
                results.extend(det.to_coco(image_id))
        class_names = list(predictor.metadata.class_names)
    assert len(results) > 0 and failed == [str(image_dir / "img05b.png")]
    return {"results": results, "images": images, "failed": failed, "class_names": class_names}


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the serve extra (ray[data]) is not installed")
    pytest.importorskip("ray.data", reason="the serve extra (ray[data]) is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _run(model, inputs, out, **kwargs):
    from deploy_sdk.serving import run_batch_job

    return run_batch_job(model, inputs, out, batch_size=BATCH, threads=1, progress=False, log=lambda _: None, **kwargs)


def _check_schema(document: Dict[str, Any]) -> None:
    """results.json against docs/schemas/results.schema.json (the file `maskrcnn-deploy infer` writes)."""
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry, Resource

    folder = REPO_ROOT / "docs" / "schemas"
    schemas = {
        name: json.loads((folder / name).read_text()) for name in ("results.schema.json", "detections.schema.json")
    }
    registry = Registry().with_resources([(s["$id"], Resource.from_contents(s)) for s in schemas.values()])
    jsonschema.Draft202012Validator(schemas["results.schema.json"], registry=registry).validate(document)


def _read(out: Path) -> Dict[str, Any]:
    document = json.loads((out / "results.json").read_text())
    _check_schema(document)
    core = ("image_id", "category_id", "bbox", "score", "segmentation")
    assert [a["id"] for a in document["annotations"]] == list(range(1, len(document["annotations"]) + 1))
    return {
        "results": [{k: a[k] for k in core if k in a} for a in document["annotations"]],
        "document_images": document["images"],
        "categories": [c["name"] for c in document["categories"]],
        "images": json.loads((out / "images.json").read_text())["images"],
        "failures": json.loads((out / "failures.json").read_text())["failures"],
    }


def test_resolve_inputs_folder_glob_manifest(tmp_path):
    a = _save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "b.png")
    b = _save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("a.jpg\n# a comment\n\n  b.png  \nmissing.png\n")
    assert resolve_inputs([tmp_path]) == [b.resolve(), a.resolve()]  # image suffixes only, sorted by name
    assert resolve_inputs([str(tmp_path / "*.png")]) == [a.resolve()]
    assert resolve_inputs([tmp_path / "notes.txt"]) == [b.resolve(), a.resolve(), (tmp_path / "missing.png")]
    with pytest.raises(InputImageError, match="input not found"):
        resolve_inputs([tmp_path / "nothing.png"])
    with pytest.raises(InputImageError, match="matches no image"):
        resolve_inputs([str(tmp_path / "*.webp")])


# Ray Data warns about its own deprecated settings when it copies its context: not ours to fix.
quiet_ray_data = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.mark.slow
@quiet_ray_data
def test_batch_job_equals_predictor_and_resumes_after_sigkill(
    cluster,
    shipped_onnx,
    image_dir,
    reference,
    tmp_path,
):
    # 1. Uninterrupted, in this process: the reference's results, images and the one failure with its reason.
    whole = tmp_path / "whole"
    summary = _run(shipped_onnx, [image_dir], whole, workers=1)
    assert summary.total_images == COUNT and summary.processed_images == COUNT and summary.skipped_images == 0
    got = _read(whole)
    assert got["results"] == reference["results"]
    assert got["images"] == reference["images"] == got["document_images"]
    assert got["categories"] == reference["class_names"][1:]
    assert [f["file_name"] for f in got["failures"]] == reference["failed"]
    assert "img05b.png" in got["failures"][0]["error"] and "\n" not in got["failures"][0]["error"]
    assert summary.detections == len(reference["results"]) and len(summary.failures) == 1

    # 2. The command, joined to the test's cluster, SIGKILLed once some blocks but not all are written.
    resumed = tmp_path / "resumed"
    cmd = [
        sys.executable,
        "-c",
        "from deploy_sdk.cli import main; raise SystemExit(main())",
        "batch",
        str(shipped_onnx),
        str(image_dir),
        "--out",
        str(resumed),
        "--batch-size",
        str(BATCH),
        "--threads",
        "1",
        "--no-progress",
        "--address",
        cluster,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    blocks = -(-COUNT // BATCH)
    try:
        deadline = time.monotonic() + 120
        while len(list((resumed / "shards").glob("block-*.json"))) < 2:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no shard within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_before = sorted(p.name for p in (resumed / "shards").glob("block-*.json"))
    assert 2 <= len(done_before) < blocks, f"killed too late to prove anything: {done_before}"
    assert not (resumed / "results.json").exists()
    stamps = {name: (resumed / "shards" / name).stat().st_mtime_ns for name in done_before}

    # 3. The same command again: the finished blocks are skipped, not recomputed; the JSON is the uninterrupted
    # run's, byte for byte, each image exactly once; the summary names the speed and the failure with its reason.
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # 1: an image failed
    skipped = len(done_before) * BATCH
    assert f"resuming: {skipped} of {COUNT} images already done" in rerun.stderr, rerun.stderr
    assert f"this run: {COUNT - skipped} images in" in rerun.stdout and "images/s" in rerun.stdout, rerun.stdout
    assert "failed: " in rerun.stderr and "img05b.png" in rerun.stderr and "1 of 11 images failed" in rerun.stderr
    for name, stamp in stamps.items():
        assert (resumed / "shards" / name).stat().st_mtime_ns == stamp, f"{name} was recomputed"
    for name in ("results.json", "images.json", "failures.json"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    ids = [entry["id"] for entry in _read(resumed)["images"]] + [7]  # 7: the corrupt file
    assert sorted(ids) == list(range(1, COUNT + 1))

    # 4. A finished job run again does nothing and changes nothing.
    summary = _run(shipped_onnx, [image_dir], resumed, workers=1)
    assert summary.processed_images == 0 and summary.skipped_images == COUNT
    assert (resumed / "results.json").read_bytes() == (whole / "results.json").read_bytes()


@pytest.mark.slow
@quiet_ray_data
def test_rerun_with_other_inputs_is_refused(cluster, shipped_onnx, image_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "job"
    first = sorted(image_dir.glob("img0[01].png"))
    _run(shipped_onnx, first, out, workers=1, overlays=True)
    before = (out / "results.json").read_bytes()
    # Overlays (written by the workers): one per image, named by id and stem, the image's size.
    for image_id, f in enumerate(first, 1):
        with Image.open(out / "overlays" / f"{image_id:06d}-{f.stem}.png") as overlay, Image.open(f) as source:
            assert overlay.size == source.size
    with pytest.raises(DeploySdkError, match="another job.*image list"):
        _run(shipped_onnx, sorted(image_dir.glob("img0[012].png")), out, workers=1)
    with pytest.raises(DeploySdkError, match="batch size"):
        from deploy_sdk.serving import run_batch_job

        run_batch_job(shipped_onnx, first, out, batch_size=1, threads=1, progress=False, log=lambda _: None)
    assert (out / "results.json").read_bytes() == before
