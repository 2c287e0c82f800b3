"""fp16 conversion: network scopes in fp16, detection math and RoIAlign in fp32, explicit casts, checker passes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compare import FP16_TOY_LAYERS, assert_close
from onnx import TensorProto
from precision_toy_graph import make_toy_graph, toy_inputs

from deploy_sdk.cli import main as cli_main
from deploy_sdk.conversion.fp16 import convert_file_to_fp16, convert_model_to_fp16
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.model_metadata import ModelMetadata


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)})
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def test_network_runs_fp16_and_detection_math_fp32():
    converted, report = convert_model_to_fp16(make_toy_graph())
    onnx.checker.check_model(converted, full_check=True)
    types = _types(converted)
    nodes = {n.name: n for n in converted.graph.node}
    for name in ("/backbone/conv1", "/backbone/conv2", "/rpn_head/conv", "/box_head/fc6/Gemm"):
        node = nodes[name]
        assert all(types[i] == TensorProto.FLOAT16 for i in node.input), name  # data, weight, bias
        assert types[node.output[0]] == TensorProto.FLOAT16
    for name in (
        "/transform/Sub",
        "/roi_heads/box_roi_pool",
        "/roi_heads/sigmoid",
        "/postprocess/mul",
        "/postprocess/add",
    ):
        node = nodes[name]
        assert all(types[i] in (TensorProto.FLOAT, TensorProto.INT64) for i in node.input), name
    assert nodes["/postprocess/topk"].input[0] and types[nodes["/postprocess/topk"].input[0]] == TensorProto.FLOAT
    # Inputs and outputs keep their contract types.
    assert [(v.name, v.type.tensor_type.elem_type) for v in converted.graph.input] == [
        ("images", TensorProto.FLOAT),
        ("image_sizes", TensorProto.INT64),
    ]
    assert [v.type.tensor_type.elem_type for v in converted.graph.output] == [
        TensorProto.FLOAT,
        TensorProto.INT32,
        TensorProto.FLOAT,
    ]
    # Exactly the four boundaries of the toy graph get a Cast: into conv1 and into the box head (after the
    # fp32 RoIAlign), out of the RPN conv (into RoIAlign) and out of the Gemm (into the fp32 sigmoid).
    assert (report.casts_to_fp16, report.casts_to_fp32) == (2, 2)
    assert report.fp16_initializers == 7  # w1 b1 w2 b2 w3 fc_w fc_b; mean/std/tiny stay fp32


def test_fp16_graph_matches_fp32_within_fp16_tolerance_and_coordinates_exactly():
    fp32 = make_toy_graph()
    converted, _ = convert_model_to_fp16(fp32)
    feeds = toy_inputs(batch=2, height=64, width=96, seed=5)
    ref = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    # size * 0.5 + 0.001 is not representable in fp16 next to 32 (spacing 0.03): exact equality shows it is fp32.
    np.testing.assert_array_equal(got[2], ref[2])
    assert_close(got[0], ref[0], tol=FP16_TOY_LAYERS, what="toy scores through 4 fp16 layers")
    np.testing.assert_array_equal(got[1], ref[1])


def test_weight_shared_with_an_fp32_node_keeps_an_fp32_copy():
    model = make_toy_graph()
    # The fp32 postprocess Mul now reads conv1's bias too (broadcast [8] against [B, 2] fails, so use a slice).
    helper = onnx.helper
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "zero_i"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "one_i"))
    add = [n for n in model.graph.node if n.name == "/postprocess/add"][0]
    index = list(model.graph.node).index(add)
    model.graph.node.insert(
        index, helper.make_node("Slice", ["b1", "zero_i", "one_i"], ["b1_first"], name="/post/slice")
    )
    add.input[1] = "b1_first"
    converted, _ = convert_model_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    assert inits["b1"] == TensorProto.FLOAT and inits["b1__fp16"] == TensorProto.FLOAT16
    conv1 = [n for n in converted.graph.node if n.name == "/backbone/conv1"][0]
    assert conv1.input[2] == "b1__fp16"


def test_file_conversion_writes_metadata_and_refuses_non_fp32(tmp_path, capsys):
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    out = tmp_path / "toy.fp16.onnx"
    assert cli_main(["fp16", str(src), "-o", str(out)]) == 0
    assert "7 nodes fp16" in capsys.readouterr().out
    md = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert md.precision == "fp16" and md.arch == "toy"
    with pytest.raises(DeploySdkError, match="fp16 graph; convert the fp32 export"):
        convert_file_to_fp16(out, tmp_path / "again.onnx")
    assert cli_main(["fp16", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "again.onnx").exists() and not (tmp_path / "x.onnx").exists()


def test_graph_without_network_scopes_is_refused():
    with pytest.raises(DeploySdkError, match="network scopes"):
        convert_model_to_fp16(make_toy_graph(), scopes=("/no_such_module/",))
