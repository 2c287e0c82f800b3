"""The plugin library's RoIAlign as PyTorch custom ops (deploy_sdk.conversion.torch_ops), against torchvision's
``roi_align`` / ``MultiScaleRoIAlign``, the model-local ONNX function run by ONNX Runtime, and
``torch.library.opcheck``; and the deployment module pooling with them against the same module pooling with
torchvision. The device is a parameter: the CUDA cases skip where torch sees no GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from compare import FP32_WHOLE_MODEL, FP32_WHOLE_MODEL_BOXES, assert_close
from tiny_maskrcnn import build_tiny_maskrcnn, random_canvas
from torchvision.ops import MultiScaleRoIAlign

from deploy_sdk.conversion import torch_ops
from deploy_sdk.conversion.deploy_module import DeploymentModule
from deploy_sdk.conversion.roi_align_function import (
    ROI_ALIGN_DOMAIN,
    RoIAlignConfig,
    make_roi_align_function,
    multi_level_roi_align,
    use_roi_align_kernel,
)

SCALES = [0.25, 0.125, 0.0625, 0.03125]
CANVAS = (256, 384)


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]


def _cuda_kernels_or_skip(device: str) -> None:
    if device == "cuda":
        from deploy_sdk import plugins

        if not plugins.has_cuda_kernels():
            pytest.skip("the plugin library here was built without CUDA kernels (no nvcc at install time)")


def _pyramid(batch: int, channels: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, channels, CANVAS[0] // s, CANVAS[1] // s, generator=g) for s in (4, 8, 16, 32)]
    return [f.to(device) for f in feats]


def _boxes(batch: int, per_image: int, seed: int = 1):
    """Boxes of every pyramid level, some crossing the canvas edge, one degenerate (zero-area) box per image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        xy = torch.rand(per_image, 2, generator=g) * torch.tensor([CANVAS[1] + 20.0, CANVAS[0] + 20.0]) - 10
        wh = torch.rand(per_image, 2, generator=g) ** 2 * 400
        boxes = torch.cat([xy, xy + wh], 1)
        boxes[0, 2:] = boxes[0, :2]  # zero area: pooled at the lowest level
        out.append(boxes)
    return torch.stack(out)


def _multilevel_args(rois, feats, sampling_ratio=2, aligned=False):
    return (rois, feats, 7, 7, SCALES, sampling_ratio, aligned, "avg", 224.0, 4)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_op_equals_torchvision_multiscale_roi_align(device, sampling_ratio):
    _cuda_kernels_or_skip(device)
    feats = _pyramid(2, 8, device)
    rois = _boxes(2, 30).to(device)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio)
    expected = pooler({str(i): f for i, f in enumerate(feats)}, list(rois), [CANVAS] * 2)
    actual = torch_ops.multilevel_roi_align(rois, feats, 7, SCALES, sampling_ratio, aligned=False)
    assert actual.shape == (2, 30, 8, 7, 7) and actual.device.type == device
    assert_close(actual.reshape(-1, 8, 7, 7).cpu(), expected.cpu(), what="multilevel op vs MultiScaleRoIAlign")


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_single_level_op_equals_torchvision_roi_align(device, aligned, index_dtype):
    _cuda_kernels_or_skip(device)
    feats = _pyramid(3, 5, device)[0]
    rois = _boxes(1, 40)[0].to(device)
    idx = (torch.arange(40) % 3).to(index_dtype).to(device)
    actual = torch_ops.roi_align(feats, rois, idx, (5, 6), spatial_scale=0.25, sampling_ratio=0, aligned=aligned)
    expected = torchvision.ops.roi_align(
        feats, torch.cat([idx[:, None].float(), rois], 1), (5, 6), 0.25, 0, aligned=aligned
    )
    assert_close(actual.cpu(), expected.cpu(), what="roi_align op vs torchvision")


@pytest.mark.parametrize("device", _devices())
def test_low_precision_features(device):
    # fp16 runs in the library as fp16 (fp32 coordinates and accumulation); bf16 is pooled in fp32 and cast back.
    _cuda_kernels_or_skip(device)
    feats = _pyramid(1, 4, device)
    rois = _boxes(1, 20).to(device)
    for dtype, tol in ((torch.float16, "float16"), (torch.bfloat16, None)):
        low = [f.to(dtype) for f in feats]
        expected = torch_ops.multilevel_roi_align(rois, [f.float() for f in low], 7, SCALES, 2)
        actual = torch_ops.multilevel_roi_align(rois, low, 7, SCALES, 2)
        assert actual.dtype == dtype
        if tol:
            assert_close(actual.float().cpu(), expected.cpu(), dtype=tol, what=f"{dtype} vs fp32 pooling")
        else:  # exactly the fp32 result rounded to bf16
            assert torch.equal(actual.cpu(), expected.to(dtype).cpu())


