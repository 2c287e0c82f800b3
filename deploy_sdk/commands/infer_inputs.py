"""What `maskrcnn-deploy infer` reads: image files, folders (optionally recursive), glob patterns, list files,
paths on stdin, video files and webcams.

Every source becomes either an image file (:class:`pathlib.Path`) or a :class:`VideoSource`; the expansion
happens before the model is loaded, so a wrong argument fails in a second, with one line naming it.

- ``photo.jpg``: an image file (any format Pillow reads, whatever its suffix);
- ``folder/``: the images in it (suffixes :data:`IMAGE_SUFFIXES`, sorted by name); with ``--recursive`` also those
  in its subfolders (sorted by relative path); hidden files and folders (``.name``) are skipped;
- ``"shots/**/*.png"``: a glob pattern (quote it so that the shell leaves it alone; ``**`` matches any depth);
  the matches sorted by name, folders among them expanded as above;
- ``@list.txt`` or ``--list list.txt``: one path per line (blank lines and lines starting with ``#`` skipped;
  relative paths are relative to the list file's folder);
- ``-``: paths from stdin, one per line (relative to the current folder);
- ``clip.mp4`` (:data:`VIDEO_SUFFIXES`) or ``webcam:N``: a video file or webcam N, read with OpenCV (the ``video``
  extra). Folders and globs never pick up videos; name them.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, TextIO, Tuple, Union

from deploy_sdk.errors import InputImageError

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "VideoSource", "expand_sources", "read_list_file"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class VideoSource:
    """A video file (``path``) or a webcam (``camera``, OpenCV's device index)."""

    path: Optional[Path] = None
    camera: Optional[int] = None

    @property
    def name(self) -> str:
        return f"webcam{self.camera}" if self.path is None else self.path.stem

    def __str__(self) -> str:
        return f"webcam:{self.camera}" if self.path is None else str(self.path)


Source = Union[Path, VideoSource]


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _folder_images(folder: Path, recursive: bool) -> List[Path]:
    if recursive:
        found = [
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _hidden(p.relative_to(folder))
        ]
        return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def read_list_file(path: Path) -> List[str]:
    """The paths listed in ``path`` (one a line; blank lines and ``#`` comments skipped), relative ones resolved
    against the list file's folder."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputImageError(f"list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputImageError(
            f"cannot read the list file {path}: {exc}; it must be a text file with one image path a line"
        ) from exc
    lines = _lines(text.splitlines())
    return [line if os.path.isabs(line) else os.path.join(path.parent, line) for line in lines]


def _lines(lines: Iterable[str]) -> List[str]:
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _camera(text: str) -> Optional[int]:
    if text.lower().startswith("webcam:"):
        rest = text[len("webcam:") :]
        if not rest.isdigit():
            raise InputImageError(f"{text!r}: a webcam is webcam:N, N the camera's number (webcam:0 is the first)")
        return int(rest)
    return None


def expand_sources(
    args: List[Union[str, os.PathLike]],
    recursive: bool = False,
    list_files: Iterable[Union[str, os.PathLike]] = (),
    stdin: Optional[TextIO] = None,
) -> Tuple[List[Path], List[VideoSource]]:
    """Image files and video sources named by ``args`` (see the module docstring), in order, without
    duplicates (the same file named twice is read once). An argument that names nothing raises
    :class:`InputImageError`."""
    images: List[Path] = []
    videos: List[VideoSource] = []
    seen: set = set()
    used_stdin = False

    def add_file(p: Path) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            images.append(p)

    def add(text: str, origin: str) -> None:
        nonlocal used_stdin
        camera = _camera(text)
        if camera is not None:
            videos.append(VideoSource(camera=camera))
            return
        if text == "-" and origin == "argument":
            if used_stdin:
                raise InputImageError("'-' (paths from stdin) given twice")
            used_stdin = True
            stream = stdin if stdin is not None else sys.stdin
            if getattr(stream, "isatty", lambda: False)():  # typed by hand: say what is expected
                print("reading image paths from stdin, one a line; end with Ctrl-D", file=sys.stderr)
            for line in _lines(stream.read().splitlines()):
                add(line, "stdin")
            return
        if text.startswith("@") and origin == "argument" and not os.path.exists(text):
            for line in read_list_file(Path(text[1:])):
                add(line, f"list {text[1:]}")
            return
        p = Path(text)
        where = "" if origin == "argument" else f" (from {origin})"
        if p.is_dir():
            found = _folder_images(p, recursive)
            if not found:
                hint = "" if recursive else "; add --recursive to look into its subfolders"
                raise InputImageError(f"directory {p}{where} contains no images ({', '.join(IMAGE_SUFFIXES)}){hint}")
            for f in found:
                add_file(f)
        elif p.is_file():
            if p.suffix.lower() in VIDEO_SUFFIXES:
                videos.append(VideoSource(path=p))
            else:
                add_file(p)
        elif _is_glob(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_dir() or Path(m).suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise InputImageError(f"the pattern {text!r}{where} matches no images ({', '.join(IMAGE_SUFFIXES)})")
            for f in files:
                if f.is_dir():
                    for g in _folder_images(f, recursive):
                        add_file(g)
                else:
                    add_file(f)
        else:
            raise InputImageError(f"image file not found: {p}{where}")

    for lf in list_files:
        for line in read_list_file(Path(lf)):
            add(line, f"list {lf}")
    for a in args:
        add(os.fspath(a), "argument")
    if not images and not videos:
        raise InputImageError("no images given: name files, folders, patterns, @list.txt, - (stdin) or a video")
    return images, videos
