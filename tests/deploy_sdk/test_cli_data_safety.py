"""No output lost or half-written, and every bad input one clear line (the README's error contract).

- `infer` never writes over its inputs, gives every input its own overlay, and keeps the results of the images
  that worked when one in the middle is corrupt;
- SIGTERM unwinds like Ctrl-C: no `.*.partial` is left behind, exit code 143;
- outputs get the umask-derived mode (0644 / 0755 under umask 022), not mkstemp's 0600 / mkdtemp's 0700;
- output paths the file system refuses are one line, and are refused before the slow work;
- sizes beyond the stated ceilings, negative thread counts and malformed annotations are one line.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_line_error
from PIL import Image
from repo_paths import REPO_ROOT

from deploy_sdk.atomic_file import OutputPathError, atomic_path, check_output_file
from deploy_sdk.cli import Terminated, main, sigterm_unwinds

ROOT = REPO_ROOT


def _png(path: Path, value: int, size=(40, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, format="PNG")
    return path


def _partials(folder: Path):
    return [p for p in folder.rglob("*") if ".partial" in p.name]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------- 1. inputs


def test_infer_refuses_out_equal_to_the_input_folder(tmp_path, capsys, toy_graph):
    images = tmp_path / "imgs"
    _png(images / "a.png", 10)
    _png(images / "b.png", 20)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    err = one_line_error(capsys, ["infer", str(toy_graph), str(images), "--out", str(images)])
    assert "is the input folder" in err
    # The same folder spelled differently, and explicitly listed files whose overlay would be the file itself.
    err = one_line_error(
        capsys, ["infer", str(toy_graph), str(images / "a.png"), str(images / "b.png"), "--out", f"{images}/./"]
    )
    assert "would overwrite the input image" in err
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_infer_never_writes_over_an_input_named_like_its_json(tmp_path, capsys, toy_graph):
    # An input file called results.json (a PNG despite its name), listed explicitly, with --out its own folder.
    src = _png(tmp_path / "results.json", 30)
    before = src.read_bytes()
    err = one_line_error(capsys, ["infer", str(toy_graph), str(src), "--out", str(tmp_path), "--no-overlays"])
    assert "would overwrite the input image" in err and "results.json" in err
    assert src.read_bytes() == before


def test_overlay_names_are_distinct_for_clashing_stems(tmp_path, capsys, toy_graph):
    images = tmp_path / "imgs"
    _png(images / "a.png", 10)
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(images / "a.jpg", format="JPEG")
    _png(images / "a-1.png", 90)
    out = tmp_path / "out"
    assert main(["infer", str(toy_graph), str(images), "--out", str(out)]) == 0
    capsys.readouterr()
    overlays = sorted(p.name for p in out.glob("*.png"))
    assert overlays == ["a-1.png", "a.jpg.png", "a.png.png"]
    # Each overlay is drawn on its own input: the corner pixel (no detection there) keeps the input's value.
    assert np.asarray(Image.open(out / "a.png.png"))[-1, -1, 0] == 10
    assert np.asarray(Image.open(out / "a-1.png"))[-1, -1, 0] == 90
    assert abs(int(np.asarray(Image.open(out / "a.jpg.png"))[-1, -1, 0]) - 200) <= 3


def test_overlay_names_unit():
    from deploy_sdk.commands.infer import _overlay_names

    files = [Path("x/a.png"), Path("y/a.png"), Path("a.jpg"), Path("b.png"), Path("B.jpg"), Path("a.png-1")]
    # a.png twice + a.jpg share the stem "a" -> whole names; the two "a.png" are numbered; b/B clash when case
    # is ignored; "a.png-1" (stem "a") shares the stem too and keeps its whole name.
    names = _overlay_names(files)
    assert names == ["a.png-2.png", "a.png-3.png", "a.jpg.png", "b.png.png", "B.jpg.png", "a.png-1.png"]
    assert len({n.casefold() for n in names}) == len(names)
    # Names of the JSON outputs are never taken by an overlay.
    assert _overlay_names([Path("results.json")]) == ["results.png"]


# ------------------------------------------------------------------------------------------------- 3. failures


def _corrupt_in_the_middle(tmp_path: Path) -> Path:
    images = tmp_path / "imgs"
    _png(images / "a.png", 10)
    _png(images / "b.png", 20)
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    _png(images / "d.png", 40)
    _png(images / "e.png", 50)
    return images


def test_infer_keeps_the_results_of_the_good_images(tmp_path, capsys, toy_graph):
    images = _corrupt_in_the_middle(tmp_path)
    out = tmp_path / "out"
    rc = main(["infer", str(toy_graph), str(images), "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.err
    failed_lines = [line for line in captured.err.splitlines() if "failed: " in line]
    assert len(failed_lines) == 1 and "c.png" in failed_lines[0]
    assert "1 of 5 images failed" in captured.err
    images_json = json.loads((out / "images.json").read_text())["images"]
    assert [(im["id"], Path(im["file_name"]).name) for im in images_json] == [
        (1, "a.png"),
        (2, "b.png"),
        (4, "d.png"),
        (5, "e.png"),
    ]
    results = json.loads((out / "results.json").read_text())["annotations"]
    # The toy graph detects two boxes in every non-black image.
    assert sorted(r["image_id"] for r in results) == [1, 1, 2, 2, 4, 4, 5, 5]
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert [(f["index"], Path(f["file_name"]).name) for f in failures] == [(2, "c.png")]
    assert "cannot read image file" in failures[0]["error"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "d.png", "e.png"]
    assert not _partials(tmp_path)

    # A later run without failures removes the stale failures.json.
    (images / "c.png").unlink()
    assert main(["infer", str(toy_graph), str(images), "--out", str(out)]) == 0
    capsys.readouterr()
    assert not (out / "failures.json").exists()


def test_infer_on_error_stop(tmp_path, capsys, toy_graph):
    images = _corrupt_in_the_middle(tmp_path)
    out = tmp_path / "out"
    rc = main(["infer", str(toy_graph), str(images), "--out", str(out), "--batch-size", "2", "--on-error", "stop"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 not run" in err
    images_json = json.loads((out / "images.json").read_text())["images"]
    assert [Path(im["file_name"]).name for im in images_json] == ["a.png", "b.png"]
    assert [Path(f["file_name"]).name for f in json.loads((out / "failures.json").read_text())["failures"]] == ["c.png"]


def test_infer_threads_must_be_positive_at_parse_time(tmp_path, capsys, toy_graph):
    _png(tmp_path / "a.png", 10)
    for flag in ("--threads", "--batch-size"):
        with pytest.raises(SystemExit) as info:
            main(["infer", str(toy_graph), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), flag, "-3"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: must be a positive integer, got -3" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------- 4. SIGTERM


class SigtermNotHandled(Exception):
    """Raised by the test's own SIGTERM handler: the code under test did not install one."""


