"""Checkpoint loading: every supported architecture, every file form, overrides, and the refusals.

Each original model is built with torchvision's own builders (not with deploy_sdk.conversion.architectures), saved,
loaded
back through `load_checkpoint`, and compared with the original: weights bit for bit, inference settings, and
the detections on one image (boxes/scores/masks to fp32 tolerance, labels exactly).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from compare import assert_close
from safetensors.torch import save_file
from torch import nn
from torchvision.models.detection import (
    MaskRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone

from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn
from deploy_sdk.conversion.checkpoint import (
    LoadedModel,
    detect_architecture,
    load_checkpoint,
    load_torchvision_model,
    read_inference_settings,
    shipped_model_path,
)
from deploy_sdk.errors import CheckpointError, UnsupportedModelError
from deploy_sdk.model_metadata import ModelMetadata

NUM_CLASSES = 5
# Small inputs keep the big backbones affordable on a 2-core machine; the loaded model gets the same sizes.
MIN_SIZE, MAX_SIZE = 96, 128
# Random weights keep every proposal alive: the box head on 1000 proposals and ~100 pasted masks per image cost
# seconds per forward on 2 cores, and fewer compare just as well. Set on both models after loading (they are
# settings, not weights, and the settings themselves are compared separately).
DETECTIONS, PROPOSALS = 10, 64


def _shrink(model: MaskRCNN) -> MaskRCNN:
    model.roi_heads.detections_per_img = DETECTIONS
    model.rpn._pre_nms_top_n["testing"] = 4 * PROPOSALS
    model.rpn._post_nms_top_n["testing"] = PROPOSALS
    return model.eval()


@torch.no_grad()
def _randomize_batch_norm(model: nn.Module, seed: int) -> None:
    """Fresh BN layers are identity maps (mean 0, var 1); random statistics make the comparison meaningful.

    The last BN of each bottleneck branch is damped (as trained ResNets have it small): otherwise 33 random
    residual branches in ResNet-101 blow the features up until the box head keeps no detection at all.
    """
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if re.search(r"layer\d\.\d+\.bn3\.weight$", name):
            tensor.mul_(0.2)


def _resnet_fpn(name: str) -> MaskRCNN:
    backbone = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE)


def _mobilenet() -> MaskRCNN:
    # torchvision pairs this backbone with its own anchors and RPN score threshold only in Faster R-CNN: take
    # them from that builder, so the test does not restate what deploy_sdk.conversion.architectures replicates.
    frcnn = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6)
    return MaskRCNN(
        backbone,
        num_classes=NUM_CLASSES,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_anchor_generator=frcnn.rpn.anchor_generator,
        rpn_score_thresh=frcnn.rpn.score_thresh,
    )


BUILDERS = {
    "resnet18_fpn": lambda: _resnet_fpn("resnet18"),
    "resnet34_fpn": lambda: _resnet_fpn("resnet34"),
    "resnet101_fpn": lambda: _resnet_fpn("resnet101"),
    "maskrcnn_resnet50_fpn": lambda: maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE
    ),
    "maskrcnn_resnet50_fpn_v2": lambda: maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE
    ),
    "mobilenet_v3_large_fpn": _mobilenet,
}
SLOW_ARCHS = {"resnet101_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    from deploy_sdk.synthetic_shapes import generate_sample

    s = generate_sample(seed=99, index=0, min_size=100, max_size=130)
    return torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0


def _assert_same_weights(loaded: nn.Module, original: nn.Module) -> None:
    a, b = loaded.state_dict(), original.state_dict()
    assert set(a) == set(b)
    for k in b:
        assert torch.equal(a[k].to(b[k].dtype), b[k]), f"weight {k} differs"


def _assert_same_detections(loaded: MaskRCNN, original: MaskRCNN, image: torch.Tensor) -> None:
    _shrink(loaded)
    _shrink(original)
    with torch.no_grad():
        out, ref = loaded([image])[0], original([image])[0]
    assert len(ref["boxes"]) > 0, "the comparison needs detections; random weights normally give some"
    assert torch.equal(out["labels"], ref["labels"])
    assert_close(out["boxes"], ref["boxes"], what="boxes")
    assert_close(out["scores"], ref["scores"], what="scores")
    assert_close(out["masks"], ref["masks"], what="masks")


def _save_all_forms(model: MaskRCNN, tmp_path):
    sd = model.state_dict()
    forms = {
        "state_dict": tmp_path / "model.pth",
        "nested": tmp_path / "nested.pt",
        "module": tmp_path / "module.pt",
        "safetensors": tmp_path / "model.safetensors",
    }
    torch.save(sd, forms["state_dict"])
    torch.save({"epoch": 12, "state_dict": sd, "optimizer": {}}, forms["nested"])
    torch.save(model, forms["module"])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(forms["safetensors"]))
    return forms


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in BUILDERS],
)
def test_every_arch_loads_from_every_form(arch, image, tmp_path):
    torch.manual_seed(0)
    original = BUILDERS[arch]().eval()
    _randomize_batch_norm(original, seed=1)
    forms = _save_all_forms(original, tmp_path)
    expected_settings = read_inference_settings(original)
    for form, path in forms.items():
        if form == "module":  # a whole pickled module is only unpickled when trusted (see test_checkpoint_security)
            with pytest.warns(UserWarning, match="runs any code the file contains"):
                lm = load_checkpoint(path, min_size=MIN_SIZE, max_size=MAX_SIZE, trust_checkpoint=True)
        else:
            lm = load_checkpoint(path, min_size=MIN_SIZE, max_size=MAX_SIZE)
        assert lm.arch == arch, form
        assert lm.num_classes == NUM_CLASSES
        assert lm.class_names == ["__background__"] + [f"class_{i}" for i in range(1, NUM_CLASSES)]
        assert not lm.model.training
        assert lm.settings == expected_settings, form
        _assert_same_weights(lm.model, original)
        # Detections on an image for the forms that rebuild the model from tensors (the pickled module is a copy
        # of the original object, and the nested dict the same tensors as the plain one: equal weights and
        # settings already pin those down).
        if form in ("state_dict", "safetensors"):
            _assert_same_detections(lm.model, original, image)


def test_mobilenet_pairing_matches_torchvision(tmp_path):
    """Anchors and RPN score threshold of the rebuilt MobileNetV3 model are torchvision's Faster R-CNN pairing."""
    frcnn = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    torch.save(_mobilenet().state_dict(), tmp_path / "m.pth")
    lm = load_checkpoint(tmp_path / "m.pth")
    assert lm.arch == "mobilenet_v3_large_fpn"
    assert lm.settings.anchor_sizes == [list(s) for s in frcnn.rpn.anchor_generator.sizes]
    assert lm.settings.aspect_ratios == [list(r) for r in frcnn.rpn.anchor_generator.aspect_ratios]
    assert lm.settings.rpn_score_threshold == frcnn.rpn.score_thresh == 0.05
    pool = frcnn.roi_heads.box_roi_pool
    assert lm.settings.box_roi_align.featmap_names == list(pool.featmap_names)
    assert lm.settings.box_roi_align.output_size == tuple(pool.output_size)
    assert lm.settings.box_roi_align.sampling_ratio == pool.sampling_ratio


