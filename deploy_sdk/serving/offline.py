"""Offline batch inference on Ray Data: a folder, a glob or a manifest of image paths → COCO results, resumable.

Layout of the output folder ``OUT``:

- ``OUT/job.json``: what the job is (the image list, the model's SHA-256, the block size); a resumed job must
  be the same job, so a rerun with other inputs, another model or another batch size is refused, not mixed in.
- ``OUT/shards/block-NNNNNN.json``: the results of one block of ``batch_size`` consecutive images, written
  atomically by the driver as each block comes back. A block is the unit of work, of batching and of resuming.
- ``OUT/results.json`` (a complete COCO file, ``info``, ``images``, ``categories``, ``annotations``, exactly as
  ``maskrcnn-deploy infer`` writes it, docs/json_schemas.md; its ``annotations`` are what ``COCO.loadRes`` takes:
  ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``, RLE ``segmentation``), ``OUT/images.json``
  (which id is which file; ids are 1-based positions in the image list) and ``OUT/failures.json`` (images that
  could not be read, with the reason): merged from every shard at the end, sorted by image id, written
  atomically; the same files ``maskrcnn-deploy infer`` writes. When no image could be read, only
  ``failures.json`` is written and the job raises.
- ``OUT/overlays/`` (with ``overlays=True``): ``NNNNNN-<stem>.png``, written by the workers (on a multi-node
  cluster ``OUT`` must be on storage every node sees, as the images must be).

Resuming: a job killed at any point (even SIGKILL) is rerun with the same arguments (one run per ``OUT`` at a
time); blocks whose shard exists are skipped, half-written shards of the killed run are deleted, the others are
computed, and the merge gives every image exactly once. Blocks are fixed by the image list and ``batch_size`` and
each block is always inferred as one batch, so a resumed job's JSON is identical to an uninterrupted one's (the
images of a batch share one padded canvas, which the results depend on slightly).

Engine: ``ray.data.from_items`` (one item per block) → ``map_batches`` with an actor pool of ``workers``
:class:`~deploy_sdk.Predictor` actors (each reads and decodes its block's images and runs them as one batch) →
``iter_rows`` on the driver, which writes the shards. Ray's own progress bars show progress.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from deploy_sdk.errors import DeploySdkError, InputImageError, require

__all__ = ["BatchJobSpec", "BatchSummary", "resolve_inputs", "run_batch_job", "merge_shards", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
JOB_FILE = "job.json"
SHARDS = "shards"
PathLike = Union[str, os.PathLike]


@dataclass
class BatchJobSpec:
    """What each worker needs to open its model; plain data, shipped to the actors by Ray."""

    model: str
    backend: str = "auto"
    device: str = "cpu"
    threads: Optional[int] = None
    score_threshold: Optional[float] = None
    batch_size: int = 4
    overlays_dir: Optional[str] = None


@dataclass
class BatchSummary:
    """The outcome of :func:`run_batch_job`: counts, this run's speed, and the failures (index, file, reason)."""

    total_images: int
    skipped_images: int  # done by an earlier, interrupted run of the same job
    processed_images: int  # done by this run
    detections: int
    seconds: float
    failures: List[Dict[str, Any]] = field(default_factory=list)
    out: Optional[Path] = None

    @property
    def images_per_second(self) -> float:
        return self.processed_images / self.seconds if self.seconds > 0 else 0.0


