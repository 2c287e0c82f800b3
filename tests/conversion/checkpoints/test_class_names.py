"""COCO class names built in: a checkpoint whose class count is COCO's (91 torchvision ids, or 80 + background as
detectron2/MMDetection number them) gets COCO's names when none are given, and `export` prints them. Reference:
the category list torchvision ships with its COCO Mask R-CNN weights (read from the weights' metadata; nothing
is downloaded)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the convert extra (torch) is not installed")

from tiny_maskrcnn import build_tiny_maskrcnn  # noqa: E402
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights  # noqa: E402

from deploy_sdk.conversion.checkpoint import load_torchvision_model  # noqa: E402
from deploy_sdk.conversion.checkpoints.class_names import (  # noqa: E402
    COCO_80_NAMES,
    coco_names,
    describe_class_names,
    resolve_class_names,
)

TORCHVISION_COCO = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def test_the_two_coco_layouts_match_torchvision():
    assert len(TORCHVISION_COCO) == 91
    assert coco_names(91) == TORCHVISION_COCO  # label = COCO category id, "N/A" for the ten unused ids
    # 80 contiguous classes: torchvision's list without the unused ids, in category-id order.
    assert coco_names(81) == ["__background__"] + [n for n in TORCHVISION_COCO[1:] if n != "N/A"]
    assert list(COCO_80_NAMES[:3]) == ["person", "bicycle", "car"] and COCO_80_NAMES[79] == "toothbrush"
    assert coco_names(7) is None and coco_names(80) is None


def test_resolution_order():
    # Given names win over the COCO default; a non-COCO count gets class_<id>.
    given = [f"thing{i}" for i in range(1, 91)]
    assert resolve_class_names(given, None, None, 91) == ["__background__"] + given
    assert resolve_class_names(None, None, ["a", "b"], 3) == ["__background__", "a", "b"]
    assert resolve_class_names(None, None, None, 81)[1:3] == ["person", "bicycle"]
    assert resolve_class_names(None, None, None, 4) == ["__background__", "class_1", "class_2", "class_3"]
    line = describe_class_names(coco_names(91))
    assert line.startswith("class names (COCO in torchvision's 91-id layout") and "(80 in all)" in line
    assert "N/A" not in line
    assert describe_class_names(coco_names(81)).startswith("class names (COCO, 80 classes numbered 1..80")
    assert describe_class_names(["__background__", "class_1"]) == "class names: class_1"


def test_a_91_class_model_gets_coco_names_and_export_prints_them(tmp_path, capsys, monkeypatch):
    model = build_tiny_maskrcnn(num_classes=91)
    assert load_torchvision_model(model).class_names == TORCHVISION_COCO
    assert load_torchvision_model(model, class_names=[f"c{i}" for i in range(1, 91)]).class_names[1] == "c1"
    ckpt = tmp_path / "coco91.pth"
    torch.save(model.state_dict(), ckpt)

    # The export's own work is not the point here: stop it right after the summary lines are printed.
    class Stop(Exception):
        pass

    def fake_export(loaded, *args, **kwargs):
        assert loaded.class_names == TORCHVISION_COCO
        raise Stop

    import deploy_sdk.conversion.export as export_module
    from deploy_sdk.cli import main

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    with pytest.raises(Stop):
        main(["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    out = capsys.readouterr().out
    assert "class names (COCO in torchvision's 91-id layout, label = category id): person, bicycle, car" in out
