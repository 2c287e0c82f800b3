"""The TensorRT compatibility check (deploy_sdk.conversion.tensorrt_support, `check --target tensorrt`).

The check runs without TensorRT, so it is tested against hand-built graphs whose verdicts are worked out
from the parser's published operator table (the reference): each node below is either a known violation (op not
supported, a type the table does not list, a documented restriction) or a control that must pass; and the default
export of the shipped model must come out clean for TensorRT 10 and 11."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy_sdk.cli import main
from deploy_sdk.conversion import tensorrt_support
from deploy_sdk.conversion.roi_align_function import ROI_ALIGN_DOMAIN, ROI_ALIGN_OP
from deploy_sdk.errors import DeploySdkError


def _const(name, array):
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.asarray(array)))


def _hand_made_graph(opset: int = 17) -> onnx.ModelProto:
    """One violation per flagged node (names start with 'bad_'; 'warn_' for warnings), next to controls ('ok_')
    that must pass."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 16, 16])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])
    axes_in = helper.make_tensor_value_info("axes_in", TensorProto.INT64, [1])
    outputs = [
        helper.make_tensor_value_info(n, t, None)
        for n, t in [
            ("nz", TensorProto.INT64), ("uniq", TensorProto.INT64), ("tk_v", TensorProto.FLOAT),
            ("tk2_v", TensorProto.FLOAT), ("tk3_v", TensorProto.FLOAT), ("rs", TensorProto.FLOAT),
            ("mp", TensorProto.FLOAT), ("foo", TensorProto.FLOAT), ("red", TensorProto.FLOAT),
            ("dq", TensorProto.FLOAT), ("dft", TensorProto.FLOAT), ("add64", TensorProto.INT64),
            ("clip64", TensorProto.INT64), ("dbl", TensorProto.FLOAT), ("mp_ok", TensorProto.FLOAT),
        ]
    ]  # fmt: skip
    nodes = [
        # NonZero takes FP32/FP16 only: int64 input is flagged.
        helper.make_node("NonZero", ["idx"], ["nz"], name="bad_nonzero_int64"),
        helper.make_node("Unique", ["idx"], ["uniq"], name="bad_unique"),
        _const("k5", np.array([5], np.int64)),
        helper.make_node("TopK", ["x", "k5"], ["tk_v", "tk_i"], name="bad_topk_unsorted", axis=1, sorted=0),
        # K bounded by min(5000, ...) stays >= 3840: flagged; min(1000, ...) is fine.
        _const("k_big", np.array([5000], np.int64)),
        helper.make_node("Shape", ["x"], ["x_shape"], name="ok_shape"),
        helper.make_node("Concat", ["k_big", "x_shape"], ["k_big_parts"], name="ok_concat", axis=0),
        helper.make_node("ReduceMin", ["k_big_parts"], ["k_big_min"], name="ok_reducemin", keepdims=1),
        helper.make_node("TopK", ["x", "k_big_min"], ["tk2_v", "tk2_i"], name="bad_topk_k_too_large", axis=1),
        _const("k_small", np.array([1000], np.int64)),
        helper.make_node("Min", ["k_small", "k_big_min"], ["k_small_min"], name="ok_min"),
        helper.make_node("TopK", ["x", "k_small_min"], ["tk3_v", "tk3_i"], name="ok_topk", axis=1),
        _const("scales", np.array([1, 1, 2, 2], np.float32)),
        helper.make_node("Resize", ["img", "", "scales"], ["rs"], name="bad_resize_cubic", mode="cubic"),
        helper.make_node("MaxPool", ["img"], ["mp"], name="bad_maxpool_dilated", kernel_shape=[3, 3], dilations=[2, 2]),
        helper.make_node("MaxPool", ["img"], ["mp_ok"], name="ok_maxpool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("FooOp", ["x"], ["foo"], name="bad_custom_without_plugin", domain="some.vendor"),
        # ReduceSum's axes must be an initializer: computed from a graph input here.
        helper.make_node("ReduceSum", ["x", "axes_in"], ["red"], name="bad_reducesum_dynamic_axes"),
        _const("q", np.array([1, 2, 3], np.int8)),
        _const("q_scale", np.array(0.5, np.float32)),
        _const("q_zp", np.array(3, np.int8)),
        helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zp"], ["dq"], name="bad_dequantize_zero_point"),
        _const("sig", np.zeros((1, 16, 1), np.float32)),
        helper.make_node("DFT", ["sig"], ["dft"], name="bad_dft_before_trt11"),
        helper.make_node("Add", ["idx", "idx"], ["add64"], name="ok_add_int64"),
        _const("lo", np.array(0, np.int64)),
        helper.make_node("Clip", ["idx", "lo"], ["clip64"], name="ok_clip_int64"),  # importer: int64 Clip fine
        helper.make_node("Cast", ["x"], ["x64"], name="warn_cast_to_double", to=TensorProto.DOUBLE),
        helper.make_node("Sin", ["x64"], ["sin64"], name="warn_sin_double"),
        helper.make_node("Cast", ["sin64"], ["dbl"], name="warn_cast_from_double", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "hand_made", [x, img, idx, axes_in], outputs)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("some.vendor", 1)]
    )


