"""`maskrcnn-deploy infer MODEL SOURCES... --out DIR`: overlays and COCO results for images and videos.

Sources (:mod:`deploy_sdk.commands.infer_inputs`): image files, folders (``--recursive`` for their subfolders),
glob patterns, ``@list.txt`` / ``--list FILE`` (one path a line), ``-`` (paths on stdin), video files and
``webcam:N`` (the ``video`` extra, :mod:`deploy_sdk.commands.infer_video`).

For images it writes ``DIR/<image name>.png`` (the image with the masks, boxes and labels of the detections
scoring at least ``--draw-min-score``, default 0.5), ``DIR/results.json`` (a complete COCO file: ``info``,
``images``, ``categories`` and ``annotations``, one annotation per detection with ``image_id``, ``category_id``,
``bbox`` [x, y, w, h] in image pixels, ``score``, an RLE ``segmentation``, ``area``, ``iscrowd`` 0 and ``id``; it
loads with ``pycocotools.coco.COCO``, and its ``annotations`` list is what ``COCO.loadRes`` takes),
``DIR/images.json`` (the same ``images`` entries alone) and, with ``--save-json-per-image``,
``DIR/json/<image name>.json`` (one :meth:`deploy_sdk.Detections.to_dict` document per image). ``image_id`` is
the image's 1-based position in the input list, or with ``--image-ids-from annotations.json`` the id that file
gives the image (matched by file name). Schemas: docs/json_schemas.md. Every file is written atomically.

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
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

from deploy_sdk.commands.infer_inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_sources
from deploy_sdk.commands.options import add_trust_checkpoint_argument, positive_int
from deploy_sdk.errors import DeploySdkError, InputImageError

if TYPE_CHECKING:
    from deploy_sdk.detections import Detections

# The JSON files written next to the overlays; no overlay may take one of these names.
RESERVED_NAMES = ("results.json", "images.json", "failures.json")
PER_IMAGE_JSON_DIR = "json"


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in 0..1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        help="model: .onnx (onnxruntime, or openvino with --backend openvino), "
        ".engine (tensorrt) or a checkpoint (torch)",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="SOURCE",
        help="image files; folders of images (" + " ".join(IMAGE_SUFFIXES) + "); quoted glob patterns "
        "('shots/**/*.jpg'); @list.txt (one path a line, relative to the list's folder); - (paths on stdin); "
        "video files (" + " ".join(VIDEO_SUFFIXES) + ") and webcam:N, through the video extra "
        "(pip install 'maskrcnn-deploy[video]'): an annotated NAME.mp4 and NAME.frames.jsonl (one JSON line a "
        "frame) each",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--recursive", "-r", action="store_true", help="folders: also the images in their subfolders")
    parser.add_argument(
        "--list",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a text file listing image paths, one a line (may be repeated; same as @FILE)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per inference call (default 4)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "openvino", "tensorrt", "torch"],
        help="default: from the model file's suffix",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N; gpu or gpu:N (an Intel GPU) for --backend openvino",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="drop detections below this score from every output (default: the model's own threshold)",
    )
    parser.add_argument(
        "--draw-min-score",
        type=_score,
        default=0.5,
        help="draw only the detections scoring at least this in overlays and annotated videos "
        "(default 0.5); the JSON files keep every detection",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads of the backend")
    parser.add_argument("--no-overlays", action="store_true", help="write only the JSON files")
    parser.add_argument(
        "--save-json-per-image",
        action="store_true",
        help="also write json/<image name>.json per image: its detections with class names and "
        "boxes x1 y1 x2 y2 (docs/json_schemas.md)",
    )
    parser.add_argument(
        "--image-ids-from",
        type=Path,
        default=None,
        metavar="ANNOTATIONS",
        help="a COCO annotations file: give each image the id it has there (matched by file name), "
        "so results.json can be evaluated against it",
    )
    parser.add_argument(
        "--max-frames",
        type=positive_int,
        default=None,
        help="videos and webcams: stop after this many frames (a webcam also stops at Ctrl-C)",
    )
    parser.add_argument(
        "--on-error",
        choices=["skip", "stop"],
        default="skip",
        help="an image that cannot be read: skip it and go on (default) or stop there; either way the results so "
        "far are written, the failures are listed in failures.json and the exit code is 1",
    )
    add_trust_checkpoint_argument(parser)  # for a checkpoint model (torch backend)


def expand_images(paths: List[Path], recursive: bool = False) -> List[Path]:
    """Image files named by ``paths`` (files, folders, patterns, @lists; see
    :mod:`deploy_sdk.commands.infer_inputs`); video sources are refused here."""
    images, videos = expand_sources(list(paths), recursive=recursive)
    if videos:
        raise InputImageError(f"{videos[0]} is a video; expand_images takes images only")
    return images


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
            name = f"{b}.png"
            names[i] = name
            taken.add(key(name))
    for i, b in enumerate(bases):  # the rest are numbered, in input order, with the first free number
        if names[i] is None:
            n = 1
            while key(f"{b}-{n}.png") in taken:
                n += 1
            name = f"{b}-{n}.png"
            names[i] = name
            taken.add(key(name))
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


def _predict_files(
    predictor, files: List[Path], batch_size: int
) -> Iterator[Tuple[int, Optional[Detections], Optional[str]]]:
    """``(index, detections, None)`` for each image that worked and ``(index, None, message)`` for each image
    that could not be read, in input order.

    ``predict_iter`` decodes in worker threads and stops at the first bad batch; that batch is then redone image
    by image, so the failure is pinned on its image, and the stream resumes after it.
    """
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
                det = predictor.predict(files[index])  # the path: the predictor's channel_order is for arrays
            except InputImageError as exc:
                message = str(exc)
                if str(files[index]) not in message:
                    message = f"{files[index]}: {message}"
                yield index, None, message
                continue
            yield index, det, None
        start = stop


def _image_ids_from(path: Path, files: List[Path]) -> List[int]:
    """The id of each of ``files`` in the COCO annotations file ``path``: by the whole ``file_name`` when it names
    the file (relative to the annotations' folder, or as given), else by the file's base name when only one
    entry has it."""
    try:
        data = json.loads(path.read_text())
        entries = data["images"]
        pairs = [(str(e["file_name"]), int(e["id"])) for e in entries]
    except FileNotFoundError:
        raise DeploySdkError(f"--image-ids-from: file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeploySdkError(
            f"--image-ids-from {path}: not a COCO annotations file with an 'images' list of "
            f"{{'id', 'file_name'}} entries ({type(exc).__name__}: {exc})"
        ) from exc
    by_path = {os.path.normpath(name): i for name, i in pairs}
    by_base: dict = {}
    for name, i in pairs:
        by_base.setdefault(os.path.basename(name), []).append(i)
    ids = []
    for f in files:
        candidates = [os.path.normpath(str(f))]
        try:
            candidates.append(os.path.normpath(os.path.relpath(f, path.parent)))
        except ValueError:
            pass
        found = next((by_path[c] for c in candidates if c in by_path), None)
        if found is None:
            same = by_base.get(f.name, [])
            if len(same) > 1:
                raise DeploySdkError(
                    f"--image-ids-from {path}: {len(same)} images are called {f.name} (ids "
                    f"{same[:5]}); name the files as the annotations do ({f})"
                )
            found = same[0] if same else None
        if found is None:
            raise DeploySdkError(
                f"--image-ids-from {path}: no image {f.name} in its 'images' ({len(pairs)} "
                "entries); pass only images of that data set"
            )
        ids.append(found)
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise DeploySdkError(f"--image-ids-from {path}: several inputs get the id {sorted(duplicates)[0]}")
    return ids


def coco_document(images: List[dict], annotations: List[dict], class_names: List[str], model: str) -> dict:
    """A complete COCO file from ``images`` entries and results entries (``to_coco``): ``annotations`` get
    ``id`` (1-based), ``area`` (mask pixels, else box area) and ``iscrowd`` 0; ``categories`` are the model's
    classes (id = label id; the background, index 0, is left out)."""
    from deploy_sdk.version import __version__

    anns = []
    for k, r in enumerate(annotations, start=1):
        ann = dict(r)
        ann["id"] = k
        ann["iscrowd"] = 0
        ann["area"] = (
            float(_rle_area(r["segmentation"]))
            if "segmentation" in r
            else round(float(r["bbox"][2]) * float(r["bbox"][3]), 3)
        )
        anns.append(ann)
    categories = [{"id": i, "name": str(n), "supercategory": "object"} for i, n in enumerate(class_names) if i > 0]
    info = {"description": f"maskrcnn-deploy infer {model}", "version": __version__}
    return {"info": info, "images": images, "categories": categories, "annotations": anns}


def _rle_area(rle: dict) -> int:
    from deploy_sdk.detections import decode_rle

    return int(decode_rle(rle).sum())


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from deploy_sdk.atomic_file import atomic_path, cannot_write, check_output_dir
    from deploy_sdk.predictor import Predictor
    from deploy_sdk.progress import ProgressBar

    if not args.images and not args.list:
        raise InputImageError("no images given: name files, folders, patterns, @list.txt, - (stdin) or a video")
    files, videos = expand_sources(list(args.images), recursive=args.recursive, list_files=args.list)
    if videos:
        from deploy_sdk.commands.infer_video import probe_video, require_opencv, video_output_names

        require_opencv()  # before the model is loaded
        for video in videos:
            probe_video(video)
        video_names = [n for v in videos for n in video_output_names(v, not args.no_overlays) if n]
        if len(set(video_names)) != len(video_names):
            raise DeploySdkError(
                "two videos have the same name (stem); their outputs would overwrite each other: "
                "run them separately with different --out"
            )
    else:
        video_names = []
    image_ids = _image_ids_from(args.image_ids_from, files) if args.image_ids_from and files else None
    # Every check of the output comes before the model is loaded.
    check_output_dir(args.out, "--out")
    names = [] if args.no_overlays else _overlay_names(files)
    json_names = [Path(n).stem + ".json" for n in (names or _overlay_names(files))] if args.save_json_per_image else []
    _refuse_overwriting_inputs(
        args.out,
        files,
        [Path(a) for a in args.images if a not in ("-",)],
        names + list(RESERVED_NAMES) + video_names + [f"{PER_IMAGE_JSON_DIR}/{n}" for n in json_names],
        overlays=not args.no_overlays,
    )
    predictor = Predictor(
        args.model,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        score_threshold=args.score_threshold,
        threads=args.threads,
        trust_checkpoint=args.trust_checkpoint,
        mask_format="box",  # overlays and RLE need no [N, H, W] array per image
        channel_order="bgr",  # video frames come from OpenCV; files carry their own order
    )
    what = f"{len(files)} images" + (f" and {len(videos)} videos" if videos else "")
    print(f"{predictor}: {what} -> {args.out}", file=sys.stderr)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if json_names:
            (args.out / PER_IMAGE_JSON_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise cannot_write(args.out, exc) from exc
    code = (
        _run_images(args, predictor, files, names, json_names, image_ids, atomic_path, Image, ProgressBar)
        if files
        else 0
    )
    for video in videos:
        from deploy_sdk.commands.infer_video import run_video

        frames, count = run_video(
            predictor,
            video,
            args.out,
            overlays=not args.no_overlays,
            draw_min_score=args.draw_min_score,
            batch_size=args.batch_size,
            max_frames=args.max_frames,
        )
        outputs = [n for n in video_output_names(video, not args.no_overlays) if n]
        print(
            f"{video}: {count} detections in {frames} frames; wrote " + " and ".join(str(args.out / n) for n in outputs)
        )
    return code


def _run_images(args, predictor, files, names, json_names, image_ids, atomic_path, Image, ProgressBar) -> int:
    from deploy_sdk.preprocessing import load_image

    results: List[dict] = []
    images_json: List[dict] = []
    failures: List[dict] = []
    total = 0
    with ProgressBar(len(files), "infer") as bar:
        for index, det, error in _predict_files(predictor, files, args.batch_size):
            bar.update()
            if det is not None and not args.no_overlays:  # det is None exactly when error is set
                try:
                    overlay = det.draw(load_image(files[index], what=str(files[index])), min_score=args.draw_min_score)
                except InputImageError as exc:  # the file changed since it was read
                    error = str(exc)
                else:
                    with atomic_path(args.out / names[index]) as tmp:
                        Image.fromarray(overlay).save(tmp, format="PNG")
            if error is not None or det is None:
                failures.append({"index": index, "file_name": str(files[index]), "error": error})
                if args.on_error == "stop":
                    break
                continue
            image_id = image_ids[index] if image_ids is not None else index + 1
            height, width = det.image_size
            images_json.append({"id": image_id, "file_name": str(files[index]), "height": height, "width": width})
            results.extend(det.to_coco(image_id))
            if json_names:
                det.source = files[index]
                with atomic_path(args.out / PER_IMAGE_JSON_DIR / json_names[index]) as tmp:
                    tmp.write_text(det.to_json(image_id, indent=1))
            total += len(det)
    if not images_json:
        # Nothing worked: write nothing, and say why in one line.
        if len(failures) == 1:
            raise InputImageError(failures[0]["error"])
        raise InputImageError(f"none of the {len(failures)} images could be read; the first: {failures[0]['error']}")
    document = coco_document(images_json, results, list(predictor.metadata.class_names), str(args.model))
    with atomic_path(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(document))
    with atomic_path(args.out / "images.json") as tmp:
        tmp.write_text(json.dumps({"images": images_json}, indent=1))
    failures_path = args.out / "failures.json"
    if failures:
        with atomic_path(failures_path) as tmp:
            tmp.write_text(json.dumps({"failures": failures}, indent=1))
    elif failures_path.is_file():
        failures_path.unlink()  # it describes an earlier run
    done = len(images_json)
    print(
        f"{total} detections in {done} images; wrote {args.out / 'results.json'}"
        + ("" if args.no_overlays else f" and {done} overlays")
        + (f" and {done} files in {args.out / PER_IMAGE_JSON_DIR}" if json_names else "")
    )
    if not failures:
        return 0
    for failure in failures:
        print(f"maskrcnn-deploy infer: failed: {failure['error']}", file=sys.stderr)
    not_run = len(files) - done - len(failures)
    print(
        f"maskrcnn-deploy infer: {len(failures)} of {len(files)} images failed"
        + (f" ({not_run} not run: --on-error stop)" if not_run else "")
        + f"; listed in {failures_path}",
        file=sys.stderr,
    )
    return 1