def _shipped_like_model() -> MaskRCNN:
    cfg = ArchConfig(
        arch="resnet18_fpn",
        num_classes=7,
        fpn_channels=128,
        box_head_dim=512,
        mask_head_dims=(128, 128, 128, 128),
        mask_predictor_dim=128,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
    )
    torch.manual_seed(3)
    model = build_resnet_fpn_maskrcnn(cfg, norm_layer=nn.BatchNorm2d).eval()
    _randomize_batch_norm(model, seed=4)
    return model


def test_narrow_fp16_safetensors_with_metadata(image, tmp_path):
    """The shipped model's format: fp16 safetensors without num_batches_tracked, settings as JSON metadata."""
    original = _shipped_like_model()
    names = ["__background__", "circle", "rectangle", "triangle", "star", "hexagon", "cross"]
    fp16 = {
        k: v.half().contiguous() if v.is_floating_point() else v
        for k, v in original.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {"arch": "resnet18_fpn", "num_classes": 7, "class_names": names, "min_size": 200, "max_size": 300}
    path = tmp_path / "model.safetensors"
    save_file(fp16, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    lm = load_checkpoint(path)
    assert (lm.arch, lm.num_classes, lm.class_names) == ("resnet18_fpn", 7, names)
    assert (lm.settings.min_size, lm.settings.max_size) == (200, 300)
    assert (lm.config.fpn_channels, lm.config.box_head_dim) == (128, 512)
    assert lm.config.mask_head_dims == (128, 128, 128, 128) and lm.config.mask_predictor_dim == 128
    assert all(p.dtype == torch.float32 for p in lm.model.parameters()), "fp16 weights must load as float32"
    # The loaded weights are exactly the fp16 values, widened.
    for k, v in fp16.items():
        assert torch.equal(lm.model.state_dict()[k], v.float()), k
    # Against the original model with the same fp16-rounded weights.
    widened = original.state_dict()
    widened.update({k: v.float() for k, v in fp16.items()})
    original.load_state_dict(widened)
    lm.model.transform.min_size, lm.model.transform.max_size = (MIN_SIZE,), MAX_SIZE
    _assert_same_detections(lm.model, original, image)

    md = lm.metadata(precision="fp32")
    assert isinstance(md, ModelMetadata)
    assert md.class_names == names and md.min_size == 200 and md.max_size == 300
    assert md.checkpoint_sha256 == lm.sha256 and len(lm.sha256) == 64
    assert list(md.extra["mask_roi_align"]["output_size"]) == [14, 14]
    assert ModelMetadata.from_props(md.to_props()).class_names == names


def test_overrides_and_class_names(tmp_path):
    model = _shipped_like_model()
    path = tmp_path / "narrow.pth"
    torch.save(model.state_dict(), path)

    lm = load_checkpoint(path, arch="resnet18_fpn", num_classes=7, class_names=["a", "b", "c", "d", "e", "f"])
    assert lm.class_names == ["__background__", "a", "b", "c", "d", "e", "f"]
    assert (lm.settings.min_size, lm.settings.max_size) == (800, 1333)  # a bare state dict: torchvision defaults

    sidecar = tmp_path / "narrow.pth.classes.json"
    sidecar.write_text(json.dumps(["bg", "1", "2", "3", "4", "5", "6"]))
    assert load_checkpoint(path).class_names[:2] == ["bg", "1"]

    names_file = tmp_path / "names.json"
    names_file.write_text(json.dumps({"class_names": ["u", "v", "w", "x", "y", "z"]}))
    assert load_checkpoint(path, class_names=str(names_file)).class_names[-1] == "z"

    with pytest.raises(CheckpointError, match=r"lists 3 names but the model has 7 classes"):
        load_checkpoint(path, class_names=["a", "b", "c"])
    with pytest.raises(
        CheckpointError, match=r"checkpoint has 7 classes in roi_heads.box_predictor but num_classes=81 was given"
    ):
        load_checkpoint(path, num_classes=81)
    with pytest.raises(UnsupportedModelError, match="unknown architecture 'resnet152_fpn'"):
        load_checkpoint(path, arch="resnet152_fpn")
    # A wrong arch override is reported as a key mismatch naming the assumed architecture.
    with pytest.raises(CheckpointError, match=r"does not fit architecture resnet50_fpn \(given by arch=\)"):
        load_checkpoint(path, arch="resnet50_fpn")


def _key_error(tmp_path, edit) -> str:
    sd = _shipped_like_model().state_dict()
    edit(sd)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    return str(info.value)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    msg = _key_error(tmp_path, lambda sd: sd.pop("backbone.body.layer2.0.conv1.weight"))
    assert "1 missing: backbone.body.layer2.0.conv1.weight" in msg and "resnet18_fpn (detected" in msg

    msg = _key_error(tmp_path, lambda sd: sd.update({"roi_heads.extra_head.weight": torch.zeros(3)}))
    assert "1 unexpected: roi_heads.extra_head.weight" in msg

    def reshape(sd):
        sd["rpn.head.conv.0.0.weight"] = torch.zeros(128, 128, 1, 1)

    msg = _key_error(tmp_path, reshape)
    assert "1 mis-shaped: rpn.head.conv.0.0.weight (checkpoint [128, 128, 1, 1], model [128, 128, 3, 3])" in msg

    def many(sd):
        for k in [k for k in sd if k.startswith("backbone.body.layer3.") and "num_batches" not in k][:12]:
            sd.pop(k)

    msg = _key_error(tmp_path, many)
    assert "12 missing:" in msg and "and 7 more" in msg and "\n" not in msg


def test_legacy_and_dataparallel_key_names(tmp_path, image):
    """torchvision < 0.13 names (mask_fcn1, rpn.head.conv) and DataParallel's module. prefix load as today's."""
    original = _shipped_like_model()
    old = {}
    for k, v in original.state_dict().items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        old["module." + k] = v
    torch.save({"model": old}, tmp_path / "old.pth")
    lm = load_checkpoint(tmp_path / "old.pth", min_size=MIN_SIZE, max_size=MAX_SIZE)
    _assert_same_weights(lm.model, original)


def test_load_torchvision_model_and_shipped_path():
    model = _shipped_like_model().train()
    lm = load_torchvision_model(model, class_names=["a", "b", "c", "d", "e", "f"])
    assert isinstance(lm, LoadedModel) and lm.arch == "resnet18_fpn" and lm.sha256 == ""
    assert not lm.model.training and lm.class_names[0] == "__background__"
    assert lm.metadata().num_classes == 7
    try:
        path = shipped_model_path()
    except CheckpointError as exc:
        assert "models/train_shapes.py" in str(exc)
    else:
        assert path.name == "model.safetensors" and path.is_file()


def test_shipped_model_loads():
    """The shipped model (when present in the checkout) is detected as the narrow ResNet-18 FPN it is."""
    try:
        path = shipped_model_path()
    except CheckpointError:
        pytest.skip("models/shapes_r18/model.safetensors is not in this checkout yet (training writes it)")
    lm = load_checkpoint(path)
    assert lm.arch == "resnet18_fpn" and lm.num_classes == 7
    assert lm.class_names[1:] == ["circle", "rectangle", "triangle", "star", "hexagon", "cross"]
    assert (lm.settings.min_size, lm.settings.max_size) == (384, 512)
    assert lm.config.fpn_channels == 128


def test_detect_architecture_from_shapes_only():
    """Detection reads names and shapes; meta tensors (no data) are enough."""
    with torch.device("meta"):
        sd = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    cfg = detect_architecture(sd)
    assert (cfg.arch, cfg.num_classes, cfg.fpn_channels, cfg.box_head_dim) == ("maskrcnn_resnet50_fpn", 91, 256, 1024)