@pytest.fixture
def sigterm_safety_net():
    """A SIGTERM handler of the test's own, so that a SIGTERM the code under test fails to handle fails the test
    instead of killing the test process."""

    def handler(signum, frame):
        raise SigtermNotHandled()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_in_data_leaves_nothing(tmp_path, monkeypatch, capsys, sigterm_safety_net):
    import deploy_sdk.synthetic_shapes as shapes

    real = shapes.generate_sample
    calls = {"n": 0}

    def terminated_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, while images are being written
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes, "generate_sample", terminated_midway)
    before = signal.getsignal(signal.SIGTERM)
    rc = main(
        [
            "data",
            "shapes",
            "--out",
            str(tmp_path / "set"),
            "--num",
            "20",
            "--min-size",
            "48",
            "--max-size",
            "48",
            "--quiet",
        ]
    )
    assert rc == 143
    assert "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before, "the CLI restores the previous SIGTERM handler"


def test_sigterm_inside_atomic_path_deletes_the_temporary_file(tmp_path, sigterm_safety_net):
    with pytest.raises(Terminated):
        with sigterm_unwinds(), atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half a model")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes; this loop only gives it the chance
                time.sleep(0.001)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_the_data_command_process(tmp_path):
    """The real entry point in its own process: SIGTERM while it writes, then no .partial anywhere."""
    out = tmp_path / "set"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from deploy_sdk.cli import main; sys.exit(main())",
        "data",
        "shapes",
        "--out",
        str(out),
        "--num",
        "100000",
        "--min-size",
        "48",
        "--max-size",
        "48",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        started = False
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.suffix == ".png" for p in tmp_path.rglob("*.png")):
                started = True
                break
            time.sleep(0.05)
        assert started, f"the data command wrote no image; rc {proc.poll()}"
        assert _partials(tmp_path), "the set is built in a .partial folder"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "no partial (or finished) set is left behind"


