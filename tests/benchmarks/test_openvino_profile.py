"""The OpenVINO profile script: its sums against hand-worked records, and one run on the toy deployment graph."""

from __future__ import annotations

import json

import pytest
from toy_deployment_graph import write_toy_graph

from deploy_sdk.benchmarks.openvino_profile import group_of, main, profile, summarize

REASON = "the profile needs the 'openvino' package (pip install 'maskrcnn-deploy[openvino]')"


def test_summarize_averages_per_type_node_and_group_by_hand():
    runs = [
        [
            ("conv1", "Convolution", "brgconv", 10.0),
            ("conv2", "Convolution", "brgconv", 6.0),
            ("fc6", "FullyConnected", "brgemm", 4.0),
            ("pool", "ROIAlign", "jit", 3.0),
            ("cat", "Concat", "ref", 1.0),
            ("const", "Constant", "unknown", 0.0),  # did not execute: left out
        ],
        [
            ("conv1", "Convolution", "brgconv", 12.0),
            ("conv2", "Convolution", "brgconv", 8.0),
            ("fc6", "FullyConnected", "brgemm", 6.0),
            ("pool", "ROIAlign", "jit", 5.0),
            ("cat", "Concat", "ref", 3.0),
            ("const", "Constant", "unknown", 0.0),
        ],
    ]
    out = summarize(runs)
    # Means over the two runs: conv1 11, conv2 7, fc6 5, pool 4, cat 2.
    assert out["by_type"] == [
        ["Convolution", "brgconv", 18.0],
        ["FullyConnected", "brgemm", 5.0],
        ["ROIAlign", "jit", 4.0],
        ["Concat", "ref", 2.0],
    ]
    assert [row[0] for row in out["by_node"]] == ["conv1", "conv2", "fc6", "pool", "cat"]
    assert out["by_node"][0][3] == 11.0
    assert out["groups"] == {"oneDNN": 23.0, "RoIAlign": 4.0, "other": 2.0}
    assert out["total_ms"] == 29.0
    with pytest.raises(ValueError, match="no profiled runs"):
        summarize([])


def test_groups():
    assert group_of("ConvolutionBackpropData") == "oneDNN"
    assert group_of("ROIAlign") == "RoIAlign"
    assert group_of("Reorder") == "other"


def test_profile_of_the_toy_graph(tmp_path, capsys):
    pytest.importorskip("openvino", reason=REASON)
    pytest.importorskip("onnx", reason=REASON)
    model = write_toy_graph(tmp_path / "toy.onnx")
    result = profile(str(model), batch_size=2, image_size=(64, 96), iters=2, warmup=1)
    # The toy model resizes to min_size 64 (max 128) on a canvas of multiples of 32: 64x96 stays 64x96.
    assert result["input_shape"] == [2, 3, 64, 96]
    assert set(result["compile_s"]) == set(result["wall_ms"]) == {"dynamic", "static"}
    assert all(v > 0 for v in result["compile_s"].values()) and all(v > 0 for v in result["wall_ms"].values())
    # The toy graph's ReduceMax node ("peak": is there any non-zero pixel) runs as itself in OpenVINO.
    assert any(name == "peak" and node_type == "ReduceMax" for name, node_type, _, _ in result["by_node"])
    assert result["total_ms"] == pytest.approx(sum(row[2] for row in result["by_type"]))
    assert result["total_ms"] == pytest.approx(sum(result["groups"].values()))

    out_json = tmp_path / "profile.json"
    assert (
        main([str(model), "--batch-size", "1", "--image-size", "64x96", "--iters", "1", "--json", str(out_json)]) == 0
    )
    printed = capsys.readouterr().out
    assert "compile: dynamic" in printed and "| node type | kernel | ms |" in printed
    assert json.loads(out_json.read_text())["input_shape"] == [1, 3, 64, 96]
