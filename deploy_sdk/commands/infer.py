"""`maskrcnn-deploy infer MODEL IMAGES... --out DIR`: overlay PNGs and COCO results for a set of images.

Writes ``DIR/<image name>.png`` (the image with masks, boxes and labels drawn), ``DIR/results.json`` (COCO
results: one entry per detection with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in image pixels,
``score`` and an RLE ``segmentation``) and ``DIR/images.json`` (COCO ``images`` entries: which ``image_id`` is
which file; ``image_id`` is the image's 1-based position in the input list). Every file is written atomically.

An image that cannot be read (corrupt, empty, too large) does not discard the others: with ``--on-error skip``
(the default) the run goes on, with ``--on-error stop`` it stops at the first such image; either way the
results of the images that worked are written, the failures are listed one line each on stderr and in
``DIR/failures.json`` (``{"failures": [{"index", "file_name", "error"}]}``), and the exit code is 1. When no
image could be read, nothing is written. A run without failures deletes a ``failures.json`` left by an earlier
run. Overlay names are the input's stem plus ``.png``; inputs whose stems clash (``a.png``, ``a.jpg``) keep their
whole file name (``a.png.png``, ``a.jpg.png``), and any name still taken gets ``-1``, ``-2``, ... appended.
--out must not be one of the input folders (the overlays would land among the inputs) and no output may be an
input file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from deploy_sdk.commands.options import add_trust_checkpoint_argument, positive_int
from deploy_sdk.errors import DeploySdkError, InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The JSON files written next to the overlays; no overlay may take one of these names.
RESERVED_NAMES = ("results.json", "images.json", "failures.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model: .onnx (onnxruntime, or openvino with --backend openvino), "
                                                 ".engine (tensorrt) or a checkpoint (torch)")
    parser.add_argument("images", nargs="+", type=Path, help="image files, or directories of images")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per inference call (default 4)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino", "tensorrt", "torch"],
                        help="default: from the model file's suffix")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N; gpu or gpu:N (an Intel GPU) "
                                                        "for --backend openvino")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop detections below this score (default: the model's own threshold)")
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads of the backend")
    parser.add_argument("--no-overlays", action="store_true", help="write only the JSON files")
    parser.add_argument(
        "--on-error", choices=["skip", "stop"], default="skip",
        help="an image that cannot be read: skip it and go on (default) or stop there; either way the results so "
        "far are written, the failures are listed in failures.json and the exit code is 1",
    )
    add_trust_checkpoint_argument(parser)  # for a checkpoint model (torch backend)


def expand_images(paths: List[Path]) -> List[Path]:
    """Files as given; directories expanded to their image files (sorted by name, not recursive)."""
    files: List[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputImageError(f"directory {p} contains no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputImageError(f"image file not found: {p}")
    return files


def _overlay_names(files: List[Path]) -> List[str]:
    """One distinct output name per input (compared case-insensitively, for case-insensitive file systems).

    ``STEM.png`` when no other input has that stem; else ``NAME.png`` with the whole file name (``a.png.png``,
    ``a.jpg.png``); a name still taken (the same file name in two folders, or a clash with another input's name or
    with :data:`RESERVED_NAMES`) gets ``-1``, ``-2``, ... before ``.png``, the first number that is free.
    """
    def key(name: str) -> str:
        return name.casefold()

    stem_count: dict = {}
    for f in files:
        stem_count[key(f.stem)] = stem_count.get(key(f.stem), 0) + 1
    bases = [f.stem if stem_count[key(f.stem)] == 1 else f.name for f in files]
    base_count: dict = {}
    for b in bases:
        base_count[key(b)] = base_count.get(key(b), 0) + 1
    taken = {key(n) for n in RESERVED_NAMES}
    names: List[Optional[str]] = [None] * len(files)
    for i, b in enumerate(bases):  # unique bases keep their plain name
        if base_count[key(b)] == 1 and key(f"{b}.png") not in taken:
            names[i] = f"{b}.png"
            taken.add(key(names[i]))
    for i, b in enumerate(bases):  # the rest are numbered, in input order, with the first free number
        if names[i] is None:
            n = 1
            while key(f"{b}-{n}.png") in taken:
                n += 1
            names[i] = f"{b}-{n}.png"
            taken.add(key(names[i]))
    return [str(n) for n in names]


def _refuse_overwriting_inputs(
    out: Path, files: List[Path], sources: List[Path], outputs: List[str], overlays: bool
) -> None:
    """Refuse an --out that is one of the input folders (when writing overlays), and any output file that is
    one of the input files (compared by device and inode, so links and other spellings count too)."""
    def ident(p: Path) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    out_id = ident(out)
    if out_id is None:
        return  # --out does not exist yet: nothing in it can be an input
    for folder in sources:
        if overlays and folder.is_dir() and ident(folder) == out_id:
            raise DeploySdkError(
                f"--out {out} is the input folder {folder}; the overlays would be written among (and over) the "
                "input images: choose another --out, or pass --no-overlays"
            )
    inputs = {ident(f): f for f in files}
    for name in outputs:
        target = ident(out / name)
        if target is not None and target in inputs:
            raise DeploySdkError(
                f"--out {out}: the output {out / name} would overwrite the input image {inputs[target]}; "
                "choose another --out"
            )


def _predict_files(predictor, files: List[Path], batch_size: int) -> Iterator[Tuple[int, object, Optional[str]]]:
    """``(index, detections, None)`` for each image that worked and ``(index, None, message)`` for each image
    that could not be read, in input order.

    ``predict_iter`` decodes in worker threads and stops at the first bad batch; that batch is then redone image
    by image, so the failure is pinned on its image, and the stream resumes after it.
    """
    from deploy_sdk.preprocessing import load_image

    size = int(batch_size)
    limit = getattr(predictor.backend, "max_batch_size", None)
    if limit:
        size = min(size, int(limit))
    start = 0
    while start < len(files):
        done = start
        try:
            for det in predictor.predict_iter(files[start:], batch_size=size):
                yield done, det, None
                done += 1
            return
        except InputImageError:
            pass
        stop = min(done + size, len(files))
        for index in range(done, stop):
            try:
                det = predictor.predict(load_image(files[index], what=str(files[index])))
            except InputImageError as exc:
                message = str(exc)
                if str(files[index]) not in message:
                    message = f"{files[index]}: {message}"
                yield index, None, message
                continue
            yield index, det, None
        start = stop


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from deploy_sdk.atomic_file import atomic_path, cannot_write, check_output_dir
    from deploy_sdk.predictor import Predictor
    from deploy_sdk.preprocessing import load_image
    from deploy_sdk.progress import ProgressBar

    files = expand_images(list(args.images))
    # Every check of the output comes before the model is loaded.
    check_output_dir(args.out, "--out")
    names = [] if args.no_overlays else _overlay_names(files)
    _refuse_overwriting_inputs(args.out, files, list(args.images), names + list(RESERVED_NAMES),
                               overlays=not args.no_overlays)
    predictor = Predictor(
        args.model,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        score_threshold=args.score_threshold,
        threads=args.threads,
        trust_checkpoint=args.trust_checkpoint,
        mask_format="box",  # overlays and RLE need no [N, H, W] array per image
    )
    print(f"{predictor}: {len(files)} images -> {args.out}", file=sys.stderr)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(args.out, exc) from exc
    results: List[dict] = []
    images_json: List[dict] = []
    failures: List[dict] = []
    total = 0
    with ProgressBar(len(files), "infer") as bar:
        for index, det, error in _predict_files(predictor, files, args.batch_size):
            bar.update()
            if error is None and not args.no_overlays:
                try:
                    overlay = det.draw(load_image(files[index], what=str(files[index])))
                except InputImageError as exc:  # the file changed since it was read
                    error = str(exc)
                else:
                    with atomic_path(args.out / names[index]) as tmp:
                        Image.fromarray(overlay).save(tmp, format="PNG")
            if error is not None:
                failures.append({"index": index, "file_name": str(files[index]), "error": error})
                if args.on_error == "stop":
                    break
                continue
            image_id = index + 1
            height, width = det.image_size
            images_json.append({"id": image_id, "file_name": str(files[index]), "height": height, "width": width})
            results.extend(det.to_coco(image_id))
            total += len(det)
    if not images_json:
        # Nothing worked: write nothing, and say why in one line.
        if len(failures) == 1:
            raise InputImageError(failures[0]["error"])
        raise InputImageError(f"none of the {len(failures)} images could be read; the first: {failures[0]['error']}")
    with atomic_path(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(results))
    with atomic_path(args.out / "images.json") as tmp:
        tmp.write_text(json.dumps({"images": images_json}, indent=1))
    failures_path = args.out / "failures.json"
    if failures:
        with atomic_path(failures_path) as tmp:
            tmp.write_text(json.dumps({"failures": failures}, indent=1))
    elif failures_path.is_file():
        failures_path.unlink()  # it describes an earlier run
    done = len(images_json)
    print(f"{total} detections in {done} images; wrote {args.out / 'results.json'}"
          + ("" if args.no_overlays else f" and {done} overlays"))
    if not failures:
        return 0
    for failure in failures:
        print(f"maskrcnn-deploy infer: failed: {failure['error']}", file=sys.stderr)
    not_run = len(files) - done - len(failures)
    print(f"maskrcnn-deploy infer: {len(failures)} of {len(files)} images failed"
          + (f" ({not_run} not run: --on-error stop)" if not_run else "")
          + f"; listed in {failures_path}", file=sys.stderr)
    return 1
