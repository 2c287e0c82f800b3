"""The detectron2 importer against detectron2's own inference (committed fixtures; live where detectron2 imports).

Fixtures (tests/fixtures/detectron2, made by tests/reference/detectron2_reference.py with detectron2 itself): two
small random-weight Mask R-CNN R50-FPN checkpoints in detectron2's formats (model-zoo ``.pkl``; ``.pth`` + its
config.yaml), three images of different sizes, and detectron2's detections on them, per image and as one batch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from compare import FP32_UNIT_RANGE, assert_close
from framework_fixtures import D2_FIXTURES, D2_VARIANTS, FRAMEWORK_THRESHOLDS, d2_images, d2_load, d2_reference
from repo_paths import TESTS_DIR

from deploy_sdk.conversion.checkpoints.load import detect_source
from deploy_sdk.conversion.parity import compare_detections
from deploy_sdk.errors import CheckpointError, UnsupportedModelError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from deploy_sdk.conversion.export import export_onnx

    out = {}
    for variant in D2_VARIANTS:
        path = tmp_path_factory.mktemp("d2") / f"{variant}.onnx"
        export_onnx(d2_load(variant), path, log=lambda line: None)
        out[variant] = path
    return out


def _check(dets, outputs, batched: bool):
    problems = []
    checked = 0
    for i, det in enumerate(dets):
        ref = d2_reference(outputs, f"batch3_{i}" if batched else str(i), det.class_names)
        result = compare_detections(det, ref, FRAMEWORK_THRESHOLDS)
        checked += result.num_reference
        if result.problems:
            problems.append(f"image {i}: {result}")
    assert not problems, "\n".join(problems)
    assert checked >= 10, f"only {checked} reference detections >= 0.3: the fixture no longer tests anything"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", list(D2_VARIANTS))
def test_onnx_matches_detectron2(exported, variant, batch):
    from deploy_sdk import Predictor

    outputs = np.load(D2_FIXTURES / f"{variant}.outputs.npz")
    with Predictor(exported[variant], batch_size=batch) as predictor:
        dets = predictor.predict(d2_images())
        meta = predictor.metadata
    assert meta.extra["source"] == "detectron2"
    assert meta.extra["resize"] == "pil_bilinear" and meta.extra["mask_paste"] == "grid_sample"
    _check(dets, outputs, batched=batch > 1)


@pytest.mark.parametrize("variant", list(D2_VARIANTS))
def test_checkpoint_predictor_of_eval_and_convert_matches_detectron2(variant):
    """What `eval` and `convert` run for the checkpoint itself: detectron2's own per-image detections."""
    from deploy_sdk.conversion.reference import checkpoint_predictor

    predictor = checkpoint_predictor(d2_load(variant))
    _check(predictor.predict(d2_images()), np.load(D2_FIXTURES / f"{variant}.outputs.npz"), batched=False)


def test_metadata_records_detectron2_semantics(exported):
    import onnx

    from deploy_sdk.model_metadata import ModelMetadata

    props = {p.key: p.value for p in onnx.load(str(exported["zoo_pkl"]), load_external_data=False).metadata_props}
    meta = ModelMetadata.from_props(props)
    # BGR mean [103.53, 116.28, 123.675] / std 1 in 0-255 units == these RGB 0-1 values in the graph's contract.
    assert meta.image_mean == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255])
    assert meta.image_std == pytest.approx([1 / 255] * 3)
    fw = meta.extra["framework"]
    assert fw["input_channel_order"] == "bgr" and fw["pixel_mean"] == [103.53, 116.28, 123.675]
    assert fw["anchor_strides"] == [4, 8, 16, 32, 64] and fw["anchor_offset"] == 0.0
    assert fw["box_min_size"] is None and fw["label_offset"] == 1
    assert fw["config"]["MODEL.RESNETS.STRIDE_IN_1X1"] is True
    assert meta.extra["box_roi_align"]["aligned"] is True and meta.extra["box_roi_align"]["sampling_ratio"] == 0
    custom = d2_load("custom_pth")
    assert custom.semantics.input_channel_order == "rgb"
    assert custom.settings.min_size == 480 and custom.settings.max_size == 640
    assert custom.settings.score_threshold == pytest.approx(0.1)


def test_stride_in_1x1_placement():
    zoo, custom = d2_load("zoo_pkl").model, d2_load("custom_pth").model
    block = zoo.backbone.body.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)  # MSRA: STRIDE_IN_1X1
    block = custom.backbone.body.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_cell_anchors_unrounded_hand_worked():
    from deploy_sdk.conversion.checkpoints.detectron2 import cell_anchors

    cells = cell_anchors([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], 5)  # ratios broadcast
    # size 32, ratio 0.5: w = sqrt(1024 / 0.5) = 45.2548..., h = 22.6274...; torchvision would round to 45 / 23.
    assert cells[0][0] == pytest.approx([-22.627417, -11.3137085, 22.627417, 11.3137085])
    assert cells[0][1] == pytest.approx([-16, -16, 16, 16])
    assert cells[4][2] == pytest.approx([-181.019336, -362.038672, 181.019336, 362.038672])


