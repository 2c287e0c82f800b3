"""A small ONNX graph with the shape of a deployment graph, for the precision and engine-build tests.

It has what the passes must tell apart: normalization and convolutions (the "network"), a Gemm head, detection
math on coordinates (image_sizes → boxes, with an offset too small for fp16 to represent next to the image size),
TopK, and a custom-domain node carrying a model-local function (the RoIAlign stand-in) whose body adds a value
computed from fp32 ``rois`` to the pooled features, so it only type-checks if both stay the same type.
Inputs are those of the graph contract: ``images`` [B, 3, H, W] float32 0–255 and ``image_sizes`` [B, 2] int64.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from toy_deployment_graph import toy_metadata as runtime_toy_metadata

from deploy_sdk.model_metadata import ModelMetadata

TOY_DOMAIN = "maskrcnn_deploy"
TOY_OP = "MultiLevelRoIAlign"
OPSET = 17
# The attributes the RoIAlign plugin creator parses (one feature level), so the TensorRT graph pass accepts the node.
ROI_ATTRS = dict(
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scales=[0.5],
    aligned=0,
    mode="avg",
    canonical_scale=224.0,
    canonical_level=4,
)


def toy_metadata() -> ModelMetadata:
    """The runtime tests' toy metadata, with a max size of 96 (three strides of 32) for profile tests."""
    return runtime_toy_metadata(class_names=["__background__", "a", "b", "c"], max_size=96, detections_per_image=2)


def _pool_function() -> onnx.FunctionProto:
    # out[B, C, 1, 1] = mean over H, W of features + sum(rois) * 0 (keeps rois a real, typed input of the body)
    nodes = [
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("ReduceSum", ["rois"], ["roi_sum"], keepdims=1),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Mul", ["roi_sum", "zero"], ["roi_term"]),
        helper.make_node("Add", ["pooled", "roi_term"], ["out"]),
    ]
    return helper.make_function(
        TOY_DOMAIN, TOY_OP, ["rois", "features"], ["out"], nodes, [helper.make_opsetid("", OPSET)], list(ROI_ATTRS)
    )


def make_toy_graph(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    c1, c2 = 8, 16
    inits = [
        init("mean", np.array([123.7, 116.3, 103.5]).reshape(1, 3, 1, 1)),
        init("std", np.array([58.4, 57.1, 57.4]).reshape(1, 3, 1, 1)),
        init("w1", rng.normal(0, 0.3, (c1, 3, 3, 3))),
        init("b1", rng.normal(0, 0.1, (c1,))),
        init("w2", rng.normal(0, 0.2, (c2, c1, 3, 3))),
        init("b2", rng.normal(0, 0.1, (c2,))),
        init("w3", rng.normal(0, 0.2, (c2, c2, 1, 1))),
        init("fc_w", rng.normal(0, 0.3, (4, c2))),
        init("fc_b", rng.normal(0, 0.1, (4,))),
        init("half", np.array([0.5])),
        init("tiny", np.array([1e-3])),
        init("rois_const", np.array([[[0.0, 0.0, 8.0, 8.0]]])),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Sub", ["images", "mean"], ["centered"], name="/transform/Sub"),
        helper.make_node("Div", ["centered", "std"], ["normalized"], name="/transform/Div"),
        helper.make_node("Conv", ["normalized", "w1", "b1"], ["c1"], name="/backbone/conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/backbone/relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/backbone/conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["features"], name="/backbone/relu2"),
        helper.make_node("Conv", ["features", "w3"], ["head"], name="/rpn_head/conv"),
        # The RoIAlign stand-in: custom domain, local function, fp32 rois.
        helper.make_node("Shape", ["images"], ["img_shape"], name="/roi/shape", start=0, end=1),
        helper.make_node("Concat", ["img_shape", "roi_tail"], ["rois_shape"], name="/roi/concat", axis=0),
        helper.make_node("Expand", ["rois_const", "rois_shape"], ["rois"], name="/roi/expand"),
        helper.make_node(
            TOY_OP, ["rois", "head"], ["pooled"], name="/roi_heads/box_roi_pool", domain=TOY_DOMAIN, **ROI_ATTRS
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="/box_head/Flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="/box_head/fc6/Gemm", transB=1),
        helper.make_node("Sigmoid", ["logits"], ["probs"], name="/roi_heads/sigmoid"),
        helper.make_node("TopK", ["probs", "k"], ["scores", "top_idx"], name="/postprocess/topk", axis=1),
        helper.make_node("Cast", ["top_idx"], ["labels"], name="/postprocess/cast_labels", to=TensorProto.INT32),
        # Coordinates: image size * 0.5 + 1e-3; in fp16, 200.001 rounds to 200.0.
        helper.make_node("Cast", ["image_sizes"], ["sizes_f"], name="/postprocess/cast_sizes", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sizes_f", "half"], ["half_sizes"], name="/postprocess/mul"),
        helper.make_node("Add", ["half_sizes", "tiny"], ["centers"], name="/postprocess/add"),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "roi_tail"))
    graph = helper.make_graph(
        nodes,
        "toy_deploy",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, "H", "W"]),
            helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("labels", TensorProto.INT32, ["B", 2]),
            helper.make_tensor_value_info("centers", TensorProto.FLOAT, ["B", 2]),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(TOY_DOMAIN, 1)],
        functions=[_pool_function()],
    )
    model.ir_version = 8
    for key, value in toy_metadata().to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def toy_inputs(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, 3, height, width)).astype(np.float32)
    sizes = np.array([[height - 4 * i, width - 8 * i] for i in range(batch)], dtype=np.int64)
    return {"images": images, "image_sizes": sizes}


def write_toy_images(directory, count: int = 6, seed: int = 7):
    """PNG images of random sizes for calibration tests."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"img_{i:03d}.png")
    return directory