def resolve_inputs(inputs: Sequence[PathLike]) -> List[Path]:
    """Image files from folders (their image files, sorted by name, not recursive), glob patterns (``*``, ``?``,
    ``[``; sorted), manifest files (any file whose suffix is not an image suffix: one path per line, relative to
    the manifest's folder, blank lines and ``#`` comments ignored) and image files, in the order given."""
    files: List[Path] = []
    for raw in inputs:
        text = os.fspath(raw)
        p = Path(text).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputImageError(f"folder {p} contains no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
            files.extend(_read_manifest(p))
        elif p.is_file():
            files.append(p)
        elif any(c in text for c in "*?["):
            found = sorted(
                Path(m)
                for m in glob.glob(os.path.expanduser(text), recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise InputImageError(f"the pattern {text} matches no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        else:
            raise InputImageError(f"input not found: {text} (expected an image, a folder, a glob or a manifest)")
    if not files:
        raise InputImageError("no input images")
    return [f.resolve() for f in files]


def _read_manifest(path: Path) -> List[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputImageError(f"cannot read the manifest {path}: {exc}") from exc
    files = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        f = Path(entry).expanduser()
        if not f.is_absolute():
            f = path.parent / f
        files.append(f)  # a missing file is a failure of that image, listed, not a refusal of the whole job
    if not files:
        raise InputImageError(f"the manifest {path} lists no image paths (one per line)")
    return files


# ------------------------------------------------------------------------------------------------- the workers
class _BlockWorker:
    """One actor of the pool: a Predictor that runs one block of images as one batch per call."""

    def __init__(self, spec: BatchJobSpec):
        from deploy_sdk.predictor import Predictor

        self.spec = spec
        self.predictor = Predictor(
            spec.model,
            backend=spec.backend,
            device=spec.device,
            batch_size=spec.batch_size,
            score_threshold=spec.score_threshold,
            threads=spec.threads,
            mask_format="box",
        )

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        shards = [self.run_block(json.loads(str(items))) for items in batch["items"]]
        return {"block": np.asarray(batch["block"], dtype=np.int64), "shard": np.asarray(shards, dtype=object)}

    def run_block(self, items: List[Tuple[int, str]]) -> str:
        """``items``: [(image id, path)]; returns the shard JSON. Every image is decoded and checked first, so
        the batch is the block's readable images whatever order failures come in (deterministic on resume)."""
        from deploy_sdk.preprocessing import check_resizable, load_image

        meta = self.predictor.metadata
        good: List[Tuple[int, str, np.ndarray]] = []
        failures = []
        for image_id, path in items:
            try:
                image = load_image(path, what=path)
                check_resizable(image.shape[0], image.shape[1], int(meta.min_size), int(meta.max_size), path)
            except InputImageError as exc:
                message = str(exc) if path in str(exc) else f"{path}: {exc}"
                failures.append({"index": image_id - 1, "image_id": image_id, "file_name": path, "error": message})
                continue
            good.append((image_id, path, image))
        images, results = [], []
        if good:
            detections = self.predictor.predict([image for _, _, image in good])
            for (image_id, path, image), det in zip(good, detections):
                height, width = det.image_size
                images.append({"id": image_id, "file_name": path, "height": int(height), "width": int(width)})
                results.extend(det.to_coco(image_id))
                if self.spec.overlays_dir:
                    self._write_overlay(image_id, path, image, det)
        return json.dumps(
            {"images": images, "results": results, "failures": failures, "class_names": list(meta.class_names)}
        )

    def _write_overlay(self, image_id: int, path: str, image: np.ndarray, det: Any) -> None:
        from PIL import Image

        from deploy_sdk.atomic_file import atomic_path

        assert self.spec.overlays_dir is not None
        target = Path(self.spec.overlays_dir) / f"{image_id:06d}-{Path(path).stem}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(det.draw(image)).save(tmp, format="PNG")


# ------------------------------------------------------------------------------------------------- the driver
def _job_record(files: List[Path], model_sha256: str, batch_size: int) -> Dict[str, Any]:
    return {"format": 1, "model_sha256": model_sha256, "batch_size": int(batch_size), "files": [str(f) for f in files]}


def _check_or_write_job(out: Path, record: Dict[str, Any]) -> None:
    from deploy_sdk.atomic_file import atomic_path

    path = out / JOB_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DeploySdkError(f"{path} is unreadable ({exc}); delete {out} or choose another --out") from exc
        for key, what in (("files", "image list"), ("model_sha256", "model"), ("batch_size", "batch size")):
            if existing.get(key) != record[key]:
                raise DeploySdkError(
                    f"{out} holds results of another job (its {what} differs from this run's); resume with the "
                    f"same inputs, model and --batch-size, or choose another --out"
                )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def _blocks(files: List[Path], batch_size: int) -> List[List[Tuple[int, str]]]:
    items = [(i + 1, str(f)) for i, f in enumerate(files)]
    return [items[s : s + batch_size] for s in range(0, len(items), batch_size)]


def _shard_path(out: Path, block: int) -> Path:
    return out / SHARDS / f"block-{block:06d}.json"


def _write_shard(out: Path, block: int, text: str) -> None:
    from deploy_sdk.atomic_file import atomic_path

    with atomic_path(_shard_path(out, block)) as tmp:
        tmp.write_text(text)


def merge_shards(
    out: PathLike, expected_blocks: Optional[int] = None, model: str = ""
) -> Tuple[int, int, List[Dict[str, Any]]]:
    """Merge ``OUT/shards/*.json`` into ``results.json`` (a complete COCO file, as ``maskrcnn-deploy infer``
    writes it), ``images.json`` and ``failures.json`` (atomically; a stale ``failures.json`` is deleted when there
    are none). Returns (images, detections, failures).

    Each image id must come from exactly one shard: a duplicate is a bug, refused rather than written twice."""
    from deploy_sdk.atomic_file import atomic_path
    from deploy_sdk.commands.infer import coco_document

    out = Path(out)
    shard_files = sorted((out / SHARDS).glob("block-*.json"))
    if expected_blocks is not None and len(shard_files) != expected_blocks:
        raise DeploySdkError(
            f"{out / SHARDS} holds {len(shard_files)} shards, {expected_blocks} expected; rerun "
            "the job to compute the missing blocks"
        )
    images: Dict[int, Dict[str, Any]] = {}
    results: Dict[int, List[Dict[str, Any]]] = {}
    failures: Dict[int, Dict[str, Any]] = {}
    class_names: List[str] = []
    for shard in shard_files:
        try:
            data = json.loads(shard.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DeploySdkError(
                f"{shard} is unreadable ({exc}); delete it and rerun the job to recompute its block"
            ) from exc
        class_names = class_names or list(data.get("class_names", []))
        for entry in data["images"]:
            if entry["id"] in images or entry["id"] in failures:
                raise DeploySdkError(f"image id {entry['id']} appears in two shards ({shard}); delete {out} and rerun")
            images[entry["id"]] = entry
        for failure in data["failures"]:
            if failure["image_id"] in images or failure["image_id"] in failures:
                raise DeploySdkError(
                    f"image id {failure['image_id']} appears in two shards ({shard}); delete {out} and rerun"
                )
            failures[failure["image_id"]] = failure
        for r in data["results"]:
            results.setdefault(int(r["image_id"]), []).append(r)
    merged = [r for image_id in sorted(results) for r in results[image_id]]
    image_list = [images[k] for k in sorted(images)]
    if image_list:
        with atomic_path(out / "results.json") as tmp:
            tmp.write_text(json.dumps(coco_document(image_list, merged, class_names, model)))
        with atomic_path(out / "images.json") as tmp:
            tmp.write_text(json.dumps({"images": image_list}, indent=1))
    failure_list = [{k: v for k, v in failures[k].items() if k != "image_id"} for k in sorted(failures)]
    failures_path = out / "failures.json"
    if failure_list:
        with atomic_path(failures_path) as tmp:
            tmp.write_text(json.dumps({"failures": failure_list}, indent=1))
    elif failures_path.is_file():
        failures_path.unlink()
    return len(images), len(merged), failure_list


def run_batch_job(
    model: PathLike,
    inputs: Sequence[PathLike],
    out: PathLike,
    *,
    workers: int = 1,
    batch_size: int = 4,
    backend: str = "auto",
    device: str = "cpu",
    threads: Optional[int] = None,
    score_threshold: Optional[float] = None,
    overlays: bool = False,
    num_cpus_per_worker: float = 1.0,
    num_gpus_per_worker: float = 0.0,
    ray_address: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> BatchSummary:
    """Run (or resume) the job ``model`` × ``inputs`` → ``out`` (see the module docstring) and merge its shards.

    ``workers`` actors with ``num_cpus_per_worker`` / ``num_gpus_per_worker`` Ray resources each; ``batch_size``
    images per block (one Predictor batch). Ray is started locally unless it already is (or ``ray_address``
    names a cluster: "auto" or host:port).
    """
    from deploy_sdk.atomic_file import cannot_write, check_output_dir, file_sha256

    if int(workers) < 1 or int(batch_size) < 1:
        raise DeploySdkError(f"workers and batch_size must be positive, got {workers} and {batch_size}")
    model_path = Path(model).expanduser().resolve()
    if not model_path.exists():
        raise DeploySdkError(f"model file not found: {model}")
    files = resolve_inputs(inputs)
    out = check_output_dir(out, "--out")
    try:
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        if overlays:
            (out / "overlays").mkdir(exist_ok=True)
    except OSError as exc:
        raise cannot_write(out, exc) from exc
    for stale in (out / SHARDS).glob(".block-*.partial"):  # a shard being written when a run was killed
        stale.unlink(missing_ok=True)
    digest = file_sha256(model_path) if model_path.is_file() else ""
    _check_or_write_job(out, _job_record(files, digest, int(batch_size)))
    blocks = _blocks(files, int(batch_size))
    todo = [k for k in range(len(blocks)) if not _shard_path(out, k).is_file()]
    skipped = sum(len(blocks[k]) for k in range(len(blocks)) if k not in set(todo))
    if skipped:
        log(f"resuming: {skipped} of {len(files)} images already done in {out / SHARDS}, {len(files) - skipped} to go")
    started = time.perf_counter()
    processed = 0
    if todo:
        ray = require("ray", "serve", "offline batch inference (maskrcnn-deploy batch)")
        require("ray.data", "serve", "offline batch inference (maskrcnn-deploy batch)")
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = bool(progress)
        spec = BatchJobSpec(
            model=str(model_path),
            backend=backend,
            device=device,
            threads=threads,
            score_threshold=score_threshold,
            batch_size=int(batch_size),
            overlays_dir=str(out / "overlays") if overlays else None,
        )
        items = [{"block": k, "items": json.dumps(blocks[k])} for k in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _BlockWorker,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=int(workers)),
            num_cpus=float(num_cpus_per_worker),
            num_gpus=float(num_gpus_per_worker) or None,
            batch_format="numpy",
        )
        for row in ds.iter_rows():
            block = int(row["block"])
            _write_shard(out, block, str(row["shard"]))
            processed += len(blocks[block])
    seconds = time.perf_counter() - started
    done, detections, failures = merge_shards(out, expected_blocks=len(blocks), model=str(model))
    if not done:
        raise InputImageError(f"none of the {len(files)} images could be read; the first: {failures[0]['error']}")
    return BatchSummary(
        total_images=len(files),
        skipped_images=skipped,
        processed_images=processed,
        detections=detections,
        seconds=seconds,
        failures=failures,
        out=out,
    )
