"""Checkpoint loading never runs code from the file unless trusted, and refuses NaN/Inf weights.

The malicious files here carry a payload that creates a marker file when unpickled. Each refusal is checked by
the marker's absence, and the payload itself is then proven live by unpickling the same file with plain
``torch.load(weights_only=False)``, which does create the marker: so an absent marker means "not run", not "the
payload was broken".
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pytest
import torch
import torch.fx.graph_module
from PIL import Image
from safetensors.torch import save_file
from tiny_maskrcnn import build_tiny_maskrcnn

from deploy_sdk.cli import main
from deploy_sdk.conversion.checkpoint import load_checkpoint
from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments, load_checkpoint_from_args
from deploy_sdk.errors import CheckpointError
from deploy_sdk.predictor import Predictor

TRUST_WARNING = "runs any code the file contains"
CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"


class ExecPayload:
    """Unpickles as ``exec(source)``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


class FxExecPayload:
    """Unpickles as ``torch.fx.graph_module._exec_with_source(source, {})``: a function under ``torch``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return torch.fx.graph_module._exec_with_source, (self.source, {})


def _touch_source(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


@pytest.fixture(scope="module")
def tiny():
    """A small ResNet-18 FPN Mask R-CNN (7 classes) and its state dict."""
    model = build_tiny_maskrcnn(seed=0)
    return model, model.state_dict()


def _write_malicious(path, marker, payload, state_dict, zip_format=True):
    torch.save(
        {"model": state_dict, "x": payload(_touch_source(marker))}, path, _use_new_zipfile_serialization=zip_format
    )


def _assert_payload_is_live(path, marker):
    """The same file, unpickled without the safe loader, does run its payload (so the test above meant it)."""
    assert not marker.exists()
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists(), "the payload did not run even when unpickled unsafely; the test proves nothing"


# ----------------------------------------------------------------------------------------------- (a) library


@pytest.mark.parametrize(
    "payload,zip_format,named",
    [
        (ExecPayload, True, "builtins.exec"),
        (FxExecPayload, True, "torch.fx.graph_module._exec_with_source"),
        (ExecPayload, False, "exec"),  # torch's legacy (non-zip) format
    ],
    ids=["exec", "fx_exec_with_source", "exec_legacy_format"],
)
def test_malicious_pickle_is_refused_and_not_run(tmp_path, tiny, payload, zip_format, named):
    _, sd = tiny
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _write_malicious(path, marker, payload, sd, zip_format)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "--trust-checkpoint" in msg and "torch.save(model.state_dict(), path)" in msg and "safetensors" in msg
    assert named in msg and "refusing to unpickle" in msg
    assert "\n" not in msg
    _assert_payload_is_live(path, marker)


# ----------------------------------------------------------------------------------------------- (b) CLI


def _run_cli_error(capsys, argv) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 1, f"exit code {rc}; stderr: {err}"
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert err.startswith(f"maskrcnn-deploy {argv[0]}: error: ")
    return err


def _image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("payload", [ExecPayload, FxExecPayload], ids=["exec", "fx_exec_with_source"])
def test_cli_export_and_infer_refuse_malicious_checkpoint(tmp_path, capsys, tiny, payload):
    _, sd = tiny
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _write_malicious(path, marker, payload, sd)

    err = _run_cli_error(capsys, ["export", str(path), "-o", str(tmp_path / "out.onnx")])
    assert "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()

    err = _run_cli_error(capsys, ["infer", str(path), str(_image(tmp_path)), "--out", str(tmp_path / "inferred")])
    assert "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "inferred").exists()
    _assert_payload_is_live(path, marker)


@pytest.mark.parametrize("command", ["export", "check", "eval", "infer", "bench", "demo"])
def test_trust_flag_is_offered_with_its_risk(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "--trust-checkpoint" in text
    assert "Unpickling runs arbitrary code from the file: use this only for files you trust" in text


# ----------------------------------------------------------------------------------------------- (c) whole module


@pytest.fixture(scope="module")
def module_file(tiny, tmp_path_factory):
    model, _ = tiny
    path = tmp_path_factory.mktemp("module") / "whole_model.pt"
    torch.save(model, path)
    return path


def test_whole_pickled_module_needs_trust(tiny, module_file):
    model, sd = tiny
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(module_file)
    msg = str(info.value)
    assert "--trust-checkpoint" in msg and "torch.save(model.state_dict(), path)" in msg
    assert "torchvision.models.detection.mask_rcnn.MaskRCNN" in msg  # named from the pickle, without running it

    with pytest.warns(UserWarning, match=TRUST_WARNING):
        lm = load_checkpoint(module_file, trust_checkpoint=True)
    assert lm.form == "pickled module" and lm.arch == "resnet18_fpn" and lm.num_classes == 7
    loaded = lm.model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k


def test_trust_flag_reaches_the_loader_through_options_and_predictor(tmp_path, capsys, module_file):
    # export / check / eval: add_checkpoint_arguments + load_checkpoint_from_args
    parser = argparse.ArgumentParser()
    add_checkpoint_arguments(parser)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint_from_args(module_file, parser.parse_args([]))
    with pytest.warns(UserWarning, match=TRUST_WARNING):
        assert load_checkpoint_from_args(module_file, parser.parse_args(["--trust-checkpoint"])).num_classes == 7

    # Predictor -> torch backend
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        Predictor(module_file)
    with pytest.warns(UserWarning, match=TRUST_WARNING):
        predictor = Predictor(module_file, trust_checkpoint=True)
    assert predictor.backend_name == "torch" and len(predictor.metadata.class_names) == 7
    predictor.close()

    # infer, end to end
    out = tmp_path / "inferred"
    image = _image(tmp_path)
    err = _run_cli_error(capsys, ["infer", str(module_file), str(image), "--out", str(out)])
    assert "--trust-checkpoint" in err and not out.exists()
    with pytest.warns(UserWarning, match=TRUST_WARNING):
        rc = main(["infer", str(module_file), str(image), "--out", str(out), "--trust-checkpoint", "--no-overlays"])
    assert rc == 0 and (out / "results.json").is_file()


# ----------------------------------------------------------------------------------------------- non-finite weights


def _poisoned(sd):
    """A copy of ``sd`` with 3 NaN in the class logits' weight (hand-counted: row 0, columns 0-2)."""
    sd = {k: v.clone() for k, v in sd.items()}
    sd[CLS_SCORE][0, :3] = float("nan")
    return sd