@pytest.mark.parametrize("device", _devices())
def test_opcheck(device):
    # Schema, fake (meta) kernel against the real one, FakeTensor tracing and AOT dispatch (torch.compile's path).
    _cuda_kernels_or_skip(device)
    feats = _pyramid(2, 3, device)
    rois = _boxes(2, 12).to(device)
    torch.library.opcheck(torch_ops.multilevel_roi_align_op, _multilevel_args(rois, feats))
    torch.library.opcheck(torch_ops.multilevel_roi_align_op, _multilevel_args(rois[:, :0], feats))  # no RoIs
    idx = torch.tensor([0, 1] * 6, device=device)
    torch.library.opcheck(torch_ops.roi_align_op, (feats[1], rois[0], idx, 3, 4, 0.125, 2, True, "avg"))


def test_fake_kernel_gives_shapes_for_symbolic_tracing():
    from torch.fx.experimental.proxy_tensor import make_fx

    feats = _pyramid(2, 3, "cpu")
    rois = _boxes(2, 12)

    def pool(r, p2, p3, p4, p5):
        return torch_ops.multilevel_roi_align(r, [p2, p3, p4, p5], (7, 5), SCALES, 2) + 1

    graph = make_fx(pool, tracing_mode="symbolic")(rois, *feats)
    calls = [n for n in graph.graph.nodes if n.target is torch.ops.maskrcnn_deploy.multilevel_roi_align.default]
    assert len(calls) == 1
    assert tuple(int(d) for d in calls[0].meta["val"].shape[3:]) == (7, 5)
    more = _boxes(2, 5, seed=3)
    assert torch.equal(graph(more, *feats), pool(more, *feats))


def test_no_autograd_formula():
    feats = [f.requires_grad_() for f in _pyramid(1, 2, "cpu")]
    out = torch_ops.multilevel_roi_align(_boxes(1, 3), feats, 2, SCALES, 2)
    with pytest.raises(RuntimeError, match="(?i)autograd"):
        out.sum().backward()


def test_op_equals_the_onnx_function_in_onnxruntime():
    import onnx
    import onnxruntime as ort

    cfg = RoIAlignConfig(7, 7, 2, tuple(SCALES))

    class Pool(torch.nn.Module):
        def forward(self, rois, p2, p3, p4, p5):
            return multi_level_roi_align(rois, [p2, p3, p4, p5], cfg)

    feats = _pyramid(2, 4, "cpu")
    rois = _boxes(2, 25)
    buf = io.BytesIO()
    torch.onnx.export(
        Pool(), (rois, *feats), buf, opset_version=17, dynamo=False,
        input_names=["rois", "p2", "p3", "p4", "p5"], custom_opsets={ROI_ALIGN_DOMAIN: 1},
    )  # fmt: skip
    model = onnx.load_from_string(buf.getvalue())
    assert [n.op_type for n in model.graph.node] == ["MultiLevelRoIAlign"]
    model.functions.append(make_roi_align_function(4, 17, 0))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"rois": rois.numpy(), **{f"p{i + 2}": f.numpy() for i, f in enumerate(feats)}})
    actual = torch_ops.multilevel_roi_align(rois, feats, 7, SCALES, 2)
    assert_close(actual, onnx_out, what="custom op vs the ONNX function in ONNX Runtime")


def test_eager_pooling_uses_the_plugin_op_by_default():
    cfg = RoIAlignConfig(7, 7, 2, tuple(SCALES))
    assert cfg.kernel == "plugin"
    feats = _pyramid(1, 2, "cpu")
    graph = torch.fx.experimental.proxy_tensor.make_fx(lambda r, *f: multi_level_roi_align(r, list(f), cfg))(
        _boxes(1, 4), *feats
    )
    targets = {n.target for n in graph.graph.nodes}
    assert torch.ops.maskrcnn_deploy.multilevel_roi_align.default in targets
    with pytest.raises(ValueError, match="kernel"):
        RoIAlignConfig(7, 7, 2, tuple(SCALES), kernel="cudnn")