# ------------------------------------------------------------------------------------------------- 5. modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_path_gives_the_umask_mode(tmp_path, umask_022):
    with atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert _mode(tmp_path / "out.json") == 0o644
    os.umask(0o077)
    with atomic_path(tmp_path / "private.json") as tmp:
        tmp.write_text("{}")
    assert _mode(tmp_path / "private.json") == 0o600


def test_data_and_infer_outputs_get_the_umask_mode(tmp_path, capsys, toy_graph, umask_022):
    out = tmp_path / "set"
    assert (
        main(["data", "shapes", "--out", str(out), "--num", "2", "--min-size", "48", "--max-size", "48", "--quiet"])
        == 0
    )
    assert _mode(out) == 0o755 and _mode(out / "images") == 0o755
    files = [out / "annotations.json"] + list((out / "images").iterdir())
    assert len(files) == 3 and all(_mode(f) == 0o644 for f in files)

    res = tmp_path / "res"
    assert main(["infer", str(toy_graph), str(out / "images"), "--out", str(res)]) == 0
    capsys.readouterr()
    written = list(res.iterdir())
    assert len(written) == 4 and all(_mode(f) == 0o644 for f in written)
    assert _mode(res) == 0o755


# ------------------------------------------------------------------------------------------------- 6. OS errors


