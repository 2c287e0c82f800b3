"""Bad input to the CLI: each is one clear line on stderr and exit code 1, never a traceback.

The commands run in-process through `deploy_sdk.cli.main`, as `maskrcnn-deploy` would run them.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_checks import one_line_error
from repo_paths import REPO_ROOT
from safetensors.torch import save_file
from torchvision.models import mobilenet_v3_small
from torchvision.models.detection import FasterRCNN, KeypointRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn
from deploy_sdk.synthetic_shapes import write_dataset


class NotTorchvision:
    """A class outside torch/torchvision: a pickle naming it must not be executed by the loader."""

    def __init__(self):
        self.payload = 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    write_dataset(out, num=2, seed=5, min_size=64, max_size=80)
    return out


@pytest.fixture(scope="module")
def narrow_state(tmp_path_factory):
    """A small 4-class Mask R-CNN state dict (ResNet-18 FPN with narrow heads) and its file."""
    cfg = ArchConfig(
        "resnet18_fpn", 4, fpn_channels=32, box_head_dim=64, mask_head_dims=(32, 32), mask_predictor_dim=32
    )
    sd = build_resnet_fpn_maskrcnn(cfg).state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "narrow.pth"
    torch.save(sd, path)
    return sd, path


def _eval(capsys, dataset, model, *extra) -> str:
    argv = ["eval", str(model), "--images", str(dataset / "images"), "--annotations", str(dataset / "annotations.json")]
    return one_line_error(capsys, argv + list(extra))


def test_missing_file(capsys, dataset, tmp_path):
    err = _eval(capsys, dataset, tmp_path / "nope.pth")
    assert "not found" in err and "nope.pth" in err


@pytest.mark.parametrize(
    "name,content",
    [
        ("text.pth", b"this is not a checkpoint\n"),
        ("random.pt", bytes(range(256)) * 64),
        ("config.safetensors", b'{"a": 1}'),
        ("empty.pth", b""),
    ],
)
def test_not_a_checkpoint(capsys, dataset, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    err = _eval(capsys, dataset, path)
    assert name in err
    assert "not a PyTorch checkpoint" in err or "not a valid safetensors" in err


def test_truncated_safetensors(capsys, dataset, narrow_state, tmp_path):
    sd, _ = narrow_state
    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _eval(capsys, dataset, path)
    assert "cut.safetensors" in err


def test_state_dict_of_other_objects(capsys, dataset, tmp_path):
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "hparams.pth")
    assert "holds no tensors" in _eval(capsys, dataset, tmp_path / "hparams.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    assert "not a state dict" in _eval(capsys, dataset, tmp_path / "tensor.pth")
    torch.save(mobilenet_v3_small(num_classes=3).state_dict(), tmp_path / "cls.pth")
    assert "image classifier" in _eval(capsys, dataset, tmp_path / "cls.pth")


def test_untrusted_pickle_is_not_executed(capsys, dataset, tmp_path):
    torch.save({"model": NotTorchvision()}, tmp_path / "foreign.pt")
    err = _eval(capsys, dataset, tmp_path / "foreign.pt")
    assert "refusing to unpickle" in err and "NotTorchvision" in err


def _small_fpn(returned_layers=None, extra_blocks=None):
    return resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=returned_layers,
        extra_blocks=extra_blocks,
    )


@pytest.mark.parametrize(
    "family,build,expected",
    [
        ("faster", lambda: FasterRCNN(_small_fpn(), num_classes=3), "Faster R-CNN"),
        ("keypoint", lambda: KeypointRCNN(_small_fpn(), num_classes=2, num_keypoints=3), "Keypoint R-CNN"),
        (
            "retinanet",
            lambda: RetinaNet(_small_fpn([2, 3, 4], LastLevelP6P7(256, 256)), num_classes=3),
            "RetinaNet",
        ),
    ],
)
def test_other_detection_families(capsys, dataset, tmp_path, family, build, expected):
    model = build()
    torch.save(model.state_dict(), tmp_path / f"{family}.pth")
    err = _eval(capsys, dataset, tmp_path / f"{family}.pth")
    assert expected in err and "not a Mask R-CNN" in err
    if family == "faster":  # the whole pickled module is recognized too
        torch.save(model, tmp_path / "faster_module.pt")
        assert expected in _eval(capsys, dataset, tmp_path / "faster_module.pt")


def test_class_count_mismatch(capsys, dataset, narrow_state):
    _, path = narrow_state
    err = _eval(capsys, dataset, path, "--num-classes", "81")
    assert "checkpoint has 4 classes in roi_heads.box_predictor but num_classes=81 was given" in err


def test_key_mismatch_and_wrong_arch(capsys, dataset, narrow_state, tmp_path):
    sd, path = narrow_state
    broken = dict(sd)
    broken.pop("roi_heads.box_head.fc6.bias")
    broken["roi_heads.box_head.fc7.weight"] = torch.zeros(64, 65)
    torch.save(broken, tmp_path / "broken.pth")
    err = _eval(capsys, dataset, tmp_path / "broken.pth")
    assert "resnet18_fpn (detected from the checkpoint's keys)" in err
    assert "1 missing: roi_heads.box_head.fc6.bias" in err
    assert "roi_heads.box_head.fc7.weight (checkpoint [64, 65], model [64, 64])" in err

    err = _eval(capsys, dataset, path, "--arch", "resnet50_fpn")
    assert "does not fit architecture resnet50_fpn (given by arch=)" in err
    assert "unknown architecture 'vgg16'" in _eval(capsys, dataset, path, "--arch", "vgg16")


def test_bad_class_names_file(capsys, dataset, narrow_state, tmp_path):
    _, path = narrow_state
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["a", "b"]))
    assert "lists 2 names but the model has 4 classes" in _eval(capsys, dataset, path, "--class-names", str(names))
    assert "class names file not found" in _eval(capsys, dataset, path, "--class-names", str(tmp_path / "x.json"))


def test_eval_bad_data_paths(capsys, dataset, narrow_state, tmp_path):
    _, path = narrow_state
    err = one_line_error(
        capsys, ["eval", str(path), "--images", str(tmp_path), "--annotations", str(tmp_path / "a.json")]
    )
    assert "annotation file not found" in err
    err = one_line_error(
        capsys,
        ["eval", str(path), "--images", str(tmp_path / "none"), "--annotations", str(dataset / "annotations.json")],
    )
    assert "image directory not found" in err


def test_data_command_bad_input(capsys, tmp_path):
    assert "--num must be at least 1" in one_line_error(
        capsys, ["data", "shapes", "--out", str(tmp_path / "d"), "--num", "0"]
    )
    err = one_line_error(
        capsys, ["data", "shapes", "--out", str(tmp_path / "d"), "--num", "1", "--min-size", "300", "--max-size", "200"]
    )
    assert "--min-size" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    err = one_line_error(capsys, ["data", "shapes", "--out", str(tmp_path / "full"), "--num", "1", "--overwrite"])
    assert "not a data set of this tool" in err
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------ what a new user passes by mistake


def test_url_is_refused_as_typed(capsys):
    """A URL is named as the user typed it (Path would make it https:/...), with how to download it."""
    err = one_line_error(capsys, ["export", "https://example.com/models/r50.pth", "-o", "m.onnx"])
    assert "https://example.com/models/r50.pth is a URL" in err and "https:/e" not in err
    assert "curl -L -o r50.pth" in err
    err = one_line_error(capsys, ["infer", "s3://bucket/model.onnx", "x.png", "--out", "o"])
    assert "s3://bucket/model.onnx is a URL" in err
    err = one_line_error(capsys, ["infer", "m.onnx", "--out=https://host/dir"])
    assert "https://host/dir is a URL" in err


def test_network_addresses_are_not_taken_for_urls():
    from deploy_sdk.cli import _refuse_urls

    _refuse_urls(["m.onnx", "--address", "ray://head:10001", "--address=ray://head:10001"])  # no error
    with pytest.raises(Exception, match="ray://head:10001 is a URL"):
        _refuse_urls(["ray://head:10001", "--address", "auto"])


def test_files_that_are_not_checkpoints_say_what_they_are(capsys, tmp_path, narrow_state):
    sd, path = narrow_state
    out = str(tmp_path / "m.onnx")
    (tmp_path / "notes.pth").write_text("epoch 3: loss 0.2\nepoch 4: loss 0.1\n")
    err = one_line_error(capsys, ["export", str(tmp_path / "notes.pth"), "-o", out])
    assert "is a text file (it starts with 'epoch 3: loss 0.2')" in err and "(101)" not in err
    # an ONNX file, by its bytes, whatever its name
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(tmp_path / "exported.pth"))
    err = one_line_error(capsys, ["export", str(tmp_path / "exported.pth"), "-o", out])
    assert "is an ONNX file, not a checkpoint: use it with infer, eval, check or inspect" in err
    assert "weights_only" not in err
    # a .pth cut off mid-download: says so, whole sentences
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    err = one_line_error(capsys, ["export", str(tmp_path / "cut.pth"), "-o", out])
    assert "is an incomplete PyTorch checkpoint" in err and err.endswith("fetch the file again")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--max-detections", "0"], "--max-detections must be at least 1, got 0"),
        (["--opset", "11"], "--opset 11 is not supported; use 16..20"),
        (["--height", "500", "--width", "512"], "--height 500 --width 512: both must be positive multiples of 32"),
        (["--height", "512"], "give both --height and --width"),
        (["-o", "model.txt"], "-o/--output model.txt must end in .onnx"),
    ],
)
def test_export_checks_options_before_loading(capsys, monkeypatch, tmp_path, narrow_state, extra, expected):
    """Refused before the checkpoint loader runs (it would fail the test), i.e. in well under a second."""
    import deploy_sdk.conversion.checkpoint_options as options

    def no_load(*_a, **_k):
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(options, "load_checkpoint_from_args", no_load)
    monkeypatch.chdir(tmp_path)
    argv = ["export", str(narrow_state[1])] + (extra if "-o" in extra else ["-o", "m.onnx"] + extra)
    assert expected in one_line_error(capsys, argv)
    assert not list(tmp_path.iterdir())


_NO_TORCH = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    blocked = tuple(sys.argv[1].split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

if sys.argv[1]:
    sys.meta_path.insert(0, Block())
import contextlib, io
from deploy_sdk.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    results.append({"argv": argv, "rc": rc, "err": err.getvalue()})
print("RESULT " + json.dumps({"results": results, "torch_imported": "torch" in sys.modules}))
"""


