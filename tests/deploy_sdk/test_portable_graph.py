"""The portable graph (`maskrcnn-deploy inline`, `export --portable`): every custom-domain node replaced by its
model-local function body; the full ONNX checker and strict shape inference pass; metadata identical; ONNX
Runtime's outputs identical to those of the original file (which ONNX Runtime runs by expanding the same body)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from precision_toy_graph import TOY_DOMAIN, make_toy_graph, toy_inputs

from deploy_sdk.cli import main
from deploy_sdk.conversion.graph_passes import (
    check_portable_graph,
    make_portable_graph,
    strip_roi_align_functions,
    write_portable_graph,
)
from deploy_sdk.errors import DeploySdkError, EngineError
from deploy_sdk.portable_graph import STANDARD_DOMAINS, custom_domain_nodes, is_portable, make_portable


def _run(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_portable(original, portable):
    assert not custom_domain_nodes(portable) and not len(portable.functions)
    assert all(n.domain in STANDARD_DOMAINS for n in portable.graph.node)
    assert {o.domain for o in portable.opset_import} == {""}
    # Full checker and strict, type-checking shape inference, independently of the pass's own check.
    onnx.checker.check_model(portable, full_check=True)
    onnx.shape_inference.infer_shapes(portable, check_type=True, strict_mode=True)
    assert [(p.key, p.value) for p in portable.metadata_props] == [(p.key, p.value) for p in original.metadata_props]
    assert [i.name for i in portable.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in portable.graph.output] == [o.name for o in original.graph.output]
    assert portable.producer_name == original.producer_name and portable.ir_version == original.ir_version


def test_toy_graph_inlined_is_standard_checked_and_computes_the_same():
    original = make_toy_graph()
    assert custom_domain_nodes(original) and not is_portable(original)
    portable = make_portable_graph(original)
    _assert_portable(original, portable)
    assert is_portable(portable)
    # The function body's five nodes replace the one custom node.
    assert len(portable.graph.node) == len(original.graph.node) - 1 + len(original.functions[0].node)
    for batch, h, w in ((1, 64, 96), (3, 96, 64)):
        feeds = toy_inputs(batch, h, w, seed=batch)
        a, b = _run(original, feeds), _run(portable, feeds)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The input is left alone.
    assert custom_domain_nodes(original)


def test_portable_graph_is_made_once():
    portable = make_portable(make_toy_graph())
    again = make_portable(portable)
    assert again.SerializeToString() == portable.SerializeToString()


def test_custom_node_without_a_function_cannot_be_made_portable():
    model = make_toy_graph()
    del model.functions[:]
    with pytest.raises(
        EngineError,
        match=r"/roi_heads/box_roi_pool.*maskrcnn_deploy::MultiLevelRoIAlign.*no ONNX "
        r"function body",
    ):
        make_portable(model)
    with pytest.raises(EngineError, match="not portable"):
        check_portable_graph(model)


def test_function_written_for_another_opset_is_converted():
    """A local function imported at opset 16 in a graph of opset 17: the inliner converts the body's version."""
    model = make_toy_graph()
    fn = model.functions[0]
    del fn.opset_import[:]
    fn.opset_import.append(helper.make_opsetid("", 16))
    portable = make_portable_graph(model)
    _assert_portable(model, portable)
    feeds = toy_inputs(2)
    np.testing.assert_array_equal(_run(model, feeds)["scores"], _run(portable, feeds)["scores"])


def test_strip_pass_refuses_a_portable_graph_with_a_hint():
    with pytest.raises(EngineError, match="portable"):
        strip_roi_align_functions(make_portable(make_toy_graph()))


def test_portable_check_catches_a_broken_graph():
    portable = make_portable(make_toy_graph())
    portable.graph.node[0].input[0] = "no_such_tensor"
    with pytest.raises(EngineError, match="fails the ONNX checks"):
        check_portable_graph(portable)


def test_cli_inline_writes_the_portable_file_and_keeps_inputs(tmp_path, capsys):
    src = tmp_path / "toy.onnx"
    onnx.save(make_toy_graph(), str(src))
    before = src.read_bytes()
    out = tmp_path / "toy.portable.onnx"
    assert main(["inline", str(src), "-o", str(out)]) == 0
    assert "1 custom-domain node(s) replaced" in capsys.readouterr().out
    assert src.read_bytes() == before
    written = onnx.load(str(out))
    _assert_portable(onnx.load(str(src)), written)
    # Its own output is refused as its input: one line, non-zero, the file untouched.
    assert main(["inline", str(src), "-o", str(src)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the input file" in err[0]
    assert src.read_bytes() == before
    # A file that is not a model: one line, no output left behind.
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["inline", str(bad), "-o", str(tmp_path / "x.onnx")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_write_portable_graph_leaves_no_partial_file_on_failure(tmp_path):
    model = make_toy_graph()
    del model.functions[:]
    src = tmp_path / "nofn.onnx"
    onnx.save(model, str(src))
    with pytest.raises(DeploySdkError):
        write_portable_graph(src, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nofn.onnx"]


def test_nodes_in_subgraphs_are_found():
    inner = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], domain="vendor")],
        "body",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=inner, else_branch=inner)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    assert custom_domain_nodes(model) == [("", "vendor", "Foo"), ("", "vendor", "Foo")]


# ------------------------------------------------------------------------------------------- shipped model
@pytest.mark.slow
def test_shipped_model_portable_outputs_identical_on_onnxruntime(tmp_path):
    from fixtures_models import held_out_images, shipped_onnx_path

    from deploy_sdk.preprocessing import prepare_batch

    path = shipped_onnx_path()
    out = tmp_path / "model.portable.onnx"
    assert main(["inline", str(path), "-o", str(out)]) == 0
    original, portable = onnx.load(str(path)), onnx.load(str(out))
    assert [n.op_type for n in original.graph.node if n.domain == TOY_DOMAIN] == ["MultiLevelRoIAlign"] * 2
    _assert_portable(original, portable)
    batch = prepare_batch(
        held_out_images(2), min_size=384, max_size=512, size_divisible=32, fixed=None, dtype=np.float32
    )
    feeds = {"images": batch.images, "image_sizes": batch.image_sizes}
    a, b = _run(original, feeds), _run(portable, feeds)
    assert int(a["num_detections"].sum()) > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.slow
def test_export_portable_writes_the_inlined_graph(tmp_path):
    import torch
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.export import export_onnx

    loaded = load_torchvision_model(build_tiny_maskrcnn(seed=0))
    normal, portable = tmp_path / "tiny.onnx", tmp_path / "tiny.portable.onnx"
    export_onnx(loaded, normal, log=lambda line: None)
    export_onnx(loaded, portable, portable=True, log=lambda line: None)
    a, b = onnx.load(str(normal)), onnx.load(str(portable))
    _assert_portable(a, b)
    g = torch.Generator().manual_seed(3)
    feeds = {
        "images": (torch.rand((2, 3, 160, 192), generator=g) * 255).numpy(),
        "image_sizes": np.array([[160, 192], [128, 150]], np.int64),
    }
    ra, rb = _run(a, feeds), _run(b, feeds)
    for name in ra:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)