def test_config_is_the_plugin_field_table():
    """RoIAlignConfig has one field per field of the plugin's table for the op (same names, the table's defaults),
    and the node attributes it writes are, for a hand-picked pooler, exactly these."""
    import dataclasses

    from deploy_sdk import plugins

    fields = {f.name: f for f in dataclasses.fields(RoIAlignConfig)}
    assert tuple(n for n in fields if n != "kernel") == plugins.MULTILEVEL_FIELDS
    for name in plugins.MULTILEVEL_FIELDS:
        default = plugins.field_default(plugins.MULTILEVEL_OP, name)
        if fields[name].default is not dataclasses.MISSING:
            assert fields[name].default == default, name
    cfg = RoIAlignConfig(14, 7, 0, (0.25, 0.125))
    assert cfg.onnx_attributes() == {
        "output_height_i": 14, "output_width_i": 7, "sampling_ratio_i": 0, "spatial_scales_f": [0.25, 0.125],
        "aligned_i": 0, "mode_s": "avg", "canonical_scale_f": 224.0, "canonical_level_i": 4,
    }  # fmt: skip


@pytest.mark.parametrize("aligned", [False, True])
def test_pooler_settings_give_the_node_attributes(aligned):
    from deploy_sdk.conversion.checkpoints.settings import AlignedMultiScaleRoIAlign, RoIAlignSettings

    kind = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
    pool = kind(["0", "1", "2", "3"], (14, 7), 2, canonical_scale=112, canonical_level=3)
    settings = RoIAlignSettings.from_pooler(pool)
    assert settings == RoIAlignSettings(["0", "1", "2", "3"], (14, 7), 2, 112, 3, aligned)
    assert isinstance(settings.canonical_scale, int)  # the metadata keeps torchvision's int
    assert settings.config(SCALES) == RoIAlignConfig(14, 7, 2, tuple(SCALES), int(aligned), "avg", 112.0, 3)


@pytest.mark.parametrize("device", _devices())
def test_deployment_module_same_detections_with_plugin_and_torchvision_pooling(device):
    _cuda_kernels_or_skip(device)
    model = build_tiny_maskrcnn(seed=0)
    images, image_sizes, _ = random_canvas([(100, 128), (128, 90), (64, 70)], (128, 128), seed=1)
    ours = DeploymentModule(model).eval().to(device)
    theirs = use_roi_align_kernel(DeploymentModule(model).eval().to(device), "torchvision")
    assert ours.box_pool_cfg.kernel == "plugin" and theirs.mask_pool_cfg.kernel == "torchvision"
    with torch.inference_mode():
        a = ours(images.to(device), image_sizes.to(device))
        b = theirs(images.to(device), image_sizes.to(device))
    num = a[0].cpu()
    assert torch.equal(num, b[0].cpu()) and int(num.sum()) > 0
    assert torch.equal(a[3].cpu(), b[3].cpu()), "labels"
    for name, x, y in zip(("boxes", "scores", "masks"), (a[1], a[2], a[4]), (b[1], b[2], b[4])):
        assert_close(x.cpu(), y.cpu(), what=name)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_op_aligned_equals_torchvision_per_level(device, sampling_ratio):
    # aligned=True (detectron2's ROIAlignV2): torchvision's own level rule (LevelMapper) and roi_align per level.
    from torchvision.ops.poolers import LevelMapper

    _cuda_kernels_or_skip(device)
    feats = _pyramid(2, 6, device, seed=4)
    rois = _boxes(2, 25, seed=5).to(device)
    flat = rois.reshape(-1, 4)
    levels = LevelMapper(2, 5)([flat])
    idx = torch.arange(2, device=device).repeat_interleave(25).to(flat.dtype)
    expected = torch.zeros(50, 6, 7, 7, device=device)
    for level, (feat, scale) in enumerate(zip(feats, SCALES)):
        sel = torch.where(levels == level)[0]
        expected[sel] = torchvision.ops.roi_align(
            feat, torch.cat([idx[sel, None], flat[sel]], 1), 7, scale, sampling_ratio, aligned=True
        )
    actual = torch_ops.multilevel_roi_align(rois, feats, 7, SCALES, sampling_ratio, aligned=True)
    assert_close(actual.reshape(50, 6, 7, 7).cpu(), expected.cpu(), what="aligned multilevel op vs torchvision")


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("aligned", [False, True])
def test_single_level_op_sampling_ratio_2(device, aligned):
    _cuda_kernels_or_skip(device)
    feats = _pyramid(2, 3, device, seed=6)[1]
    rois = _boxes(1, 30, seed=7)[0].to(device)
    idx = (torch.arange(30) % 2).to(device)
    actual = torch_ops.roi_align(feats, rois, idx, 4, spatial_scale=0.125, sampling_ratio=2, aligned=aligned)
    expected = torchvision.ops.roi_align(
        feats, torch.cat([idx[:, None].float(), rois], 1), 4, 0.125, 2, aligned=aligned
    )
    assert_close(actual.cpu(), expected.cpu(), what="roi_align op (sampling 2) vs torchvision")


