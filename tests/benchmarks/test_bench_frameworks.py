"""``bench --checkpoint`` of a detectron2 or MMDetection checkpoint: torch-eager is that framework's own model.

Live where the framework imports (detectron2: its source on PYTHONPATH with fvcore, iopath, omegaconf, ...;
MMDetection: mmdet 3.3 with mmengine and the full mmcv): the benchmark's system must reproduce the committed
fixture outputs the framework produced itself (tests/reference/*_reference.py). Where it does not import (CI), the
command must say so in one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from framework_fixtures import (
    D2_FIXTURES,
    D2_VARIANTS,
    FRAMEWORK_THRESHOLDS,
    MMDET_CHECKPOINT,
    MMDET_FIXTURES,
    d2_images,
    d2_load,
    d2_reference,
    mmdet_images,
    mmdet_load,
    mmdet_outputs_of,
    mmdet_reference,
)

from deploy_sdk.conversion.parity import compare_detections

HAVE_DETECTRON2 = importlib.util.find_spec("detectron2") is not None


def _have_mmdet() -> bool:
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_MMDET = _have_mmdet()


class _Clock:
    def __init__(self):
        self.stages = []

    def lap(self, stage):
        self.stages.append(stage)


def _run_and_compare(system, images, reference_of):
    """Run ``system`` on the images as one batch; every detection >= 0.3 of ``reference_of(i, names)`` must match."""
    clock = _Clock()
    dets = system.run(images, clock)
    assert clock.stages == ["preprocess", "inference", "postprocess"]
    checked = 0
    for i, det in enumerate(dets):
        result = compare_detections(det, reference_of(i, det.class_names), FRAMEWORK_THRESHOLDS)
        assert not result.problems, f"image {i}: {result}"
        checked += result.num_reference
    assert checked >= 10


def _bench_errors(checkpoint: Path, system: str, capsys):
    """Run ``bench CHECKPOINT --compare SYSTEM`` (tiny settings): its exit code and its ``error:`` lines."""
    from deploy_sdk.cli import main

    argv = ["bench", str(checkpoint), "--compare", system, "--warmup", "0", "--iters", "1", "--image-size", "64x64"]
    rc = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if "error:" in line], err


@pytest.mark.skipif(
    not HAVE_DETECTRON2,
    reason="detectron2 is not importable (not on the package index; put its "
    "source tree and its Python dependencies on PYTHONPATH to run this)",
)
@pytest.mark.parametrize("variant", ["zoo_pkl", "custom_pth"])
def test_detectron2_eager_system_reproduces_default_predictor(variant):
    from deploy_sdk.benchmarks.framework_baselines import framework_eager_system

    ckpt, config = D2_VARIANTS[variant]
    system = framework_eager_system(
        d2_load(variant), D2_FIXTURES / ckpt, D2_FIXTURES / config if config else None, "cpu"
    )
    outputs = np.load(D2_FIXTURES / f"{variant}.outputs.npz")
    # one batched call, as the fixture's batch3_* outputs
    _run_and_compare(system, d2_images(), lambda i, names: d2_reference(outputs, f"batch3_{i}", names))


@pytest.mark.skipif(
    HAVE_DETECTRON2, reason="detectron2 is importable here: the missing-framework message is not reachable"
)
def test_bench_says_detectron2_is_needed_for_its_torch_eager(capsys):
    rc, lines, err = _bench_errors(D2_FIXTURES / "zoo_pkl.pkl", "torch-eager", capsys)
    assert rc == 1 and len(lines) == 1, err
    assert "detectron2 is not importable" in lines[0] and "torch-eager" in lines[0]


def test_bench_refuses_torchvision_export_of_a_detectron2_checkpoint(capsys):
    rc, _, err = _bench_errors(D2_FIXTURES / "zoo_pkl.pkl", "torchvision-onnx", capsys)
    assert rc == 1 and "detectron2 checkpoint" in err and "torch-eager" in err, err


@pytest.mark.skipif(
    not HAVE_MMDET,
    reason="MMDetection is not importable (mmdet 3.3, mmengine and mmcv built with "
    "its ops are not in the dev install; mmcv has no wheel)",
)
def test_mmdet_eager_system_reproduces_mmdetection():
    from deploy_sdk.benchmarks.framework_baselines import framework_eager_system

    system = framework_eager_system(mmdet_load(), MMDET_CHECKPOINT, None, "cpu")
    outputs = np.load(MMDET_FIXTURES / "reference.npz")
    # one test_step on the batch, as the fixture's batch3_* outputs
    _run_and_compare(
        system, mmdet_images(), lambda i, names: mmdet_reference(mmdet_outputs_of(outputs, f"batch3_{{}}_{i}"), names)
    )


@pytest.mark.skipif(HAVE_MMDET, reason="MMDetection is importable here: the missing-framework message is not reachable")
def test_bench_says_mmdetection_is_needed_for_its_torch_eager(capsys):
    rc, lines, err = _bench_errors(MMDET_CHECKPOINT, "torch-eager", capsys)
    assert rc == 1 and len(lines) == 1, err
    assert "MMDetection" in lines[0] and "not importable" in lines[0] and "torch-eager" in lines[0]
