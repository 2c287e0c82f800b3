"""`maskrcnn-deploy convert`: the whole pipeline in one command, run for real on the shipped model.

The files it writes are checked against what the single commands and the references say about them: the fp32
graph against torchvision's model, the precisions from the files themselves (onnx), the table's sizes against
the file system, its AP against `maskrcnn-deploy eval` of the same file.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
from compare import PRINTED_ONE_DECIMAL
from fixtures_models import held_out_images, parity_failures

from deploy_sdk.cli import main


def _table(stdout: str) -> dict:
    """The summary table's rows by file name: {name: {column: text}} (columns split on 2+ spaces)."""
    lines = stdout.split("\nsummary:\n", 1)[1].splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < len(header):
            continue  # a note below the table
        rows[cells[0].rsplit("/", 1)[-1]] = dict(zip(header, cells))
    return rows


def test_convert_writes_every_file_and_a_true_summary(shipped_conversion):
    run = shipped_conversion
    assert run.rc == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = _table(run.stdout)
    engine = "model.engine" if run.has_tensorrt else "engine"
    assert set(rows) == {run.checkpoint.name, "model.onnx", "model.fp16.onnx", "model.int8.onnx", engine}, rows
    if not run.has_tensorrt:  # --to all: the engine where TensorRT is, a note where it is not
        assert rows["engine"]["parity (worst over the images)"].startswith("skipped: TensorRT is not installed")
        assert not run.file(".engine").exists()
    for suffix, precision in ((".onnx", "fp32"), (".fp16.onnx", "fp16"), (".int8.onnx", "int8 (tensorrt)")):
        path = run.file(suffix)
        row = rows[path.name]
        assert row["precision"] == precision
        # sizes as the file system has them
        assert row["size"] == f"{path.stat().st_size / 2**20:.1f} MiB"
        assert re.match(r"\d+/\d+ matched", row["parity (worst over the images)"].removeprefix("ok: "))
    assert rows["model.onnx"]["parity (worst over the images)"].startswith("ok: ")
    assert rows["model.onnx"]["vs"] == "checkpoint"
    assert rows["model.fp16.onnx"]["vs"] == rows["model.int8.onnx"]["vs"] == "model.onnx"
    # progress: numbered stages, the parity lines per image
    stages = 7 if run.has_tensorrt else 6
    assert f"[1/{stages}] loading" in run.stdout and f"[{stages}/{stages}] COCO AP" in run.stdout
    assert "[ok] " in run.stdout


def test_converted_files_are_what_they_say(shipped_conversion, shipped_loaded):
    """The fp32 graph agrees with torchvision's model (not with our own code); the reduced graphs are reduced."""
    import onnx

    from deploy_sdk import Predictor
    from deploy_sdk.conversion.reference import PerImageReferencePredictor

    run = shipped_conversion
    images = held_out_images(2, seed=4242)
    reference = PerImageReferencePredictor(shipped_loaded).predict(images)
    with Predictor(str(run.file(".onnx")), batch_size=1) as predictor:
        got = predictor.predict(images)
    assert not parity_failures(reference, got)

    fp16 = onnx.load(str(run.file(".fp16.onnx")), load_external_data=False)
    fp16_weights = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert fp16_weights > 50
    assert json.loads({p.key: p.value for p in fp16.metadata_props}["maskrcnn_deploy.precision"]) == "fp16"
    int8 = onnx.load(str(run.file(".int8.onnx")), load_external_data=False)
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 40
    assert json.loads({p.key: p.value for p in int8.metadata_props}["maskrcnn_deploy.precision"]) == "int8"