def test_shortest_edge_size_hand_worked():
    from deploy_sdk.resize_modes import shortest_edge_size

    assert shortest_edge_size(240, 320, 800, 1333) == (800, 1067)  # 1066.67 rounds half up
    assert shortest_edge_size(300, 200, 800, 1333) == (1200, 800)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)  # long side capped: 133.3 -> 133


def test_grid_sample_paste_matches_torch_grid_sample():
    from deploy_sdk.mask_paste import paste_masks

    g = torch.Generator().manual_seed(0)
    masks = torch.rand((6, 28, 28), generator=g)
    boxes = torch.tensor(
        [
            [10.3, 5.7, 60.2, 40.9],
            [0, 0, 99.5, 79.5],
            [-5, 20, 30, 200],
            [50, 50, 50.4, 51],
            [3, 4, 9, 12],
            [70, 2, 99, 30],
        ]
    )
    h, w = 80, 100
    # Independent reference: detectron2's formula written out with torch's grid_sample over the whole image.
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    gx = ((xs[None] - x0) / (x1 - x0) * 2 - 1)[:, None, :].expand(6, h, w)
    gy = ((ys[None] - y0) / (y1 - y0) * 2 - 1)[:, :, None].expand(6, h, w)
    expected = torch.nn.functional.grid_sample(masks[:, None], torch.stack([gx, gy], 3), align_corners=False)[:, 0]
    # detectron2 (CPU) samples only floor(x0) - 1 .. ceil(x1) + 1 of each box and leaves the rest 0; outside that,
    # grid_sample's value is a weight < 0.5 on a probability, so it never passes the threshold anyway.
    region = np.zeros((6, h, w), bool)
    for i, (bx0, by0, bx1, by1) in enumerate(boxes.tolist()):
        region[
            i,
            max(int(np.floor(by0)) - 1, 0) : int(np.ceil(by1)) + 1,
            max(int(np.floor(bx0)) - 1, 0) : int(np.ceil(bx1)) + 1,
        ] = True
    assert (expected.numpy()[~region] < 0.5).all()
    got = paste_masks(masks.numpy(), boxes.numpy(), (h, w), threshold=None, mode="grid_sample")
    assert_close(got, np.where(region, expected.numpy(), 0.0), tol=FP32_UNIT_RANGE, what="pasted probabilities")
    binary = paste_masks(masks.numpy(), boxes.numpy(), (h, w), mode="grid_sample")
    assert (binary == (expected.numpy() >= 0.5)).mean() > 0.9999


def test_auto_detection_of_the_source(tmp_path):
    from deploy_sdk.conversion.architectures import ArchConfig, build_maskrcnn
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    lm = load_checkpoint(D2_FIXTURES / "zoo_pkl.pkl")
    assert lm.semantics.source == "detectron2" and lm.num_classes == 6
    assert detect_source(list(torch.load(D2_FIXTURES / "custom_pth.pth", weights_only=True)["model"])) == "detectron2"
    tv_keys = list(build_maskrcnn(ArchConfig("resnet18_fpn", 3)).state_dict())
    assert detect_source(tv_keys) == "torchvision"
    with pytest.raises(CheckpointError, match="--from 'caffe'"):
        load_checkpoint(D2_FIXTURES / "zoo_pkl.pkl", source="caffe")
    with pytest.raises((CheckpointError, UnsupportedModelError)):  # detectron2 keys are no torchvision model
        load_checkpoint(D2_FIXTURES / "custom_pth.pth", source="torchvision")


def _state():
    return torch.load(D2_FIXTURES / "custom_pth.pth", weights_only=True)["model"]