def test_nan_in_state_dict_is_refused(tmp_path, tiny):
    _, sd = tiny
    path = tmp_path / "checkpoint.pth"
    torch.save(_poisoned(sd), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: 3 non-finite values (NaN/Inf) in '{CLS_SCORE}'; the weights are corrupt or training diverged"
    )

    # nested in a training checkpoint, and a second offender (+Inf and -Inf): 3 + 2 values in 2 tensors
    bad = _poisoned(sd)
    bad["rpn.head.cls_logits.bias"][1] = math.inf
    bad["rpn.head.cls_logits.bias"][2] = -math.inf
    torch.save({"epoch": 3, "state_dict": bad}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: 5 non-finite values (NaN/Inf) in 2 tensors: ")
    assert f"'{CLS_SCORE}' (3)" in msg and "'rpn.head.cls_logits.bias' (2)" in msg


def test_inf_in_fp16_safetensors_is_refused(tmp_path, tiny):
    _, sd = tiny
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    half["roi_heads.mask_predictor.mask_fcn_logits.bias"][0] = math.inf
    half["roi_heads.mask_predictor.mask_fcn_logits.bias"][4] = math.nan
    path = tmp_path / "model.safetensors"
    save_file(half, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: 2 non-finite values \(NaN/Inf\) in "
        r"'roi_heads\.mask_predictor\.mask_fcn_logits\.bias'; the weights are corrupt",
    ):
        load_checkpoint(path)

    # The same file without the bad values loads: large but finite values are fine.
    half["roi_heads.mask_predictor.mask_fcn_logits.bias"][0] = 65504.0  # fp16 max
    half["roi_heads.mask_predictor.mask_fcn_logits.bias"][4] = 0.0
    save_file(half, str(path))
    assert load_checkpoint(path).num_classes == 7


def test_nan_in_trusted_module_is_refused(tmp_path):
    model = build_tiny_maskrcnn(seed=1)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[0, :3] = float("nan")
    path = tmp_path / "module.pt"
    torch.save(model, path)
    with (
        pytest.warns(UserWarning, match=TRUST_WARNING),
        pytest.raises(CheckpointError, match=rf"3 non-finite values \(NaN/Inf\) in '{CLS_SCORE}'"),
    ):
        load_checkpoint(path, trust_checkpoint=True)


def test_cli_export_refuses_nan_weights(tmp_path, capsys, tiny):
    _, sd = tiny
    path = tmp_path / "checkpoint.pth"
    torch.save(_poisoned(sd), path)
    out = tmp_path / "model.onnx"
    err = _run_cli_error(capsys, ["export", str(path), "-o", str(out)])
    assert f"3 non-finite values (NaN/Inf) in '{CLS_SCORE}'" in err
    assert not out.exists()
    assert not list(tmp_path.glob("model.onnx*")), "no partial export may be left behind"


def test_torchvision_reference_training_checkpoint_loads_safely(tmp_path, tiny):
    """torchvision's references/detection/train.py saves model, optimizer, scheduler, epoch and its argparse
    Namespace: that is data, and loads without --trust-checkpoint and without the warning."""
    model, sd = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[16, 22], gamma=0.1)
    args = argparse.Namespace(lr=0.02, epochs=26, data_path="/data/coco", lr_steps=[16, 22], weights=None)
    path = tmp_path / "model_25.pth"
    torch.save(
        {"model": sd, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(), "args": args, "epoch": 25},
        path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trust warning would fail the test
        lm = load_checkpoint(path)
    assert lm.form == "state dict" and lm.num_classes == 7
    for k, v in sd.items():
        assert torch.equal(lm.model.state_dict()[k], v), k
