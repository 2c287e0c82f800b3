"""`maskrcnn-deploy bench`: option errors, and a tiny end-to-end run checking the JSON and the PNG plot."""

from __future__ import annotations

import json

import pytest

from deploy_sdk.benchmarks.commands import bench
from deploy_sdk.cli import main
from deploy_sdk.errors import DeploySdkError


def test_parse_batch_sizes():
    assert bench.parse_batch_sizes("1, 2,4,2") == [1, 2, 4]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(DeploySdkError, match="--batch-sizes"):
            bench.parse_batch_sizes(bad)


def test_parse_image_size():
    assert bench.parse_image_size("800x1216") == (800, 1216)
    assert bench.parse_image_size("384X512") == (384, 512)
    for bad in ("800", "800x", "8x1216", "axb"):
        with pytest.raises(DeploySdkError, match="HEIGHTxWIDTH"):
            bench.parse_image_size(bad)
    # The ceiling: sides up to 8192 (an 8192x8192 pool image is 200 MB); 100000x100000 would be OOM-killed.
    assert bench.parse_image_size("8192x8192") == (8192, 8192)
    for bad in ("8193x16", "16x8193", "100000x100000"):
        with pytest.raises(DeploySdkError, match="16..8192"):
            bench.parse_image_size(bad)


def test_pool_size_ceiling():
    bench.check_pool_size(8, (800, 1333))
    bench.check_pool_size(21, (8192, 8192))  # 21 * 192 MiB = 4032 MiB, just under 4 GiB
    with pytest.raises(DeploySdkError, match="would take 4.1 GiB"):
        bench.check_pool_size(22, (8192, 8192))


def test_parse_compare():
    assert bench.parse_compare("torch, torchvision-onnx,int8,sdk-tensorrt-fp16=m.engine") == [
        ("torch-eager", None),
        ("torchvision-onnx", None),
        ("sdk-onnxruntime-int8", None),
        ("sdk-tensorrt-fp16", "m.engine"),
    ]
    assert bench.parse_compare("torchvision-onnx=tv.onnx") == [("torchvision-onnx", "tv.onnx")]
    assert bench.parse_compare("") == []
    with pytest.raises(DeploySdkError, match="unknown system 'tensorflow'"):
        bench.parse_compare("tensorflow")
    with pytest.raises(DeploySdkError, match="listed twice"):
        bench.parse_compare("torch,torch-eager")
    with pytest.raises(DeploySdkError, match="--checkpoint"):
        bench.parse_compare("torch-eager=x.pth")