def test_convert_ap_column_is_what_eval_measures(shipped_conversion):
    run = shipped_conversion
    rows = _table(run.stdout)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                "eval",
                str(run.file(".int8.onnx")),
                "--images",
                str(run.data / "images"),
                "--annotations",
                str(run.data / "annotations.json"),
                "--quiet",
                "--batch-size",
                "1",
            ]
        )
    assert rc == 0
    ap = re.search(r"^AP\s+([\d.]+)\s+([\d.]+)", out.getvalue(), re.M)
    assert rows["model.int8.onnx"]["box AP"] == ap.group(1)
    assert rows["model.int8.onnx"]["mask AP"] == ap.group(2)
    # the fp32 graph matches torchvision detection for detection, so its AP is torchvision's
    assert rows["model.onnx"]["box AP"] == rows[run.checkpoint.name]["box AP"]
    assert rows["model.onnx"]["mask AP"] == rows[run.checkpoint.name]["mask AP"]


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--to", "int8"], "--to int8 needs calibration images: add --calib DIR"),
        (["--to", "onnx,tflite"], "--to 'tflite' is not one of onnx, fp16, int8, engine, all"),
        (["--opset", "11"], "--opset 11 is not supported; use 16..20"),
        (["--height", "100", "--width", "128"], "both must be positive multiples of 32"),
        (["--max-detections", "0"], "--max-detections must be at least 1, got 0"),
        (["--annotations", "a.json"], "--annotations needs --images DIR"),
        (["--to", "int8", "--calib", "nowhere"], "--calib nowhere is not a folder of images"),
        (["--to", "engine", "--engine-from", "int8"], "--engine-from int8 needs calibration images"),
    ],
)
def test_convert_refuses_bad_options_before_loading(capsys, monkeypatch, tmp_path, extra, expected):
    """Cheap refusals come first: the checkpoint loader is never reached (it would fail the test)."""
    import deploy_sdk.conversion.checkpoint_options as options

    def no_load(*_a, **_k):
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(options, "load_checkpoint_from_args", no_load)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"\x80")  # never read
    rc = main(["convert", str(ckpt), "-o", str(tmp_path / "out")] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("maskrcnn-deploy convert: error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_convert_to_engine_without_tensorrt_says_what_is_needed(capsys, monkeypatch, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this tests the machine without it")
    except ImportError:
        pass
    import deploy_sdk.conversion.checkpoint_options as options

    monkeypatch.setattr(options, "load_checkpoint_from_args", lambda *a, **k: pytest.fail("loaded"))
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"\x80")
    rc = main(["convert", str(ckpt), "--to", "engine", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "needs TensorRT and an NVIDIA GPU" in err and "pip install tensorrt" in err, err


def test_parse_targets():
    from deploy_sdk.conversion.commands.convert import parse_targets

    assert parse_targets(None, False) == (["onnx"], False)
    assert parse_targets(["fp16"], False) == (["onnx", "fp16"], False)  # the fp32 graph is always made
    assert parse_targets(["all"], True) == (["onnx", "fp16", "int8", "engine"], True)
    assert parse_targets(["all"], False) == (["onnx", "fp16", "engine"], True)
    assert parse_targets(["all", "engine"], True) == (["onnx", "fp16", "int8", "engine"], False)
    assert parse_targets(["engine,int8", "onnx"], True) == (["onnx", "int8", "engine"], False)


@pytest.mark.needs_tensorrt
def test_convert_to_engine_builds_checks_and_describes_it(tmp_path, shipped_model_file):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                "convert",
                str(shipped_model_file),
                "--to",
                "engine",
                "--engine-from",
                "fp16",
                "-o",
                str(tmp_path),
                "--name",
                "m",
                "--check-images",
                "2",
                "--max-shape",
                "512x512",
            ]
        )
    assert rc == 0, out.getvalue()[-3000:]
    rows = _table(out.getvalue())
    assert rows["m.engine"]["precision"] == "fp16" and rows["m.engine"]["vs"] == "m.fp16.onnx"
    assert rows["m.engine"]["parity (worst over the images)"].startswith("ok: ")
    assert PRINTED_ONE_DECIMAL.allclose(
        float(rows["m.engine"]["size"].split()[0]), (tmp_path / "m.engine").stat().st_size / 2**20
    )
