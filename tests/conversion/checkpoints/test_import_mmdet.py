"""The MMDetection importer against MMDetection's own inference (committed fixtures; live where mmdet imports).

Fixtures (tests/fixtures/mmdet, made by tests/reference/mmdet_reference.py with MMDetection 3.3.0, mmengine and
mmcv themselves): a small random-weight Mask R-CNN R50-FPN saved by mmengine as its Runner saves checkpoints
(``meta`` with the config text and ``dataset_meta.classes``, ``state_dict``, ``message_hub`` with mmengine
``HistoryBuffer`` logs), three images of different sizes (the third one resized by MMDetection's test ``Resize``:
OpenCV on uint8, rounded sizes), and MMDetection's detections on them: per image (``inference_detector``) and as one
batch of three (``test_step`` on the batch, padded to its largest image).
"""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from framework_fixtures import (
    FRAMEWORK_THRESHOLDS,
    MMDET_CHECKPOINT,
    MMDET_CLASSES,
    MMDET_FIXTURES,
    mmdet_image_paths,
    mmdet_images,
    mmdet_load,
    mmdet_outputs_of,
    mmdet_reference,
)
from repo_paths import TESTS_DIR

from deploy_sdk.conversion.checkpoints.load import detect_source
from deploy_sdk.conversion.parity import compare_detections
from deploy_sdk.errors import CheckpointError, UnsupportedModelError


@functools.lru_cache(maxsize=1)
def _raw_checkpoint():
    """The whole fixture checkpoint as the SDK reads it (the message hub's objects as inert stand-ins); shared:
    callers copy what they change."""
    from deploy_sdk.conversion.checkpoints.files import read_file

    return read_file(MMDET_CHECKPOINT)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The fixture exported by the CLI with the source auto-detected (what a user runs), and what it printed."""
    from deploy_sdk.cli import main

    path = tmp_path_factory.mktemp("mmdet") / "mmdet.onnx"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(MMDET_CHECKPOINT), "-o", str(path)]) == 0
    return path, out.getvalue()


def _check(dets, outputs, batched: bool, figures=None):
    problems = []
    checked = 0
    for i, det in enumerate(dets):
        prefix = f"batch3_{{}}_{i}" if batched else f"{{}}_{i}"
        ref = mmdet_reference(mmdet_outputs_of(outputs, prefix), det.class_names)
        result = compare_detections(det, ref, FRAMEWORK_THRESHOLDS)
        checked += result.num_reference
        if figures is not None:
            figures.append(result.summary())
        if result.problems:
            problems.append(f"image {i}: {result.summary()}")
    assert not problems, "\n".join(problems)
    assert checked >= 10, f"only {checked} reference detections >= 0.3: the fixture no longer tests anything"


def test_cli_export_detects_mmdet(exported):
    _, printed = exported
    assert "source: mmdet (detected from the checkpoint's keys)" in printed
    assert detect_source(list(_raw_checkpoint()["state_dict"])) == "mmdet"


def test_cli_export_with_from_mmdet(tmp_path, monkeypatch):
    """--from mmdet reaches the importer and is printed; the export step itself is the fixture's (stubbed here)."""
    import deploy_sdk.conversion.export as export_module
    from deploy_sdk.cli import main

    handed = []
    monkeypatch.setattr(export_module, "export_onnx", lambda loaded, path, **kw: handed.append(loaded))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(MMDET_CHECKPOINT), "--from", "mmdet", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "source: mmdet (given by --from)" in out.getvalue()
    assert handed[0].semantics.source == "mmdet" and handed[0].arch == "mmdet_mask-rcnn_r50_fpn"
    assert handed[0].class_names == ["__background__", *MMDET_CLASSES]
    # mmdet keys are no detectron2 or torchvision model: forcing another source fails clearly, never a wrong graph
    for other in ("detectron2", "torchvision"):
        with pytest.raises((CheckpointError, UnsupportedModelError)):
            mmdet_load(source=other)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_mmdetection(exported, batch):
    from deploy_sdk import Predictor

    outputs = np.load(MMDET_FIXTURES / "reference.npz")
    with Predictor(exported[0], batch_size=batch) as predictor:
        dets = predictor.predict(mmdet_images())
        meta = predictor.metadata
    assert meta.extra["source"] == "mmdet"
    assert meta.extra["mask_paste"] == "grid_sample" and meta.extra["resize"] == "mmcv_cv2"
    assert [d.image_size for d in dets] == [tuple(int(v) for v in outputs[f"mask_shape_{i}"][1:]) for i in range(3)]
    figures = []
    _check(dets, outputs, batched=batch > 1, figures=figures)
    print(f"batch {batch}: " + " | ".join(figures))