def _flagged(report):
    return {(f.node, f.severity) for f in report.findings}


def test_hand_made_graph_flags_each_violation_and_no_control():
    report = tensorrt_support.check_model(_hand_made_graph(), "10")
    errors = {f.node for f in report.errors}
    expected = {
        "bad_nonzero_int64", "bad_unique", "bad_topk_unsorted", "bad_topk_k_too_large", "bad_resize_cubic",
        "bad_maxpool_dilated", "bad_custom_without_plugin", "bad_reducesum_dynamic_axes",
        "bad_dequantize_zero_point", "bad_dft_before_trt11",
    }  # fmt: skip
    assert errors == expected
    # float64: the parser's "limited support" (computed in float32): a warning, not a refusal.
    assert {f.node for f in report.warnings} == {"warn_cast_to_double", "warn_sin_double", "warn_cast_from_double"}
    assert not report.ok
    by_node = {f.node: f for f in report.findings}
    nz = by_node["bad_nonzero_int64"]
    assert nz.input_types == ["int64"] and "int64" in nz.problem and "float32" in nz.problem
    assert by_node["bad_topk_unsorted"].attributes["sorted"] == 0
    assert "5000" in by_node["bad_topk_k_too_large"].problem and "3840" in by_node["bad_topk_k_too_large"].problem
    assert by_node["bad_resize_cubic"].attributes["mode"] == "cubic"
    assert "plugin" in by_node["bad_custom_without_plugin"].problem
    line = nz.line()
    assert line.startswith("ERROR: NonZero node 'bad_nonzero_int64' (inputs int64)")


def test_trt11_table_adds_dft_and_opset_range_is_checked():
    report11 = tensorrt_support.check_model(_hand_made_graph(), "11")
    assert "bad_dft_before_trt11" not in {f.node for f in report11.errors}
    assert "bad_unique" in {f.node for f in report11.errors}
    # Opset 25 is past TensorRT 10's range (9-24) but inside 11's (9-25).
    model = _hand_made_graph()
    model.opset_import[0].version = 25
    assert ("<model>", "error") in _flagged(tensorrt_support.check_model(model, "10"))
    assert ("<model>", "error") not in _flagged(tensorrt_support.check_model(model, "11"))


def test_dynamic_topk_k_is_a_warning():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_dynamic", axis=1)
    out = helper.make_tensor_value_info("v", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "g", [x, k], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    report = tensorrt_support.check_model(model, "10")
    assert report.ok and [f.node for f in report.warnings] == ["topk_dynamic"]


def test_unknown_version_is_a_clear_error():
    with pytest.raises(DeploySdkError, match="--trt-version"):
        tensorrt_support.support_table("9")


def test_default_export_is_clean_for_trt10_and_trt11(shipped_onnx, tmp_path):
    from deploy_sdk.conversion.fp16 import convert_file_to_fp16

    fp16 = tmp_path / "model.fp16.onnx"
    convert_file_to_fp16(shipped_onnx, fp16)  # the graph TensorRT 11 (strongly typed) builds for fp16
    for path in (shipped_onnx, fp16):
        model = onnx.load(str(path))
        for version in ("10", "11"):
            report = tensorrt_support.check_model(model, version)
            assert report.ok and not report.warnings, [f.line() for f in report.findings]
            assert report.nodes_checked > 500  # the whole graph, not an empty walk


def test_shipped_export_mutations_are_caught(shipped_onnx):
    model = onnx.load(str(shipped_onnx))
    # 1) the RPN's per-level top-k bounds: raise the pre-NMS top-n constant past TensorRT's TopK limit.
    topk_ks = {n.input[1] for n in model.graph.node if n.op_type == "TopK"}
    raised = 0
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.dtype == np.int64 and value.size == 1 and int(value.reshape(-1)[0]) == 1000:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full_like(value, 4000)))
                raised += 1
    assert raised and topk_ks
    report = tensorrt_support.check_model(model, "10")
    assert any(f.op == "TopK" and "4000" in f.problem for f in report.errors)
    # 2) a custom-domain node that is neither our plugin nor backed by a local function.
    model = onnx.load(str(shipped_onnx))
    node = next(n for n in model.graph.node if n.domain == ROI_ALIGN_DOMAIN and n.op_type == ROI_ALIGN_OP)
    node.op_type = "SomeOtherRoIAlign"
    report = tensorrt_support.check_model(model, "11")
    assert [f.op for f in report.errors] == ["SomeOtherRoIAlign"]


def test_cli(tmp_path, capsys, shipped_onnx):
    bad = tmp_path / "bad.onnx"
    onnx.save(_hand_made_graph(), str(bad))
    assert main(["check", str(bad), "--target", "tensorrt", "--trt-version", "10"]) == 1
    out = capsys.readouterr().out
    assert "ERROR: Unique node 'bad_unique'" in out and "TensorRT 10.x: NOT compatible" in out
    assert "docs/operators.md" in out  # the source of the table is printed
    assert main(["check", str(shipped_onnx), "--target", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT 10.x: compatible" in out and "TensorRT 11.x: compatible" in out
    assert main(["check", str(tmp_path / "missing.onnx"), "--target", "tensorrt"]) != 0
    assert "does not exist" in capsys.readouterr().err