def test_atomic_path_errors_are_one_line_and_leave_nothing(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"cannot write .*somefile/out\.onnx: Not a directory"):
        with atomic_path(blocker / "out.onnx"):
            pass
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputPathError, match="it is a folder"):
        with atomic_path(tmp_path / "folder"):
            pass
    # A full file system, as the writer inside the block would see it.
    with pytest.raises(OutputPathError, match=r"cannot write .*full\.json: No space left on device"):
        with atomic_path(tmp_path / "full.json") as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # Other exceptions pass through unchanged.
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "bug.json"):
            raise ValueError("a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "somefile"]


def test_check_output_file_refuses_devices_and_suffixes(tmp_path):
    with pytest.raises(OutputPathError, match="not a regular file"):
        check_output_file("/dev/null")
    with pytest.raises(OutputPathError, match=r"must end in \.onnx"):
        check_output_file(tmp_path / "model.txt", suffixes=(".onnx",))
    assert check_output_file(tmp_path / "new" / "deeper" / "m.onnx", suffixes=(".onnx",)).name == "m.onnx"
    assert not (tmp_path / "new").exists(), "checking creates nothing"


def test_read_only_and_unwritable_folders_are_refused_up_front(tmp_path, monkeypatch):
    """Tests run as root, whom chmod does not stop: simulate the two answers of the file system instead."""
    import deploy_sdk.atomic_file as atomic_file

    target = tmp_path / "sub" / "m.onnx"  # "sub" does not exist: the check looks at tmp_path, the nearest folder
    monkeypatch.setattr(atomic_file.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(OutputPathError, match=r"cannot write .*m\.onnx: Permission denied"):
        check_output_file(target)
    monkeypatch.undo()

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(atomic_file.os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(OutputPathError, match=r"cannot write .*m\.onnx: Read-only file system"):
        check_output_file(target)
    with pytest.raises(OutputPathError, match="Read-only file system"):
        with atomic_path(target):
            pass
    assert list(tmp_path.iterdir()) == []


def test_export_checks_the_output_before_loading(tmp_path, capsys, monkeypatch):
    import deploy_sdk.conversion.checkpoint_options as options

    calls = []

    def loader(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the checkpoint must not be loaded for a bad output path")

    monkeypatch.setattr(options, "load_checkpoint_from_args", loader)
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"not read")
    (tmp_path / "somefile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (tmp_path / "adir", "it is a folder"),
        (tmp_path / "somefile" / "out.onnx", "Not a directory"),
        (tmp_path / "out.txt", "must end in .onnx"),
    ]
    for out, message in cases:
        err = one_line_error(capsys, ["export", str(ckpt), "-o", str(out)])
        assert message in err, err
    assert calls == []


def test_infer_out_that_is_a_file(tmp_path, capsys, toy_graph, monkeypatch):
    import deploy_sdk.predictor as predictor_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a bad --out")

    monkeypatch.setattr(predictor_module, "Predictor", no_model)
    _png(tmp_path / "a.png", 10)
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, ["infer", str(toy_graph), str(tmp_path / "a.png"), "--out", str(tmp_path / "file")])
    assert "not a folder" in err
    err = one_line_error(
        capsys, ["infer", str(toy_graph), str(tmp_path / "a.png"), "--out", str(tmp_path / "file" / "sub")]
    )
    assert "Not a directory" in err


def test_eval_json_path_checked_before_the_model(tmp_path, capsys, monkeypatch):
    import deploy_sdk.conversion.commands.evaluate as evaluate_cmd
    from deploy_sdk.synthetic_shapes import write_dataset

    monkeypatch.setattr(evaluate_cmd, "make_predictor", lambda args: pytest.fail("model loaded"))
    write_dataset(tmp_path / "ds", num=1, seed=3, min_size=48, max_size=48)
    (tmp_path / "somefile").write_text("x")
    argv = [
        "eval",
        str(tmp_path / "m.onnx"),
        "--images",
        str(tmp_path / "ds" / "images"),
        "--annotations",
        str(tmp_path / "ds" / "annotations.json"),
        "--json",
        str(tmp_path / "somefile" / "m.json"),
    ]
    err = one_line_error(capsys, argv)
    assert f"cannot write {tmp_path / 'somefile' / 'm.json'}: Not a directory" in err


@pytest.mark.parametrize(
    "flag, path, message",
    [
        ("--json", "somefile/b.json", "Not a directory"),
        ("--plot", "adir", "it is a folder"),
        ("--plot", "plot.svg", "must end in .png"),
    ],
)
def test_bench_output_paths_checked_before_the_run(tmp_path, capsys, monkeypatch, flag, path, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somefile").write_text("x")
    (tmp_path / "adir").mkdir()
    # The model does not exist: the output is checked first, so that error is the one reported.
    err = one_line_error(capsys, ["bench", "missing.onnx", flag, path])
    assert message in err, err


def test_cli_turns_os_errors_with_a_path_into_one_line(capsys, monkeypatch):
    import deploy_sdk.commands.data as data_cmd

    def refused(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/out")

    monkeypatch.setattr(data_cmd, "run", refused)
    err = one_line_error(capsys, ["data", "shapes", "--out", "x"])
    assert err.endswith("error: /srv/out: Permission denied")

    def bug(args):
        raise OSError("no path: a bug")

    monkeypatch.setattr(data_cmd, "run", bug)
    with pytest.raises(OSError, match="a bug"):
        main(["data", "shapes", "--out", "x"])


# ------------------------------------------------------------------------------------------------- 7. ceilings


def test_size_ceilings_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.onnx").write_bytes(b"")
    err = one_line_error(capsys, ["bench", "m.onnx", "--image-size", "100000x100000"])
    assert "16..8192" in err
    err = one_line_error(capsys, ["bench", "m.onnx", "--image-size", "8192x8192", "--num-images", "100"])
    assert "GiB" in err
    err = one_line_error(capsys, ["data", "shapes", "--out", "d", "--min-size", "100000", "--max-size", "100000"])
    assert "<= 4096" in err
    err = one_line_error(capsys, ["data", "shapes", "--out", "d", "--min-size", "100000"])
    assert "--min-size 100000" in err
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