@pytest.mark.parametrize(
    "extra_key, message",
    [
        ("roi_heads.box_head.1.fc1.weight", "Cascade"),
        ("roi_heads.mask_point_head.predictor.weight", "PointRend"),
        ("backbone.bottom_up.res3.0.conv2_offset.weight", "deformable"),
        ("backbone.fpn_lateral2.norm.weight", "normalization layers in the FPN"),
        ("roi_heads.mask_head.mask_fcn1.norm.weight", "GN heads"),
    ],
)
def test_refused_variants_from_keys(tmp_path, extra_key, message):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    state = _state()
    state[extra_key] = torch.zeros(4)
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UnsupportedModelError, match=message):
        load_checkpoint(path, config=D2_FIXTURES / "custom_pth.config.yaml")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("MODEL:\n  ROI_HEADS:\n    NAME: CascadeROIHeads\n", "Cascade"),
        ("MODEL:\n  ROI_MASK_HEAD:\n    NAME: PointRendMaskHead\n", "PointRend"),
        ("MODEL:\n  RESNETS:\n    DEFORM_ON_PER_STAGE: [false, true, true, true]\n", "deformable"),
        ("MODEL:\n  RESNETS:\n    NORM: GN\n", "GroupNorm"),
        ("MODEL:\n  ROI_BOX_HEAD:\n    NORM: GN\n", "GN heads"),
        ("MODEL:\n  ROI_BOX_HEAD:\n    NUM_CONV: 4\n", "4conv1fc"),
    ],
)
def test_refused_variants_from_config(tmp_path, yaml_text, message):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    config = tmp_path / "config.yaml"
    config.write_text((D2_FIXTURES / "custom_pth.config.yaml").read_text() + "\n")
    # A later file in the _BASE_ chain overrides: the refused setting on top of the fixture's own config.
    override = tmp_path / "override.yaml"
    override.write_text(f"_BASE_: config.yaml\n{yaml_text}")
    with pytest.raises(UnsupportedModelError, match=message):
        load_checkpoint(D2_FIXTURES / "custom_pth.pth", config=override)


def test_lazy_config_is_not_executed(tmp_path):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    lazy = tmp_path / "mask_rcnn.py"
    lazy.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(UnsupportedModelError, match="LazyConfig"):
        load_checkpoint(D2_FIXTURES / "custom_pth.pth", config=lazy)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path):
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.checkpoints.numpy_pickle import read_numpy_pickle

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "model_final.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": np.zeros(3, np.float32)}, "x": _Evil(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="refused global"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="not a plain pickle of numpy arrays"):
        read_numpy_pickle(evil)
    assert not marker.exists()
    # os.system by name (a GLOBAL opcode), the classic exploit
    raw = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    (tmp_path / "os.pkl").write_bytes(raw)
    with pytest.raises(CheckpointError, match="refused global os.system"):
        read_numpy_pickle(tmp_path / "os.pkl")
    # and plain numpy pickles of either numpy module layout still load
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"model": {"w": np.arange(4, dtype=np.float32)}}, protocol=4))
    assert read_numpy_pickle(ok)["model"]["w"].tolist() == [0, 1, 2, 3]


def test_live_against_detectron2(tmp_path):
    """Build, save and run a fresh model with detectron2 itself, then export and compare (skips without it)."""
    try:
        import detectron2  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        pytest.skip(f"detectron2 is not importable here ({type(exc).__name__}: {exc}); the committed fixtures cover it")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("d2ref", TESTS_DIR / "reference" / "detectron2_reference.py")
    ref = importlib.util.module_from_spec(spec)
    sys.modules["d2ref"] = ref
    spec.loader.exec_module(ref)
    images = ref.make_images(tmp_path, sizes=[(200, 260), (230, 180)], seed=5)
    ref.make_variant("zoo_pkl", tmp_path, images, seed=7)
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.export import export_onnx

    onnx_path = tmp_path / "live.onnx"
    export_onnx(load_checkpoint(tmp_path / "zoo_pkl.pkl"), onnx_path, log=lambda line: None)
    outputs = np.load(tmp_path / "zoo_pkl.outputs.npz")
    # Our masks as probabilities (GraphSource: the Predictor's results, masks pasted without the threshold), so
    # the mask IoU leaves out the pixels our side has at 0.5 +- 0.05 (conversion/parity.py): detectron2's masks
    # are thresholded, and a random model's tiny masks can hold one such pixel, 1/18 of an 18-pixel mask.
    from deploy_sdk.conversion.detection_sources import open_source

    source = open_source(onnx_path)
    dets = [source.detections([image])[0] for image in images]
    source.close()
    for i, det in enumerate(dets):
        result = compare_detections(det, d2_reference(outputs, str(i), det.class_names), FRAMEWORK_THRESHOLDS)
        assert not result.problems, f"image {i}: {result}"


@pytest.mark.parametrize("variant", list(D2_VARIANTS))
def test_check_against_the_checkpoint_runs_detectron2_semantics(variant, exported, capsys):
    """`check GRAPH --against CHECKPOINT` of a detectron2 checkpoint runs the deployment module in eager PyTorch
    (the framework's semantics, which the fixture tests above hold to detectron2 itself), not torchvision's eval
    path on these weights, which decodes boxes and classes otherwise (it agreed on 0 of 4 images)."""
    from deploy_sdk.cli import main

    ckpt, config = D2_VARIANTS[variant]
    argv = ["check", str(exported[variant]), "--against", str(D2_FIXTURES / ckpt), "--num-synthetic", "3"]
    if config:
        argv += ["--config", str(D2_FIXTURES / config)]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "the deployment module in eager mode, detectron2 semantics" in out
    assert "3/3 images agree" in out