def test_metadata_records_mmdetection_semantics(exported):
    import onnx

    from deploy_sdk.model_metadata import ModelMetadata

    props = {p.key: p.value for p in onnx.load(str(exported[0]), load_external_data=False).metadata_props}
    meta = ModelMetadata.from_props(props)
    # class names from meta.dataset_meta.classes, background first
    assert meta.class_names == ["__background__", *MMDET_CLASSES]
    # DetDataPreprocessor: RGB, mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375] in 0-255 units
    assert meta.image_mean == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255])
    assert meta.image_std == pytest.approx([58.395 / 255, 57.12 / 255, 57.375 / 255])
    # the fixture's test Resize scale (320, 256): short side 256, long side at most 320
    assert (meta.min_size, meta.max_size) == (256, 320)
    assert meta.score_threshold == pytest.approx(0.05) and meta.nms_threshold == pytest.approx(0.5)
    fw = meta.extra["framework"]
    assert fw["source"] == "mmdet" and fw["input_channel_order"] == "rgb" and fw["label_offset"] == 1
    assert fw["anchor_strides"] == [4, 8, 16, 32, 64] and fw["box_min_size"] is None
    assert fw["config"]["config_in_checkpoint"] is True and fw["config"]["style"] == "pytorch"
    assert fw["config"]["bbox_target_stds"] == [0.1, 0.1, 0.2, 0.2]
    for key in ("box_roi_align", "mask_roi_align"):
        assert meta.extra[key]["aligned"] is True and meta.extra[key]["sampling_ratio"] == 0


def test_label_mapping_background_last_to_first():
    """MMDetection's classifier has K + 1 rows with the background LAST and K x 4 regression rows, K mask channels;
    the graph's are background-first: SDK label c + 1 is MMDetection's label c, for every class."""
    state = _raw_checkpoint()["state_dict"]
    model = mmdet_load().model
    predictor, masks = model.roi_heads.box_predictor, model.roi_heads.mask_predictor
    k = len(MMDET_CLASSES)
    cls_w, cls_b = state["roi_head.bbox_head.fc_cls.weight"], state["roi_head.bbox_head.fc_cls.bias"]
    torch.testing.assert_close(predictor.cls_score.weight[0], cls_w[k])  # background: MMDetection's last row
    torch.testing.assert_close(predictor.cls_score.bias[0], cls_b[k])
    reg = state["roi_head.bbox_head.fc_reg.weight"]
    logits = state["roi_head.mask_head.conv_logits.weight"]
    for c in range(k):
        torch.testing.assert_close(predictor.cls_score.weight[c + 1], cls_w[c])
        torch.testing.assert_close(predictor.bbox_pred.weight[4 * (c + 1) : 4 * (c + 2)], reg[4 * c : 4 * (c + 1)])
        torch.testing.assert_close(masks.mask_fcn_logits.weight[c + 1], logits[c])
    assert not predictor.bbox_pred.weight[:4].any() and not masks.mask_fcn_logits.weight[0].any()
    # hand-worked: the classifier's softmax over one feature vector, both layouts: SDK prob[c + 1] == mmdet prob[c]
    x = torch.randn(1, cls_w.shape[1], generator=torch.Generator().manual_seed(0))
    mm_prob = torch.softmax(x @ cls_w.T + cls_b, -1)[0]
    sdk_prob = torch.softmax(predictor.cls_score(x), -1)[0]
    torch.testing.assert_close(sdk_prob[1:], mm_prob[:k])
    torch.testing.assert_close(sdk_prob[0], mm_prob[k])


