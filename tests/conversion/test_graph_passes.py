"""The MultiLevelRoIAlign node: its local function (ONNX Runtime vs torchvision) and the TensorRT strip pass."""

from __future__ import annotations

from collections import OrderedDict

import onnx
import pytest
import torch
from compare import assert_close
from onnx import AttributeProto

from deploy_sdk import plugins
from deploy_sdk.conversion.graph_passes import strip_roi_align_functions
from deploy_sdk.conversion.roi_align_function import RoIAlignConfig, multi_level_roi_align
from deploy_sdk.errors import EngineError

ort = pytest.importorskip("onnxruntime")

SCALES = (0.25, 0.125, 0.0625, 0.03125)


class _Pool(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, rois, p2, p3, p4, p5):
        return multi_level_roi_align(rois, [p2, p3, p4, p5], self.cfg)


@pytest.fixture(scope="module")
def pool_graph(tmp_path_factory):
    """A graph of one MultiLevelRoIAlign node exported the way deploy_sdk.conversion.export does it."""
    from deploy_sdk.conversion.export import _attach_roi_align_function

    cfg = RoIAlignConfig(7, 5, 2, SCALES)
    rois, feats = _inputs(batch=2, rois=6, height=64, width=96, seed=0)
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    names = ["rois", "p2", "p3", "p4", "p5"]
    dynamic = {n: {0: "batch", 2: f"h{n}", 3: f"w{n}"} for n in names[1:]} | {"rois": {0: "batch", 1: "r"}}
    torch.onnx.export(
        _Pool(cfg),
        (rois, *feats),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["pooled"],
        dynamic_axes=dynamic,
        custom_opsets={plugins.PLUGIN_DOMAIN: 1},
    )
    model = onnx.load(str(path))
    _attach_roi_align_function(model, 17)
    onnx.checker.check_model(model, full_check=True)
    return cfg, model


def _inputs(batch, rois, height, width, seed, channels=4):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, channels, height // int(1 / s), width // int(1 / s), generator=g) for s in SCALES]
    xy = torch.rand(batch, rois, 2, generator=g) * torch.tensor([width, height])
    wh = torch.rand(batch, rois, 2, generator=g) ** 3 * 400  # mostly small boxes, some large: every level
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[0, 0] = torch.tensor([3.0, 3.0, 3.4, 3.2])  # below one pixel: legacy RoIAlign clamps the size to 1
    boxes[-1, -1] = 0.0  # zero area (a padding row): log2(0) = -inf must land on the first level
    return boxes, feats


def _torchvision(rois, feats, cfg):
    from torchvision.ops import MultiScaleRoIAlign

    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], (cfg.output_height, cfg.output_width), cfg.sampling_ratio)
    x = OrderedDict((str(i), f) for i, f in enumerate(feats))
    canvas = (feats[0].shape[-2] * 4, feats[0].shape[-1] * 4)
    out = pool(x, list(rois), [canvas] * rois.shape[0])
    return out.reshape(rois.shape[0], rois.shape[1], *out.shape[1:])


@pytest.mark.parametrize("shape", [(3, 40, 128, 64), (1, 1, 32, 32), (2, 0, 64, 64)])
def test_local_function_in_onnxruntime_equals_torchvision(pool_graph, shape):
    cfg, model = pool_graph
    batch, num_rois, height, width = shape  # traced: batch 2, 6 RoIs, 64x96
    rois, feats = _inputs(batch, max(num_rois, 1), height, width, seed=1)
    rois = rois[:, :num_rois]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"rois": rois.numpy()} | {f"p{i + 2}": f.numpy() for i, f in enumerate(feats)}
    got = session.run(None, feed)[0]
    expected = _torchvision(rois, feats, cfg)
    assert got.shape == (batch, num_rois, 4, 7, 5)
    assert_close(got, expected, what="ONNX function vs torchvision MultiScaleRoIAlign")
    assert_close(multi_level_roi_align(rois, feats, cfg), expected, what="eager op vs torchvision")


def test_strip_leaves_exactly_the_plugin_node(pool_graph):
    cfg, model = pool_graph
    stripped = strip_roi_align_functions(model)
    assert len(model.functions) == 1, "the input model must not be modified"
    assert len(stripped.functions) == 0
    nodes = [n for n in stripped.graph.node if n.domain == plugins.PLUGIN_DOMAIN]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.op_type == plugins.MULTILEVEL_OP
    assert len(node.input) == 5 and len(node.output) == 1
    # Exactly the plugin creator's fields, in ONNX types that map onto its PluginField types.
    onnx_type_of_field = {
        plugins.FIELD_OUTPUT_HEIGHT: AttributeProto.INT,
        plugins.FIELD_OUTPUT_WIDTH: AttributeProto.INT,
        plugins.FIELD_SAMPLING_RATIO: AttributeProto.INT,
        plugins.FIELD_SPATIAL_SCALES: AttributeProto.FLOATS,
        plugins.FIELD_ALIGNED: AttributeProto.INT,
        plugins.FIELD_MODE: AttributeProto.STRING,
        plugins.FIELD_CANONICAL_SCALE: AttributeProto.FLOAT,
        plugins.FIELD_CANONICAL_LEVEL: AttributeProto.INT,
    }
    assert {a.name: a.type for a in node.attribute} == onnx_type_of_field
    assert set(onnx_type_of_field) == set(plugins.MULTILEVEL_FIELDS)
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert values == {
        "output_height": 7,
        "output_width": 5,
        "sampling_ratio": 2,  # explicit, never left to a parser's default
        "spatial_scales": list(SCALES),
        "aligned": 0,
        "mode": b"avg",
        "canonical_scale": 224.0,
        "canonical_level": 4,
    }
    onnx.checker.check_model(stripped)  # still a valid model; the op is now resolved by the plugin registry


def test_strip_refuses_graphs_without_the_node_and_bad_attributes(pool_graph):
    _, model = pool_graph
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(EngineError, match="no MultiLevelRoIAlign"):
        strip_roi_align_functions(empty)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    node = next(n for n in broken.graph.node if n.op_type == plugins.MULTILEVEL_OP)
    keep = [a for a in node.attribute if a.name != "sampling_ratio"]
    del node.attribute[:]
    node.attribute.extend(keep)
    with pytest.raises(EngineError, match="attributes"):
        strip_roi_align_functions(broken)
