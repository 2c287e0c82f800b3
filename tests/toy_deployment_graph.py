"""A tiny ONNX graph that follows the deployment graph contract, for testing the runtime without a real model.

It "detects" two fixed boxes in every image that has any non-zero pixel and nothing in an all-black image:
box k is ``TOY_BOX_FRACTIONS[k] * (w, h, w, h)`` of the valid resized region (so in canvas pixels), with score
``TOY_SCORES[k]``, label ``TOY_LABELS[k]`` and mask probabilities ``toy_masks()[k]``. Hand-worked expectations
follow directly: in original image pixels, box k is ``TOY_BOX_FRACTIONS[k] * (W, H, W, H)`` up to rounding of the
resize. It runs in well under a millisecond, which is what the memory and thread tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploy_sdk.model_metadata import ModelMetadata

K = 3  # padded detections per image; the third slot is always padding
TOY_BOX_FRACTIONS = np.array([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25], [0, 0, 0, 0]], dtype=np.float32)
TOY_SCORES = np.array([0.9, 0.6, 0.0], dtype=np.float32)
TOY_LABELS = np.array([1, 3, 0], dtype=np.int32)
TOY_CLASSES = ["__background__", "circle", "square", "star"]


def toy_masks() -> np.ndarray:
    """[K, 28, 28] float32 probabilities: a soft disc, a diagonal ramp, zeros (padding)."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    disc = np.clip(1.0 - np.hypot(yy - 13.5, xx - 13.5) / 14.0, 0, 1) * 1.2
    ramp = (xx + yy) / 54.0
    return np.stack([np.clip(disc, 0, 1), ramp, np.zeros_like(ramp)]).astype(np.float32)


def toy_metadata(**overrides) -> ModelMetadata:
    values = dict(
        class_names=list(TOY_CLASSES),
        min_size=64,
        max_size=128,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        score_threshold=0.05,
        nms_threshold=0.5,
        detections_per_image=K,
        arch="toy",
    )
    values.update(overrides)
    return ModelMetadata(**values)


def write_toy_graph(
    path: Path,
    input_type: str = "float32",
    metadata: ModelMetadata | None = None,
    with_metadata: bool = True,
    fixed_size=None,
) -> Path:
    """Write the toy graph to ``path``; ``input_type`` "float32" or "uint8"; ``fixed_size`` (H, W) or None."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if input_type == "float32" else TensorProto.UINT8
    h, w = fixed_size if fixed_size else ("H", "W")
    inputs = [
        helper.make_tensor_value_info("images", elem, ["B", 3, h, w]),
        helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["B", 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["B"]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", K, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", K]),
        helper.make_tensor_value_info("labels", TensorProto.INT32, ["B", K]),
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["B", K, 28, 28]),
    ]
    consts = {
        "frac": TOY_BOX_FRACTIONS[None],
        "whwh_idx": np.array([1, 0, 1, 0], dtype=np.int64),
        "ax1": np.array([1], dtype=np.int64),
        "ax123": np.array([1, 2, 3], dtype=np.int64),
        "zero": np.array(0.0, dtype=np.float32),
        "two": np.array(2, dtype=np.int32),
        "score_row": TOY_SCORES[None],
        "label_row": TOY_LABELS.astype(np.float32)[None],
        "mask_row": toy_masks()[None],
        "shape4": np.array([-1, 1, 1, 1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["image_sizes"], ["sizes_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["sizes_f", "whwh_idx"], ["whwh"], axis=1),
        helper.make_node("Unsqueeze", ["whwh", "ax1"], ["whwh1"]),
        helper.make_node("Mul", ["whwh1", "frac"], ["boxes"]),
        helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["images_f", "ax123"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "zero"], ["has"]),
        helper.make_node("Cast", ["has"], ["has_i"], to=TensorProto.INT32),
        helper.make_node("Mul", ["has_i", "two"], ["num_detections"]),
        # ones [B, 1] from the batch dimension, to broadcast the per-slot constants over the batch
        helper.make_node("Mul", ["peak", "zero"], ["peak0"]),
        helper.make_node("Exp", ["peak0"], ["ones_b"]),
        helper.make_node("Unsqueeze", ["ones_b", "ax1"], ["ones_b1"]),
        helper.make_node("Mul", ["ones_b1", "score_row"], ["scores"]),
        helper.make_node("Mul", ["ones_b1", "label_row"], ["labels_f"]),
        helper.make_node("Cast", ["labels_f"], ["labels"], to=TensorProto.INT32),
        helper.make_node("Reshape", ["ones_b", "shape4"], ["ones_b4"]),
        helper.make_node("Mul", ["ones_b4", "mask_row"], ["masks"]),
    ]
    graph = helper.make_graph(
        nodes, "toy_maskrcnn", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in consts.items()]
    )
    # ReduceMax takes its axes as an input from opset 18 on.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if with_metadata:
        meta = metadata or toy_metadata()
        for key, value in meta.to_props().items():
            model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