def test_cell_anchors_hand_worked():
    from deploy_sdk.conversion.checkpoints.mmdet import DEFAULTS, cell_anchors

    cells = cell_anchors(DEFAULTS["rpn_head"]["anchor_generator"])
    # stride 4, scale 8, ratio 0.5: h_ratio = sqrt(0.5), w = 4 * 8 / sqrt(0.5) = 45.2548, h = 22.6274; centre 0
    assert cells[0][0] == pytest.approx([-22.627417, -11.3137085, 22.627417, 11.3137085])
    assert cells[0][1] == pytest.approx([-16, -16, 16, 16])
    assert cells[4][2] == pytest.approx([-181.019336, -362.038672, 181.019336, 362.038672])


def test_read_config_is_not_executed(tmp_path):
    from deploy_sdk.conversion.checkpoints.mmdet import read_config

    marker = tmp_path / "ran"
    text = f"model = dict(type='MaskRCNN', backbone=dict(depth=50))\nx = open({str(marker)!r}, 'w').write('x')\n"
    cfg = read_config(text)
    assert cfg == {"model": {"type": "MaskRCNN", "backbone": {"depth": 50}}}  # the call is skipped, not run
    assert not marker.exists()
    assert read_config("def (") == {} and read_config(None) == {}


# ---------------------------------------------------------------------------------------------------------------
# training state: mmengine's message hub read without running code; malicious pickles refused


def test_message_hub_history_buffers_are_inert():
    from deploy_sdk.conversion.checkpoints.training_state import InertStandIn

    # torch's own safe loader refuses the file: it really holds objects beyond tensors (mmengine, numpy, getattr)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(MMDET_CHECKPOINT, map_location="cpu", weights_only=True)
    raw = _raw_checkpoint()
    logs = raw["message_hub"]["log_scalars"]
    assert set(logs) == {"train/loss", "train/lr"}
    assert all(isinstance(v, InertStandIn) for v in logs.values())
    assert raw["message_hub"]["runtime_info"]["iter"] == 3  # plain data next to them is read as is
    assert list(raw["meta"]["dataset_meta"]["classes"]) == MMDET_CLASSES


