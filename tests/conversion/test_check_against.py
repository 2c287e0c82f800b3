"""`maskrcnn-deploy check A --against B`: any two of {checkpoint, .onnx, fp16/INT8 .onnx, engine}, at detection
level; the parity criterion (decided mask pixels, the worst detection named); no warnings leaking from check or
quantize.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings

import numpy as np
import pytest
from compare import PRINTED_ONE_DECIMAL, PRINTED_THREE_DECIMALS

from deploy_sdk.cli import main
from deploy_sdk.conversion.parity import ParityThresholds, compare_detections, decided_mask_iou, mask_iou
from deploy_sdk.detections import Detections


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------ the parity criterion


def test_decided_mask_iou_hand_worked():
    # pixel 0: both in; 1: a in, b out (a disagreement); 2: both within 0.05 of 0.5 (undecided); 3: both out
    a = np.array([[0.9, 0.9, 0.52, 0.1]], dtype=np.float32)
    b = np.array([[0.9, 0.1, 0.48, 0.1]], dtype=np.float32)
    assert decided_mask_iou(a, b, band=0.05) == pytest.approx(1 / 2)  # {0} / {0, 1}
    assert mask_iou(a > 0.5, b > 0.5) == pytest.approx(1 / 3)  # thresholded: pixel 2 counts against them
    # one side undecided is enough to leave a pixel out
    assert decided_mask_iou(np.array([[0.9, 0.53]]), np.array([[0.9, 0.2]]), band=0.05) == 1.0
    # probabilities that sit at the threshold: thresholded they disagree everywhere, decided nothing disagrees
    soft_a, soft_b = np.full((4, 4), 0.51, np.float32), np.full((4, 4), 0.49, np.float32)
    assert mask_iou(soft_a > 0.5, soft_b > 0.5) == 0.0
    assert decided_mask_iou(soft_a, soft_b) == 1.0
    # bool masks are decided everywhere: the plain IoU
    assert decided_mask_iou(a > 0.5, b > 0.5) == pytest.approx(1 / 3)


def _dets(boxes, scores, labels, masks):
    return Detections(
        boxes=np.array(boxes, np.float32),
        scores=np.array(scores, np.float32),
        labels=np.array(labels, np.int64),
        masks=np.array(masks),
        class_names=["__background__", "circle", "star"],
        image_size=(8, 8),
    )


def test_failure_names_the_worst_detection():
    full = np.zeros((8, 8), np.float32)
    full[:, :4] = 0.95
    half = np.zeros((8, 8), np.float32)
    half[:4, :4] = 0.95
    boxes = [[0, 0, 4, 8], [4, 0, 8, 8]]
    reference = _dets(boxes, [0.9, 0.8], [1, 2], [full, full[:, ::-1]])
    # detection 1 ('star') keeps its box and score, but its mask loses half of its pixels
    candidate = _dets(boxes, [0.9, 0.8], [1, 2], [full, half[:, ::-1]])
    result = compare_detections(candidate, reference, ParityThresholds())
    assert not result.ok
    assert result.worst_mask_iou == pytest.approx(0.5)
    assert result.worst_detection.startswith("'star' #1 score 0.800 box [4.0, 0.0, 8.0, 8.0]")
    assert "mask IoU 0.5000" in result.worst_detection and "worst: 'star' #1" in result.summary()
    # an unmatched reference detection is the worst there is
    missing = compare_detections(_dets(boxes[:1], [0.9], [1], [full]), reference, ParityThresholds())
    assert missing.worst_detection == "reference 'star' #1 score 0.800 box [4.0, 0.0, 8.0, 8.0] has no match"
    assert compare_detections(reference, reference).worst_detection is None


# ------------------------------------------------------------------------------------------ the command


def test_check_fp16_against_fp32_graph(shipped_conversion):
    """Two graphs, no checkpoint, no torch needed. The detection counts in the report are those the fp32 graph
    gives on the same images through the Predictor."""
    from deploy_sdk import Predictor
    from deploy_sdk.synthetic_shapes import HELD_OUT_SEED, generate_sample

    run = shipped_conversion
    # fp16 moves a mask's edge by a pixel at most; on a 17-pixel object that alone is a mask IoU of 0.95
    rc, out, err = _cli(
        [
            "check",
            str(run.file(".fp16.onnx")),
            "--against",
            str(run.file(".onnx")),
            "--num-synthetic",
            "2",
            "--mask-iou",
            "0.9",
        ]
    )
    assert rc == 0, out + err
    assert "comparing model.fp16.onnx (ONNX Runtime, fp16) with model.onnx (ONNX Runtime, fp32)" in out
    counts = [int(m) for m in re.findall(r"\] synthetic \d: \d+/(\d+) matched", out)]
    with Predictor(str(run.file(".onnx")), batch_size=1, score_threshold=0.3, mask_format="none") as predictor:
        expected = [len(d) for d in predictor.predict([generate_sample(HELD_OUT_SEED, i).image for i in range(2)])]
    assert counts == expected and sum(expected) > 0


def test_check_failure_names_a_real_detection(shipped_conversion):
    """INT8 against fp32 with the strict fp32 thresholds fails; the detection it names (score and box) is one the
    fp32 graph really returns on that image."""
    from deploy_sdk import Predictor
    from deploy_sdk.synthetic_shapes import HELD_OUT_SEED, generate_sample

    run = shipped_conversion
    rc, out, _ = _cli(
        [
            "check",
            str(run.file(".int8.onnx")),
            "--against",
            str(run.file(".onnx")),
            "--num-synthetic",
            "3",
            "--score-diff",
            "0.0001",
        ]
    )
    assert rc == 1
    failed = re.search(
        r"\[FAIL\] synthetic (\d):.*worst: (?:reference )?'(\w+)' #\d+ score ([\d.]+) box \[([^\]]+)\]", out
    )
    assert failed, out
    image = generate_sample(HELD_OUT_SEED, int(failed.group(1))).image
    score, box = float(failed.group(3)), [float(v) for v in failed.group(4).split(",")]
    with Predictor(str(run.file(".onnx")), batch_size=1, mask_format="none") as predictor:
        det = predictor.predict([image])[0]
    names = [det.class_names[int(label)] for label in det.labels]
    hits = [
        i
        for i in range(len(det))
        if PRINTED_THREE_DECIMALS.allclose(det.scores[i], score)
        and PRINTED_ONE_DECIMAL.allclose(det.boxes[i], box)
        and names[i] == failed.group(2)
    ]
    assert hits, (failed.group(0), det.scores[:5], det.boxes[:5])


def test_check_graph_against_checkpoint_on_decoded_images_warns_nothing(tmp_path, shipped_onnx, shipped_model_file):
    from deploy_sdk.synthetic_shapes import write_dataset

    write_dataset(tmp_path / "ds", num=1, seed=77, min_size=200, max_size=260)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _cli(
            [
                "check",
                str(shipped_onnx),
                "--against",
                str(shipped_model_file),
                "--images",
                str(tmp_path / "ds" / "images"),
            ]
        )
    assert rc == 0, out + err
    assert "(PyTorch, torchvision's model)" in out and "1/1 images agree" in out
    assert not [str(w.message) for w in caught if "writable" in str(w.message)]


def test_check_argument_errors(tmp_path, shipped_onnx, shipped_model_file):
    from toy_deployment_graph import write_toy_graph

    rc, _, err = _cli(["check", str(shipped_onnx)])
    assert rc == 1 and "nothing to compare with: give --against MODEL" in err
    rc, _, err = _cli(
        ["check", str(shipped_onnx), "--against", str(shipped_onnx), "--checkpoint", str(shipped_model_file)]
    )
    assert rc == 1 and "give one reference" in err
    toy = write_toy_graph(tmp_path / "toy.onnx")
    rc, _, err = _cli(["check", str(toy), "--against", str(shipped_onnx), "--num-synthetic", "1"])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "compare models made from the same checkpoint" in err
    rc, _, err = _cli(["check", str(tmp_path / "none.onnx"), "--against", str(shipped_onnx)])
    assert rc == 1 and "model file not found" in err


def test_quantize_logs_no_preprocessing_advice(tmp_path, shipped_onnx, caplog):
    from deploy_sdk.synthetic_shapes import write_dataset

    write_dataset(tmp_path / "calib", num=1, seed=5, min_size=200, max_size=220)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _cli(
            [
                "quantize",
                str(shipped_onnx),
                "--calib",
                str(tmp_path / "calib" / "images"),
                "-o",
                str(tmp_path / "m.int8.onnx"),
            ]
        )
    assert rc == 0, err
    assert not [r.getMessage() for r in caplog.records if "pre-processing" in r.getMessage()]
    assert "pre-processing" not in err
    assert not [str(w.message) for w in caught if "pre-process" in str(w.message)]