def _run_isolated(tmp_path, blocked, commands):
    import os
    import subprocess
    import sys

    root = REPO_ROOT
    script = tmp_path / "isolated.py"
    script.write_text(_NO_TORCH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, str(script), ",".join(blocked), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


def test_runtime_only_install_names_the_extra(tmp_path, narrow_state):
    """torch, torchvision and onnx missing: the commands that need them end in one line naming the extra."""
    from toy_deployment_graph import write_toy_graph

    ckpt = str(narrow_state[1])
    write_toy_graph(tmp_path / "m.onnx")  # a graph to check against the checkpoint: fine until torch is needed
    commands = [
        ["export", "--help"],
        ["export", ckpt, "-o", "m.onnx"],
        ["convert", ckpt],
        ["demo", "--out", "demo_out"],
        ["check", "m.onnx", "--against", ckpt],
        ["bench", "m.onnx", "--compare", "torch-eager", "--checkpoint", ckpt, "--iters", "1"],
    ]
    result = _run_isolated(tmp_path, ("torch", "torchvision", "onnx"), commands)
    for r in result["results"]:
        lines = r["err"].strip().splitlines()
        assert r["rc"] == 1 and len(lines) == 1, r
        assert "pip install 'maskrcnn-deploy[convert]'" in lines[0] and "Traceback" not in r["err"], r


def test_build_without_tensorrt_answers_at_once(tmp_path):
    """No torch import before saying that TensorRT (and a GPU) is missing, and where TensorRT comes from."""
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this tests the machine without it")
    except ImportError:
        pass
    result = _run_isolated(tmp_path, (), [["build", "model.onnx", "-o", "model.engine"]])
    (r,) = result["results"]
    assert r["rc"] == 1 and len(r["err"].strip().splitlines()) == 1, r
    assert "needs TensorRT and an NVIDIA GPU" in r["err"] and "pip install tensorrt" in r["err"]
    assert "developer.nvidia.com/tensorrt" in r["err"]
    assert not result["torch_imported"]