def _zip_pickle(tmp_path: Path, payload: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is ``payload`` (a hand-written pickle)."""
    path = tmp_path / "crafted.pth"
    torch.save({"x": 1}, path)
    import zipfile

    with zipfile.ZipFile(path) as src:
        entries = {n: src.read(n) for n in src.namelist()}
    out = tmp_path / "evil.pth"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for name, data in entries.items():
            dst.writestr(name, payload if name.endswith("/data.pkl") else data)
    return out


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_malicious_pickles_are_refused(tmp_path):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    marker = tmp_path / "pwned.txt"
    state = _raw_checkpoint()["state_dict"]
    # An MMDetection-looking checkpoint that also carries code to run.
    evil = tmp_path / "epoch_12.pth"
    torch.save({"meta": {"dataset_meta": {"classes": MMDET_CLASSES}}, "state_dict": state, "x": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(evil)
    assert not marker.exists()
    # os.system next to mmengine's names: os is never mapped to a stand-in
    payload = b"\x80\x02cmmengine.logging.history_buffer\nHistoryBuffer\ncos\nsystem\nX\x04\x00\x00\x00true\x85R\x86."
    with pytest.raises(CheckpointError):
        load_checkpoint(_zip_pickle(tmp_path, payload))
    # getattr reached through mmengine's name gets an inert object, and calling that object is refused
    payload = (
        b"\x80\x02c__builtin__\ngetattr\ncmmengine.logging.history_buffer\nHistoryBuffer\n"
        b"X\x08\x00\x00\x00__init__\x86RX\x04\x00\x00\x00true\x85R."
    )
    with pytest.raises(CheckpointError):
        load_checkpoint(_zip_pickle(tmp_path, payload))
    # getattr alone (no framework's training state in the file) is not treated as training state
    alone = b"\x80\x02c__builtin__\ngetattr\nc__builtin__\nprint\nX\x03\x00\x00\x00foo\x86R."
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(_zip_pickle(tmp_path, alone))


def test_stand_in_where_weights_are_needed_is_refused(tmp_path):
    """numpy arrays are stand-ins too: one in the state dict (not a tensor) makes the file refused, not loaded."""
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    state = dict(_raw_checkpoint()["state_dict"])
    state["roi_head.bbox_head.fc_cls.bias"] = state["roi_head.bbox_head.fc_cls.bias"].numpy()
    path = tmp_path / "numpy_in_state.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------
# unsupported variants: UnsupportedModelError naming the feature, never a wrong graph


def _save_variant(tmp_path: Path, state=None, cfg_text=None) -> Path:
    raw = _raw_checkpoint()
    meta = {"dataset_meta": {"classes": MMDET_CLASSES}, "cfg": raw["meta"]["cfg"] if cfg_text is None else cfg_text}
    path = tmp_path / "variant.pth"
    torch.save({"meta": meta, "state_dict": raw["state_dict"] if state is None else state}, path)
    return path


@pytest.mark.parametrize(
    "extra_key, message",
    [
        ("roi_head.bbox_head.1.fc_cls.weight", "Cascade"),
        ("roi_head.semantic_head.conv_logits.weight", "Hybrid Task Cascade"),
        ("roi_head.point_head.fc_logits.weight", "PointRend"),
        ("roi_head.mask_iou_head.fc_mask_iou.weight", "Mask Scoring"),
        ("backbone.layer2.0.conv2.conv_offset.weight", "deformable"),
        ("roi_head.mask_head.convs.0.gn.weight", "GroupNorm"),
        ("neck.lateral_convs.0.bn.weight", "normalized"),
        ("backbone.stem.0.weight", "deep stem"),
        ("roi_head.bbox_head.shared_convs.0.conv.weight", "Shared2FCBBoxHead only"),
    ],
)
def test_refused_variants_from_keys(tmp_path, extra_key, message):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    state = dict(_raw_checkpoint()["state_dict"])
    state[extra_key] = torch.zeros(4)
    with pytest.raises(UnsupportedModelError, match=message):
        load_checkpoint(_save_variant(tmp_path, state=state))


def test_refused_faster_rcnn_and_one_stage(tmp_path):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    state = _raw_checkpoint()["state_dict"]
    no_mask = {k: v for k, v in state.items() if not k.startswith("roi_head.mask_head.")}
    with pytest.raises(UnsupportedModelError, match="no mask head"):
        load_checkpoint(_save_variant(tmp_path, state=no_mask))
    one_stage = {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}
    one_stage["bbox_head.retina_cls.weight"] = torch.zeros(4)
    with pytest.raises(UnsupportedModelError, match="one-stage"):
        load_checkpoint(_save_variant(tmp_path, state=one_stage), source="mmdet")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("type='StandardRoIHead'", "type='CascadeRoIHead'", "Cascade"),
        ("style='pytorch',", "style='pytorch', dcn=dict(type='DCNv2', deform_groups=1),", "deformable"),
        ("type='FCNMaskHead'", "type='FCNMaskHead', norm_cfg=dict(type='GN', num_groups=32)", "GN"),
        ("norm_cfg=dict(requires_grad=True, type='BN')", "norm_cfg=dict(requires_grad=True, type='GN')", "GN"),
        ("type='Shared2FCBBoxHead'", "type='Shared4Conv1FCBBoxHead'", "Shared4Conv1FCBBoxHead"),
        ("num_outs=5,", "num_outs=5, add_extra_convs='on_input',", "extra convs"),
        ("use_sigmoid=False", "use_sigmoid=True", "sigmoid"),
    ],
)
def test_refused_variants_from_config(tmp_path, old, new, message):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    text = _raw_checkpoint()["meta"]["cfg"]
    assert old in text, f"the fixture's config no longer contains {old!r}"
    with pytest.raises(UnsupportedModelError, match=message):
        load_checkpoint(_save_variant(tmp_path, cfg_text=text.replace(old, new, 1)))


def test_without_config_uses_mask_rcnn_defaults(tmp_path):
    from deploy_sdk.conversion.checkpoint import load_checkpoint

    lm = load_checkpoint(_save_variant(tmp_path, cfg_text=""))
    assert lm.semantics.config["config_in_checkpoint"] is False
    assert (lm.settings.min_size, lm.settings.max_size) == (800, 1333)  # mask-rcnn_r50_fpn's test Resize
    assert lm.class_names == ["__background__", *MMDET_CLASSES]
    with pytest.raises(CheckpointError, match="--config takes a detectron2"):
        load_checkpoint(MMDET_CHECKPOINT, config=MMDET_FIXTURES / "images" / mmdet_image_paths()[0].name)


# ---------------------------------------------------------------------------------------------------------------
# live: MMDetection itself


def _mmdet_reference_module():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mmdet_ref", TESTS_DIR / "reference" / "mmdet_reference.py")
    ref = importlib.util.module_from_spec(spec)
    sys.modules["mmdet_ref"] = ref
    spec.loader.exec_module(ref)
    return ref


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_live_against_mmdetection(tmp_path, style):
    """Build, save and run a fresh model with MMDetection itself, then export and compare (skips without it)."""
    try:
        import mmcv.ops  # noqa: F401  (mmdet's RoI heads need the full mmcv with its compiled ops)
        import mmdet  # noqa: F401
        from mmdet.apis import inference_detector  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (mmcv-lite, no compiled ops)
        first = str(exc).splitlines()[0] if str(exc) else ""
        pytest.skip(
            f"MMDetection is not importable here ({type(exc).__name__}: {first}); the committed fixtures cover it"
        )
    ref = _mmdet_reference_module()
    # one image at the test scale (short side 256), one that MMDetection resizes (OpenCV, rounded sizes)
    ref.main([str(tmp_path), "--seed", "11", "--sizes", "256x304,224x288", "--style", style])
    from PIL import Image

    from deploy_sdk import Predictor
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.export import export_onnx

    loaded = load_checkpoint(tmp_path / "mask_rcnn_r50_fpn_tiny.pth")
    assert loaded.semantics.input_channel_order == ("bgr" if style == "caffe" else "rgb")
    assert loaded.model.backbone.body.layer2[0].conv1.stride == ((2, 2) if style == "caffe" else (1, 1))
    onnx_path = tmp_path / "live.onnx"
    export_onnx(loaded, onnx_path, log=lambda line: None)
    outputs = np.load(tmp_path / "reference.npz")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "images").glob("image_*.png"))]
    checked = 0
    for batch, prefix in ((1, "{}_{}"), (len(images), f"batch{len(images)}_{{}}_{{}}")):
        with Predictor(onnx_path, batch_size=batch) as predictor:
            dets = predictor.predict(images)
        for i, det in enumerate(dets):
            keys = ("boxes", "scores", "labels", "masks", "mask_shape")
            reference = mmdet_reference({k: outputs[prefix.format(k, i)] for k in keys}, det.class_names)
            result = compare_detections(det, reference, FRAMEWORK_THRESHOLDS)
            checked += result.num_reference
            assert not result.problems, f"batch {batch}, image {i}: {result.summary()}"
    assert checked >= 4, f"only {checked} reference detections >= 0.3: the live model no longer tests anything"


def test_mmcv_rescale_size_hand_worked():
    from deploy_sdk.resize_modes import RESIZE_MODES, mmcv_rescale_size

    assert RESIZE_MODES["mmcv_cv2"][0] is mmcv_rescale_size
    # factor min(320 / 288, 256 / 224) = 1.1111: 224 -> int(248.89 + 0.5) = 249 (torchvision's floor: 248)
    assert mmcv_rescale_size(224, 288, 256, 320) == (249, 320)
    # factor min(1333 / 640, 800 / 480) = 1.6667: 640 -> int(1066.67 + 0.5) = 1067
    assert mmcv_rescale_size(480, 640, 800, 1333) == (800, 1067)
    assert mmcv_rescale_size(256, 320, 256, 320) == (256, 320)  # at the test scale: unchanged
    assert mmcv_rescale_size(100, 2000, 800, 1333) == (67, 1333)  # long side bound: 66.65 -> 67


def test_check_against_the_checkpoint_runs_mmdetection_semantics(exported, capsys):
    """`check GRAPH --against CHECKPOINT` of an MMDetection checkpoint runs the deployment module in eager PyTorch
    (MMDetection's semantics, held to MMDetection itself by the fixture tests above), not torchvision's eval path."""
    from deploy_sdk.cli import main

    rc = main(["check", str(exported[0]), "--against", str(MMDET_CHECKPOINT), "--num-synthetic", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "the deployment module in eager mode, mmdet semantics" in out
    assert "3/3 images agree" in out
