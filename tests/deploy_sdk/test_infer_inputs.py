"""What `maskrcnn-deploy infer` reads (deploy_sdk.commands.infer_inputs): folders with and without --recursive,
hidden files, .gif/.webp, glob patterns, list files, paths on stdin, videos and webcams. The expected file lists
are written out by hand for each folder tree; the CLI runs are checked against the images as Pillow decodes them.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_deployment_graph import write_toy_graph

from deploy_sdk.cli import main
from deploy_sdk.commands.infer_inputs import VideoSource, expand_sources, read_list_file
from deploy_sdk.errors import InputImageError


def _img(path: Path, value: int = 90, size=(60, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    for rel in (
        "b.png",
        "a.gif",
        "c.webp",
        "sub/d.jpg",
        "sub/g.png",
        "sub/deeper/h.bmp",
        ".hidden.png",
        "sub/.cache/e.png",
        ".git/f.png",
    ):
        _img(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "clip.mp4").write_bytes(b"\x00" * 16)  # folders never pick up videos
    return root


def _rel(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


def test_folders_plain_and_recursive(tree):
    images, videos = expand_sources([tree])
    assert _rel(images, tree) == ["a.gif", "b.png", "c.webp"] and videos == []
    images, videos = expand_sources([tree], recursive=True)
    assert _rel(images, tree) == ["a.gif", "b.png", "c.webp", "sub/d.jpg", "sub/deeper/h.bmp", "sub/g.png"]
    assert videos == []
    # A folder whose images are all in subfolders: the error says --recursive.
    nested = tree.parent / "nested"
    _img(nested / "x" / "i.png")
    with pytest.raises(InputImageError, match="--recursive"):
        expand_sources([nested])
    assert _rel(expand_sources([nested], recursive=True)[0], tree.parent) == ["nested/x/i.png"]


def test_glob_patterns(tree):
    images, _ = expand_sources([str(tree / "**" / "*.png")])
    assert _rel(images, tree) == ["b.png", "sub/g.png"]  # ** at any depth; hidden names are not matched
    images, _ = expand_sources([str(tree / "*.[gw]*")])
    assert _rel(images, tree) == ["a.gif", "c.webp"]
    with pytest.raises(InputImageError, match="matches no images"):
        expand_sources([str(tree / "*.tiff")])


def test_list_files_stdin_and_duplicates(tree, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text(f"# my picks\n\n../photos/b.png\n  ../photos/sub/d.jpg  \n{tree / 'a.gif'}\n")
    assert read_list_file(lists / "l.txt") == [
        str(lists / "../photos/b.png"),
        str(lists / "../photos/sub/d.jpg"),
        str(tree / "a.gif"),
    ]
    images, _ = expand_sources([f"@{lists / 'l.txt'}"])
    assert [p.name for p in images] == ["b.png", "d.jpg", "a.gif"]  # the list's order
    # --list FILE comes first; the same file named again (another spelling) is read once.
    images, _ = expand_sources([tree / "c.webp", tree / "sub" / ".." / "b.png"], list_files=[lists / "l.txt"])
    assert [p.name for p in images] == ["b.png", "d.jpg", "a.gif", "c.webp"]
    stdin = io.StringIO(f"{tree / 'sub' / 'g.png'}\n\n{tree / 'sub'}\n")
    images, _ = expand_sources(["-"], stdin=stdin)
    assert [p.name for p in images] == ["g.png", "d.jpg"]  # a folder on stdin is expanded as well
    with pytest.raises(InputImageError, match="given twice"):
        expand_sources(["-", "-"], stdin=io.StringIO(f"{tree / 'b.png'}\n"))
    with pytest.raises(InputImageError, match="list file not found"):
        expand_sources([f"@{tmp_path / 'nope.txt'}"])
    (lists / "bad.txt").write_text(f"{tree / 'missing.png'}\n")
    with pytest.raises(InputImageError, match=r"missing\.png \(from list"):
        expand_sources([f"@{lists / 'bad.txt'}"])


def test_videos_and_webcams_are_sources_of_their_own(tree):
    images, videos = expand_sources([tree / "clip.mp4", "webcam:2", tree / "b.png"])
    assert [p.name for p in images] == ["b.png"]
    assert videos == [VideoSource(path=tree / "clip.mp4"), VideoSource(camera=2)]
    assert [v.name for v in videos] == ["clip", "webcam2"] and str(videos[1]) == "webcam:2"
    with pytest.raises(InputImageError, match="webcam:N"):
        expand_sources(["webcam:first"])


def test_cli_reads_stdin_recursive_folders_gif_and_webp(tree, tmp_path, monkeypatch, capsys):
    model = write_toy_graph(tmp_path / "toy.onnx")
    # A palette GIF and a lossless WebP: decoded to RGB as Pillow's convert("RGB") does.
    gif, webp = tree / "a.gif", tree / "c.webp"
    Image.fromarray(np.asarray(Image.open(tree / "b.png"))).convert("P").save(gif)
    Image.fromarray(np.asarray(Image.open(tree / "b.png"))).save(webp, lossless=True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{gif}\n{webp}\n"))
    out = tmp_path / "out"
    assert main(["infer", str(model), "-", str(tree / "sub"), "--recursive", "--out", str(out), "--threads", "1"]) == 0
    assert "10 detections in 5 images" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert [Path(im["file_name"]).name for im in doc["images"]] == ["a.gif", "c.webp", "d.jpg", "h.bmp", "g.png"]
    for src, overlay in ((gif, "a.png"), (webp, "c.png")):
        want = np.asarray(Image.open(src).convert("RGB"))
        got = np.asarray(Image.open(out / overlay))
        assert got.shape == want.shape
        # The bottom-left corner is outside both toy boxes and their labels: the overlay shows the image there.
        np.testing.assert_array_equal(got[45:, :15], want[45:, :15])
