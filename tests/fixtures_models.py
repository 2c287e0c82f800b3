"""Plain helpers about the shipped model, imported by name where used: its checkpoint, its exported ONNX graph,
held-out test images, the parity check of the export criteria.

The fixtures built on them (``shipped_model_file``, ``shipped_onnx``, ``shipped_loaded``) are in tests/conftest.py.
The export (~30 s) is cached under build/test_models/ keyed by the checkpoint's SHA-256, so it runs once per
checkpoint, not once per test session.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
CACHE = ROOT / "build" / "test_models"
# Where the shipped model is missing (e.g. while it is retrained), a training run's latest snapshot stands in.
SNAPSHOT = ROOT / "runs" / "shapes_r18" / "model.safetensors"
# Seed of held-out images: never used for training (the training script uses small seeds).
HELD_OUT_SEED = 917_000


def shipped_checkpoint() -> Path:
    """The shipped model (models/shapes_r18/model.safetensors), else a stable copy of the training snapshot."""
    from deploy_sdk.conversion.checkpoint import shipped_model_path
    from deploy_sdk.errors import CheckpointError

    try:
        return shipped_model_path()
    except CheckpointError:
        pass
    if not SNAPSHOT.is_file():
        pytest.skip("neither the shipped model nor a training snapshot exists; run models/train_shapes.py first")
    CACHE.mkdir(parents=True, exist_ok=True)
    # The snapshot is rewritten while training runs: copy it, then name the copy by its content.
    tmp = CACHE / "snapshot.partial"
    shutil.copyfile(SNAPSHOT, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
    final = CACHE / f"snapshot-{digest}.safetensors"
    tmp.replace(final)
    for stale in CACHE.glob("snapshot-*"):  # earlier snapshots and their exports: 100 MB each
        if digest not in stale.name:
            stale.unlink(missing_ok=True)
    return final


def shipped_onnx_path(checkpoint: Optional[Path] = None) -> Path:
    """The exported deployment graph of ``checkpoint`` (default: :func:`shipped_checkpoint`), cached."""
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.export import export_onnx

    checkpoint = checkpoint or shipped_checkpoint()
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    prefix = "snapshot" if Path(checkpoint).name.startswith("snapshot-") else Path(checkpoint).stem
    path = CACHE / f"{prefix}-{digest}.onnx"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        export_onnx(load_checkpoint(checkpoint), path, log=lambda *_: None)  # written atomically
    return path


def held_out_images(count: int, seed: int = HELD_OUT_SEED) -> List[np.ndarray]:
    """``count`` held-out synthetic RGB images of different sizes and aspect ratios ([H, W, 3] uint8)."""
    from deploy_sdk.synthetic_shapes import generate_sample

    sizes = [(256, 320), (300, 420), (384, 384), (330, 512), (280, 300), (420, 512), (256, 400), (500, 512)]
    return [
        generate_sample(seed, i, min_size=sizes[i % len(sizes)][0], max_size=sizes[i % len(sizes)][1]).image
        for i in range(count)
    ]


def parity_failures(reference, candidate, **overrides) -> List[str]:
    """Per-image problems of ``candidate`` vs ``reference`` (lists of Detections) by the export issue's criteria
    (``deploy_sdk.conversion.parity``); an empty list means they agree."""
    from deploy_sdk.conversion.parity import ParityThresholds, compare_detections

    thresholds = ParityThresholds(**overrides)
    assert len(reference) == len(candidate), f"{len(candidate)} results for {len(reference)} images"
    problems = []
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        assert ref.image_size == cand.image_size, f"image {i}: {cand.image_size} vs {ref.image_size}"
        result = compare_detections(cand, ref, thresholds)
        if not result.ok:
            problems.append(f"image {i} {ref.image_size}: {result.summary()}")
    return problems
