"""`maskrcnn-deploy infer MODEL IMAGES... --out DIR`: overlay PNGs and COCO results for a set of images.

Writes ``DIR/<image name>.png`` (the image with masks, boxes and labels drawn), ``DIR/results.json`` (COCO
results: one entry per detection with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in image pixels,
``score`` and an RLE ``segmentation``) and ``DIR/images.json`` (COCO ``images`` entries: which ``image_id`` is
which file). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

from deploy_sdk.errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model: .onnx (onnxruntime), .engine (tensorrt) or a checkpoint (torch)")
    parser.add_argument("images", nargs="+", type=Path, help="image files, or directories of images")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=4, help="images per inference call (default 4)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                        help="default: from the model file's suffix")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop detections below this score (default: the model's own threshold)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the backend")
    parser.add_argument("--no-overlays", action="store_true", help="write only the JSON files")


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
    """One output name per input; a stem shared by several inputs gets the input's index appended."""
    counts: Dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    return [f"{f.stem}.png" if counts[f.stem] == 1 else f"{f.stem}-{i}.png" for i, f in enumerate(files)]


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from deploy_sdk.atomic_file import atomic_path
    from deploy_sdk.predictor import Predictor
    from deploy_sdk.preprocessing import load_image
    from deploy_sdk.progress import ProgressBar

    files = expand_images(list(args.images))
    predictor = Predictor(
        args.model,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        score_threshold=args.score_threshold,
        threads=args.threads,
        mask_format="box",  # overlays and RLE need no [N, H, W] array per image
    )
    print(f"{predictor}: {len(files)} images -> {args.out}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    names = _overlay_names(files)
    results: List[dict] = []
    images_json: List[dict] = []
    total = 0
    with ProgressBar(len(files), "infer") as bar:
        for index, det in enumerate(predictor.predict_iter(files, batch_size=args.batch_size)):
            image_id = index + 1
            height, width = det.image_size
            images_json.append({"id": image_id, "file_name": str(files[index]), "height": height, "width": width})
            results.extend(det.to_coco(image_id))
            total += len(det)
            if not args.no_overlays:
                overlay = det.draw(load_image(files[index]))
                with atomic_path(args.out / names[index]) as tmp:
                    Image.fromarray(overlay).save(tmp, format="PNG")
            bar.update()
    with atomic_path(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(results))
    with atomic_path(args.out / "images.json") as tmp:
        tmp.write_text(json.dumps({"images": images_json}, indent=1))
    print(f"{total} detections in {len(files)} images; wrote {args.out / 'results.json'}"
          + ("" if args.no_overlays else f" and {len(files)} overlays"))
    return 0