def test_openvino_systems_are_accepted_and_find_their_files(tmp_path):
    """``--compare`` names of the OpenVINO systems: the SDK's openvino backend on MODEL (fp32) and on its INT8 /
    fp16 siblings, and torchvision's own export compiled by OpenVINO."""
    import argparse

    assert bench.parse_compare("sdk-openvino-fp32, sdk-openvino-int8=q.onnx,torchvision-onnx-openvino") == [
        ("sdk-openvino-fp32", None),
        ("sdk-openvino-int8", "q.onnx"),
        ("torchvision-onnx-openvino", None),
    ]
    assert bench.parse_compare("openvino,openvino-int8,tv-openvino=tv.onnx") == [
        ("sdk-openvino-fp32", None),
        ("sdk-openvino-int8", None),
        ("torchvision-onnx-openvino", "tv.onnx"),
    ]
    with pytest.raises(DeploySdkError, match="listed twice"):
        bench.parse_compare("tv-openvino,torchvision-onnx-openvino")
    model, ckpt = tmp_path / "m.onnx", tmp_path / "c.pth"
    for f in (model, tmp_path / "m.int8.onnx", tmp_path / "m.fp16.onnx", ckpt):
        f.write_bytes(b"")
    args = argparse.Namespace(model=str(model), checkpoint=str(ckpt))
    systems, checkpoint = bench.resolve_compare(
        args,
        bench.parse_compare(
            "sdk-openvino-fp32,sdk-openvino-int8,sdk-openvino-fp16,sdk-openvino-bf16,sdk-openvino-fp32tp,"
            "sdk-openvino-int8tp,torchvision-onnx,torchvision-onnx-openvino"
        ),
    )
    assert checkpoint == str(ckpt)
    assert systems == [
        ("sdk-openvino-fp32", str(model)),
        ("sdk-openvino-int8", str(tmp_path / "m.int8.onnx")),
        ("sdk-openvino-fp16", str(tmp_path / "m.fp16.onnx")),
        ("sdk-openvino-bf16", str(model)),
        ("sdk-openvino-fp32tp", str(model)),
        ("sdk-openvino-int8tp", str(tmp_path / "m.int8.onnx")),
        ("torchvision-onnx", None),
        ("torchvision-onnx-openvino", None),
    ]
    with pytest.raises(DeploySdkError, match="torchvision-onnx-openvino needs the PyTorch weights"):
        bench.resolve_compare(
            argparse.Namespace(model=str(model), checkpoint=None), [("torchvision-onnx-openvino", None)]
        )
    assert "sdk-openvino-fp32" in bench.BASELINES and "torchvision-onnx-openvino[=FILE]" in bench.BASELINES
    # the backend options each openvino variant runs with
    assert bench._openvino_variant("sdk-openvino-fp32", "fp32") == ("fp32", None)
    assert bench._openvino_variant("sdk-openvino-bf16", "bf16") == ("bf16", {"inference_precision": "bf16"})
    assert bench._openvino_variant("sdk-openvino-int8tp", "int8tp") == ("int8", {"performance_hint": "throughput"})
    assert bench._openvino_variant("sdk-openvino-fp32st", "fp32st") == ("fp32", {"static_shapes": 4})
    assert bench._openvino_variant("sdk-openvino-int8tpst", "int8tpst") == (
        "int8",
        {"performance_hint": "throughput", "static_shapes": 4},
    )
    with pytest.raises(DeploySdkError, match="sdk-openvino-fp32tp"):
        bench._openvino_variant("sdk-openvino-fast", "fast")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.onnx"], "model file not found: missing.onnx"),
        (["missing.pth"], "model file not found: missing.pth"),
        (["{model}", "--batch-sizes", "0"], "--batch-sizes"),
        (["{model}", "--image-size", "big"], "--image-size"),
        (["{model}", "--compare", "tensorflow"], "unknown system"),
        (["{model}", "--iters", "0"], "--iters must be >= 1"),
        (["{model}", "--compare", "torch"], "needs the PyTorch weights: pass --checkpoint"),
        (["{model}", "--compare", "int8"], "not found: {stem}.int8.onnx"),
        (["{model}", "--compare", "sdk-tensorrt-fp16"], "needs a model file: write sdk-tensorrt-fp16=FILE"),
        (["{model}", "--checkpoint", "nope.pth"], "checkpoint not found: nope.pth"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Every one of these is reported before the model is opened, so an empty file stands in for the model.
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    args = [a.format(model=model) for a in argv]
    code = main(["bench"] + args)
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("maskrcnn-deploy bench: error:"), err
    assert message.format(stem=str(tmp_path / "m")) in last
    assert "Traceback" not in err


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_json_and_png(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from tiny_maskrcnn import build_tiny_maskrcnn

    from deploy_sdk.conversion.checkpoint import load_torchvision_model
    from deploy_sdk.conversion.export import export_onnx

    model = build_tiny_maskrcnn(seed=0, num_classes=3, width=16)
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(load_torchvision_model(model), onnx_path, log=lambda *_: None)
    out_json, out_png = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    code = main(
        [
            "bench",
            str(onnx_path),
            "--checkpoint",
            str(ckpt),
            "--compare",
            "torch",
            "--batch-sizes",
            "1,2",
            "--warmup",
            "0",
            "--iters",
            "2",
            "--num-images",
            "3",
            "--image-size",
            "128x160",
            "--threads",
            "2",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "maskrcnn-deploy-bench/1"
    for key in ("cpu_model", "logical_cores", "gpus", "versions"):
        assert key in doc["machine"]
    assert doc["settings"]["batch_sizes"] == [1, 2] and doc["settings"]["threads"] == 2
    assert [(r["system"], r["batch_size"]) for r in doc["results"]] == [
        ("sdk-onnxruntime-fp32", 1),
        ("torch-eager", 1),
        ("sdk-onnxruntime-fp32", 2),
        ("torch-eager", 2),
    ]
    for r in doc["results"]:
        assert r["iterations"] == 2 and len(r["samples_ms"]) == 2
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput_ips"] == pytest.approx(1000 * r["batch_size"] / r["mean_ms"])
        assert set(r["stages"]) == {"preprocess", "inference", "postprocess"}
        # The SDK's stages come from the Predictor and cover most of the call (the rest is image validation).
        staged = sum(s["mean_ms"] for s in r["stages"].values())
        assert 0.5 * r["mean_ms"] <= staged <= r["mean_ms"] * 1.001
        assert r["image_sizes"] == [[128, 160]]
        assert r["peak_rss_mb"] > 0
    # Random weights: both systems fill the model's per-image cap of 100 detections, the same work for both.
    assert {r["detections_per_image"] for r in doc["results"]} == {100.0}
    assert [(c["system"], c["baseline"], c["batch_size"]) for c in doc["comparisons"]] == [
        ("sdk-onnxruntime-fp32", "torch-eager", 1),
        ("sdk-onnxruntime-fp32", "torch-eager", 2),
    ]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sdk-onnxruntime-fp32 | cpu | 1 |" in captured.out
    # The document conforms to docs/schemas/bench.schema.json; memory is per system; noisy figures are warned.
    from schema_check import schema_errors

    assert schema_errors(doc, "bench.schema.json") == []
    for r in doc["results"]:
        assert r["rsd"] == pytest.approx(r["std_ms"] / r["mean_ms"])
        assert r["memory_mb"] is None or r["memory_mb"] >= r["run_peak_mb"] >= 0
        warned = f"warning: {r['system']} at batch {r['batch_size']}: the latency varies" in captured.err
        assert warned == (r["rsd"] > 0.2), (r["rsd"], captured.err)
    assert not list((tmp_path / "out").glob("*.partial"))
