"""`maskrcnn-deploy data shapes --out DIR --num N --seed S`: a synthetic instance-segmentation data set.

Writes ``DIR/images/*.png`` and ``DIR/annotations.json`` (COCO, RLE masks). The set is built in a temporary
folder next to ``DIR`` and renamed into place at the end, so an interrupted run (Ctrl-C, SIGTERM, an error)
leaves no half-written set; with ``--overwrite`` the old set is replaced only once the new one is complete.
Files and folders get the usual umask-derived modes. Image sides are limited to :data:`MAX_SIDE` pixels.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from deploy_sdk.errors import DeploySdkError

# Largest image side: a sample is built in float32 with one full-size mask per object, about 65 bytes per pixel
# at peak, so a 4096x4096 image already needs ~1.1 GB while it is generated (and takes about 10 s).
MAX_SIDE = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["shapes"], help="data set kind: 'shapes' (textured occluding shapes)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/ and annotations.json)")
    parser.add_argument("--num", type=int, default=200, help="number of images (default 200)")
    parser.add_argument(
        "--seed", type=int, default=1000, help="seed; the shipped model was trained on seed 1 (default 1000)"
    )
    parser.add_argument(
        "--min-size", type=int, default=256, help=f"smallest image side in pixels, 32..{MAX_SIDE} (default 256)"
    )
    parser.add_argument(
        "--max-size", type=int, default=512, help=f"largest image side in pixels, 32..{MAX_SIDE} (default 512)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import cannot_write, check_output_dir, make_temp_dir
    from deploy_sdk.progress import ProgressBar
    from deploy_sdk.synthetic_shapes import SHAPE_CLASSES, write_dataset

    if args.num < 1:
        raise DeploySdkError(f"--num must be at least 1, got {args.num}")
    if args.seed < 0:
        raise DeploySdkError(f"--seed must be non-negative, got {args.seed}")
    if not 32 <= args.min_size <= args.max_size <= MAX_SIDE:
        raise DeploySdkError(
            f"need 32 <= --min-size <= --max-size <= {MAX_SIDE}, got --min-size {args.min_size} "
            f"--max-size {args.max_size}"
        )
    out: Path = args.out
    if out.exists():
        if not out.is_dir():
            raise DeploySdkError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()):
            ours = (out / "annotations.json").is_file() and (out / "images").is_dir()
            if not args.overwrite:
                raise DeploySdkError(f"--out {out} is not empty; choose another folder or pass --overwrite")
            if not ours:
                # Never delete a folder that this command did not write.
                raise DeploySdkError(f"--out {out} holds files that are not a data set of this tool; not replacing it")
    check_output_dir(out, "--out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, out.name)
    except OSError as exc:
        raise cannot_write(out, exc) from exc
    old = None
    try:
        with ProgressBar(args.num, f"data {args.kind}", enabled=not args.quiet) as bar:
            ann = write_dataset(
                tmp,
                num=args.num,
                seed=args.seed,
                min_size=args.min_size,
                max_size=args.max_size,
                progress=lambda done, total: bar.update(1),
            )
        if out.exists():
            # Move the old set aside rather than deleting it first: until the new one is in place, a failure
            # puts the old one back.
            old = make_temp_dir(out.parent, out.name + ".old")
            out.rename(old / out.name)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException as exc:
        if old is not None and (old / out.name).exists() and not out.exists():
            (old / out.name).rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(exc, OSError):
            raise cannot_write(out, exc) from exc
        raise
    coco = json.loads((out / ann.name).read_text())
    print(
        f"wrote {len(coco['images'])} images with {len(coco['annotations'])} instances of "
        f"{len(SHAPE_CLASSES)} classes to {out} (seed {args.seed}); annotations: {out / ann.name}"
    )
    return 0
