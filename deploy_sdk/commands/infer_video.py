"""Video files and webcams for `maskrcnn-deploy infer`, through OpenCV (the ``video`` extra:
``pip install 'maskrcnn-deploy[video]'``, which brings ``opencv-python-headless``).

For a source NAME (the video's stem, or ``webcamN``) the command writes into --out:

- ``NAME.mp4``: the annotated video (overlays as for images, same frame rate and size; codec ``mp4v``), unless
  --no-overlays;
- ``NAME.frames.jsonl``: one JSON object a line, one line per frame, in frame order: ``{"frame": i, "time_s": t,
  "image_size": [H, W], "detections": [...]}`` (the :meth:`deploy_sdk.Detections.to_dict` form; schema in
  docs/json_schemas.md). Lines, not one document, so that a long video or a webcam never holds all its results.

Both are written to a temporary name and renamed when the video ends (or, for a webcam, at --max-frames or
Ctrl-C, which ends a webcam run normally). Frames are decoded by OpenCV (BGR) and given to the predictor as
arrays with ``channel_order="bgr"``; batches of --batch-size frames go through ``predict_iter``, so decoding,
inference and drawing overlap.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from deploy_sdk.commands.infer_inputs import VideoSource
from deploy_sdk.errors import DeploySdkError, MissingDependencyError

__all__ = ["require_opencv", "probe_video", "video_output_names", "run_video"]


def require_opencv() -> Any:
    """``cv2``, or the one-line error naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("opencv-python-headless", "video", "video files and webcams in infer") from None
    return cv2


def video_output_names(source: VideoSource, overlays: bool) -> Tuple[Optional[str], str]:
    """(annotated video name or None, per-frame JSON Lines name) for ``source``."""
    return (f"{source.name}.mp4" if overlays else None), f"{source.name}.frames.jsonl"


def _open(cv2: Any, source: VideoSource) -> Any:
    if source.path is not None:
        cap = cv2.VideoCapture(os.fspath(source.path))
    elif source.camera is not None:
        cap = cv2.VideoCapture(int(source.camera))
    else:
        raise ValueError(f"{source!r} names neither a video file nor a webcam")
    if not cap.isOpened():
        cap.release()
        if source.path is None:
            raise DeploySdkError(f"cannot open webcam {source.camera} ({source}): no such camera, or it is in use")
        raise DeploySdkError(
            f"cannot open the video {source.path}: OpenCV cannot decode it (corrupt, or a codec "
            "this OpenCV build lacks)"
        )
    return cap


def probe_video(source: VideoSource) -> None:
    """Refuse a video file that OpenCV cannot open or read a frame from (before the model is loaded); webcams
    are opened only when their turn comes."""
    if source.path is None:
        return
    cv2 = require_opencv()
    cap = _open(cv2, source)
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise DeploySdkError(f"{source}: no frame could be read (an empty or corrupt video)")
    finally:
        cap.release()


def _frames(cap: Any, max_frames: Optional[int], first: Optional[np.ndarray]) -> Iterator[np.ndarray]:
    count = 0
    if first is not None:
        count += 1
        yield first
    while max_frames is None or count < max_frames:
        ok, frame = cap.read()
        if not ok or frame is None:
            return
        count += 1
        yield frame


def run_video(
    predictor: Any,
    source: VideoSource,
    out: Path,
    overlays: bool,
    draw_min_score: float,
    batch_size: int,
    max_frames: Optional[int],
    show_progress: bool = True,
) -> Tuple[int, int]:
    """Run ``predictor`` on every frame of ``source``; write the outputs into ``out``. Returns (frames,
    detections)."""
    from deploy_sdk.atomic_file import make_temp_dir
    from deploy_sdk.progress import ProgressBar

    cv2 = require_opencv()
    cap = _open(cv2, source)
    tmpdir = None
    writer = None
    frames = detections = 0
    try:
        ok, first = cap.read()
        if not ok or first is None:
            raise DeploySdkError(f"{source}: no frame could be read")
        height, width = first.shape[:2]
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0.5 <= fps <= 1000.0:
            fps = 30.0  # webcams and some streams report 0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if source.path is not None else 0
        if max_frames is not None:
            total = min(total, max_frames) if total > 0 else max_frames
        video_name, json_name = video_output_names(source, overlays)
        tmpdir = make_temp_dir(out, source.name)
        if video_name is not None:
            writer = cv2.VideoWriter(
                os.fspath(tmpdir / video_name), cv2.VideoWriter_fourcc(*"mp4v"), fps, (int(width), int(height))
            )
            if not writer.isOpened():
                raise DeploySdkError(
                    f"OpenCV cannot write an mp4v video to {out / video_name}; pass --no-overlays for the JSON only"
                )
        with (
            open(tmpdir / json_name, "w") as lines,
            ProgressBar(total, str(source), unit="frame", enabled=show_progress) as bar,
        ):
            try:
                for det in predictor.predict_iter(_frames(cap, max_frames, first), batch_size=batch_size):
                    item = {"frame": frames, "time_s": round(frames / fps, 4)}
                    item.update(det.to_dict())
                    lines.write(json.dumps(item) + "\n")
                    if writer is not None:
                        rgb = det.draw(min_score=draw_min_score)
                        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
                    det.source = None  # the frame is not needed any more
                    frames += 1
                    detections += len(det)
                    bar.update()
            except KeyboardInterrupt:
                if source.path is not None:
                    raise
                print(f"\n{source}: stopped after {frames} frames", file=sys.stderr)  # Ctrl-C ends a webcam run
        if writer is not None:
            writer.release()
            writer = None
        for name in (video_name, json_name):
            if name is not None:
                os.replace(tmpdir / name, out / name)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return frames, detections