def _bilinear(img, y, x):
    """torchvision's bilinear_interpolate for one [H, W] map, written out for the test."""
    h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * img[y0, x0] + (1 - ly) * lx * img[y0, x1] + ly * (1 - lx) * img[y1, x0]
            + ly * lx * img[y1, x1])  # fmt: skip


def _naive_max_roi_align(feats, rois, idx, out, scale, sampling_ratio, aligned):
    """The contract's max mode: each bin = the MAX of its bilinearly interpolated samples."""
    import math

    result = torch.zeros(rois.shape[0], feats.shape[1], out, out, dtype=torch.float64)
    f = feats.double()
    for r in range(rois.shape[0]):
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (float(v) * scale - off for v in rois[r])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out, rh / out
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out)
        for c in range(f.shape[1]):
            img = f[int(idx[r]), c]
            for py in range(out):
                for px in range(out):
                    vals = [
                        _bilinear(img, y1 + py * bh + (iy + 0.5) * bh / gh, x1 + px * bw + (ix + 0.5) * bw / gw)
                        for iy in range(gh) for ix in range(gw)
                    ]  # fmt: skip
                    result[r, c, py, px] = max(vals)
    return result


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("sampling_ratio,aligned", [(0, False), (2, True)])
def test_max_mode_equals_naive_reference(device, sampling_ratio, aligned):
    # torchvision has no max RoIAlign (and ONNX's max is a different function): a naive reference of the contract.
    _cuda_kernels_or_skip(device)
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(2, 2, 12, 16, generator=g)
    rois = torch.tensor([[1.0, 2.0, 30.0, 20.0], [-5.0, -3.0, 10.0, 12.0], [20.0, 10.0, 70.0, 50.0],
                         [4.0, 4.0, 4.5, 5.0], [40.0, 30.0, 62.0, 46.0]])  # fmt: skip
    idx = torch.tensor([0, 1, 1, 0, 1])
    expected = _naive_max_roi_align(feats, rois, idx, 3, 0.25, sampling_ratio, aligned)
    actual = torch_ops.roi_align(feats.to(device), rois.to(device), idx.to(device), 3, spatial_scale=0.25,
                                 sampling_ratio=sampling_ratio, aligned=aligned, mode="max")  # fmt: skip
    assert_close(actual.cpu(), expected, what="max-mode op vs naive max of bilinear samples")
    ml = torch_ops.multilevel_roi_align(rois[None].to(device), [feats[:1].to(device)], 3, [0.25], sampling_ratio,
                                        aligned=aligned, mode="max")  # fmt: skip
    expected0 = _naive_max_roi_align(feats[:1], rois, torch.zeros(5, dtype=torch.long), 3, 0.25, sampling_ratio,
                                     aligned)  # fmt: skip
    assert_close(ml[0].cpu(), expected0, what="multilevel max mode (one level) vs naive reference")


def test_shipped_model_same_detections_with_plugin_and_torchvision_pooling(shipped_loaded):
    from fixtures_models import held_out_images

    from deploy_sdk import Predictor
    from deploy_sdk.conversion.torch_backend import TorchBackend

    ours = TorchBackend(shipped_loaded)
    theirs = TorchBackend(shipped_loaded)
    use_roi_align_kernel(theirs.module, "torchvision")
    assert ours.module.box_pool_cfg.kernel == "plugin" and theirs.module.box_pool_cfg.kernel == "torchvision"
    images = held_out_images(2)
    a = Predictor(ours, batch_size=2).predict(images)
    b = Predictor(theirs, batch_size=2).predict(images)
    assert sum(len(d.scores) for d in a) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
        assert_close(x.boxes, y.boxes, tol=FP32_WHOLE_MODEL_BOXES, what="boxes, plugin vs torchvision pooling")
        assert_close(x.scores, y.scores, tol=FP32_WHOLE_MODEL, what="scores, plugin vs torchvision pooling")
        inter = np.logical_and(x.masks, y.masks).sum()
        union = np.logical_or(x.masks, y.masks).sum()
        assert union == 0 or inter / union > 0.999
