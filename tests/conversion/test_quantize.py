"""INT8 Q/DQ quantization: placement, symmetric per-channel weights, float detection math, calibration inputs."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compare import FP32, FP32_STORED, assert_close
from onnx import numpy_helper
from precision_toy_graph import make_toy_graph, toy_inputs, toy_metadata, write_toy_images

from deploy_sdk.cli import main as cli_main
from deploy_sdk.conversion.quantize import ImageCalibrationReader, find_calibration_images, quantize_int8
from deploy_sdk.errors import DeploySdkError, InputImageError
from deploy_sdk.model_metadata import ModelMetadata


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize")
    src = tmp / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    calib = write_toy_images(tmp / "calib", count=6)
    out = tmp / "toy.int8.onnx"
    report = quantize_int8(src, out, calib, num_images=5, progress=False)
    return src, out, report


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_quantized_layers_take_int8_inputs_through_dq(quantized):
    _, out, report = quantized
    model = onnx.load(str(out))
    producers = _producers(model)
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(n.name for n in layers) == sorted(report.quantized_nodes)
    assert len(layers) == 4
    for node in layers:
        for index in (0, 1):  # activation and weight
            assert producers[node.input[index]].op_type == "DequantizeLinear", (node.name, index)
        if len(node.input) > 2:  # bias stays float: TensorRT adds it in its accumulator precision
            assert node.input[2] in {i.name for i in model.graph.initializer}
    # Detection math is float: no int8 tensor reaches anything but a DequantizeLinear.
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            consumers = [c for c in model.graph.node if node.output[0] in c.input]
            assert consumers and all(c.op_type == "DequantizeLinear" for c in consumers)


def test_weights_are_symmetric_per_channel_with_max_abs_scale(quantized):
    src, out, _ = quantized
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = _producers(model)
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producers[node.input[1]]
        q_weight, scale, zero = (inits[name] for name in dq.input)
        weight_name = next(name for name in original if dq.input[0].startswith(name + "_"))
        w = original[weight_name]
        # Hand reference: symmetric per output channel, scale = max|w_c| / 127, zero point 0.
        per_channel = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
        assert q_weight.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.shape == (w.shape[0],)
        assert_close(scale, per_channel, tol=FP32_STORED, what="per-channel scales")
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert axis == 0
        restored = q_weight.astype(np.float32) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        assert np.abs(restored - w).max() <= scale.max() / 2 + 1e-7
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # activations: per tensor, symmetric int8
            scale, zero = inits[node.input[1]], inits[node.input[2]]
            assert scale.size == 1 and zero.dtype == np.int8 and int(zero) == 0


def test_int8_graph_runs_and_keeps_coordinates_exact(quantized):
    src, out, _ = quantized
    feeds = toy_inputs(batch=2, height=64, width=96, seed=3)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    # The Q/DQ graph's meaning, evaluated in float: with graph optimizations off, ONNX Runtime runs every
    # QuantizeLinear/DequantizeLinear as its own op and the convolutions in fp32 (no integer kernels).
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fake = ort.InferenceSession(str(out), plain, providers=["CPUExecutionProvider"]).run(None, feeds)
    # centers come from image_sizes only: untouched detection math, bit-identical.
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_array_equal(fake[2], ref[2])
    # scores through 4 int8 layers: close, not equal. The quantization error itself (float semantics, the same
    # on every CPU up to fp32 rounding) is bounded by what this graph tolerates.
    quantization_error = float(np.abs(fake[0] - ref[0]).max())
    assert quantization_error < 0.08
    assert not np.array_equal(got[0], ref[0])
    # The integer kernels differ from the float semantics by kernel-level rounding, which depends on the CPU: a
    # requantization that rounds to the other neighbouring step, and, on x86 CPUs without VNNI (e.g. AMD Zen 2),
    # multiply-add pairs that saturate at 16 bits. Allow that in the graph's own units: 16 quantization steps
    # of the logits (a sigmoid moves at most 1/4 per unit), on top of the quantization error.
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    (logits_step,) = [
        float(inits[n.input[1]])
        for n in onnx.load(str(out)).graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == "logits"
    ]
    kernel_slack = 0.25 * 16 * logits_step
    assert np.abs(got[0] - ref[0]).max() <= quantization_error + kernel_slack, (
        f"int8 scores off by {np.abs(got[0] - ref[0]).max():.4f}: quantization error {quantization_error:.4f} "
        f"+ 16 logit steps ({kernel_slack:.4f})"
    )
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_metadata_says_int8_and_keeps_the_rest(quantized):
    _, out, _ = quantized
    model = onnx.load(str(out))
    md = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert md.precision == "int8"
    assert md.extra["calibration"] == {"images": 5, "method": "minmax", "target": "tensorrt"}
    expected = toy_metadata()
    assert (md.class_names, md.min_size, md.max_size) == (expected.class_names, expected.min_size, expected.max_size)


def test_calibration_reader_feeds_resized_padded_canvas(tmp_path):
    from PIL import Image

    md = toy_metadata()  # min 64, max 96, stride 32
    Image.fromarray(np.full((50, 120, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    reader = ImageCalibrationReader(find_calibration_images(tmp_path), md, progress=False)
    item = reader.get_next()
    assert reader.get_next() is None
    # Hand-worked torchvision resize: scale = min(64/50, 96/120) = 0.8 -> 40 x 96; canvas padded to 64 x 96.
    scale = min(64 / 50, 96 / 120)
    assert item["image_sizes"].tolist() == [[math.floor(50 * scale), math.floor(120 * scale)]] == [[40, 96]]
    assert item["images"].shape == (1, 3, 64, 96) and item["images"].dtype == np.float32
    assert np.allclose(item["images"][0, :, :40, :], 200) and not item["images"][0, :, 40:, :].any()


def test_bad_calibration_input_is_a_clear_error_and_leaves_no_file(tmp_path):
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    out = tmp_path / "out.int8.onnx"
    with pytest.raises(DeploySdkError, match="does not exist"):
        quantize_int8(src, out, tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeploySdkError, match="no images"):
        quantize_int8(src, out, tmp_path / "empty", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputImageError):
        quantize_int8(src, out, bad, progress=False)
    with pytest.raises(DeploySdkError, match="--method"):
        quantize_int8(src, out, bad, method="magic", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.int8.onnx*"))


def test_cli_quantize(tmp_path, capsys):
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    calib = write_toy_images(tmp_path / "calib", count=3)
    out = tmp_path / "q.onnx"
    assert cli_main(["quantize", str(src), "--calib", str(calib), "-o", str(out), "--num-images", "2"]) == 0
    assert "4 layers INT8" in capsys.readouterr().out and out.is_file()
    assert cli_main(["quantize", str(out), "--calib", str(calib), "-o", str(tmp_path / "q2.onnx")]) == 1
    assert "int8 graph; quantize the fp32 export" in capsys.readouterr().err


def test_frozen_batchnorm_is_folded_into_the_convolution():
    from onnx import TensorProto, helper

    from deploy_sdk.conversion.quantize import fold_channel_affine_into_conv

    rng = np.random.default_rng(1)

    def init(name, shape, scale=1.0):
        return numpy_helper.from_array((rng.normal(0, scale, shape)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/backbone/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "bn_scale"], ["m"], name="/backbone/bn/Mul"),
        helper.make_node("Add", ["m", "bn_shift"], ["a"], name="/backbone/bn/Add"),
        helper.make_node("Relu", ["a"], ["r"], name="/backbone/relu"),
        # Same weight, but followed by a Mul with a runtime tensor: must stay as it is.
        helper.make_node("Conv", ["x", "w"], ["c2"], name="/other/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c2", "x_sum"], ["y2"], name="/other/mul"),
        helper.make_node("ReduceSum", ["x"], ["x_sum"], name="/other/sum", keepdims=1),
    ]
    nodes = nodes[:4] + [nodes[6], nodes[4], nodes[5]]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        [init("w", (4, 3, 3, 3)), init("bn_scale", (1, 4, 1, 1)), init("bn_shift", (1, 4, 1, 1))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_channel_affine_into_conv(folded) == 1
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ReduceSum", "Conv", "Mul"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # ORT must not fold it itself
    x = {"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, x)
    got = ort.InferenceSession(folded.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, x)
    assert_close(got[0], ref[0], tol=FP32, what="conv+bn folded")
    np.testing.assert_array_equal(got[1], ref[1])


def test_cpu_target_uses_uint8_activations_and_is_refused_by_the_engine_builder(tmp_path):
    from deploy_sdk.conversion.tensorrt_build import read_graph
    from deploy_sdk.errors import EngineError

    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    out = tmp_path / "toy.int8cpu.onnx"
    quantize_int8(src, out, write_toy_images(tmp_path / "calib", count=3), target="cpu", progress=False)
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    activation_zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")]
    assert weight_dq and all(inits[n.input[0]].dtype == np.int8 and not inits[n.input[2]].any() for n in weight_dq)
    feeds = toy_inputs(batch=1, height=64, width=64, seed=4)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(got[2], ref[2])
    assert np.abs(got[0] - ref[0]).max() < 0.08
    with pytest.raises(EngineError, match="--target tensorrt"):
        read_graph(out)


def test_rpn_prediction_layers_stay_float():
    """The RPN's objectness and box-delta convolutions feed top-k and NMS directly: never quantized by default."""
    from deploy_sdk.conversion.quantize import FLOAT_SCOPES, _quantizable_nodes

    model = make_toy_graph()
    conv = next(n for n in model.graph.node if n.name == "/rpn_head/conv")
    assert "/rpn_head/conv" in _quantizable_nodes(model, [])
    for scope in FLOAT_SCOPES:
        conv.name = scope + "_2/Conv"  # the exporter's name for the level-3 copy of the shared head
        names = _quantizable_nodes(model, [])
        assert conv.name not in names and "/backbone/conv1" in names
    assert FLOAT_SCOPES == ("/rpn_head/cls_logits", "/rpn_head/bbox_pred")
