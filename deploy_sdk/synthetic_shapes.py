"""Synthetic instance-segmentation data: textured, occluding shapes on cluttered backgrounds.

No public data set can be downloaded on the machines this project is built on, so the shipped model is trained
and evaluated on this generator. Each image is a pure function of ``(seed, index)``: the same call always
gives the same pixels and annotations, and sets generated with different seeds share no images.

Ground-truth masks are the *visible* parts of each object: objects drawn later occlude earlier ones, and an
object left with too little visible area is dropped from the annotations (its pixels stay, as clutter).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "ShapeSample",
    "generate_sample",
    "generate_samples",
    "HELD_OUT_SEED",
    "held_out_images",
    "write_dataset",
    "mask_to_rle",
]

# Label id i + 1 is SHAPE_CLASSES[i]; id 0 is the background, as in torchvision's detection models.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "hexagon", "cross")

# Objects whose visible area falls below this fraction of their full area are not annotated.
_MIN_VISIBLE_FRACTION = 0.35
_MIN_VISIBLE_PIXELS = 40


@dataclass
class ShapeSample:
    """One generated image and its instances.

    ``image``: [H, W, 3] uint8 RGB. ``masks``: [N, H, W] bool, visible part of each instance.
    ``labels``: [N] int64 in 1..len(SHAPE_CLASSES). ``boxes``: [N, 4] float32 x1 y1 x2 y2 in pixels, the tight
    box of the visible mask (x2/y2 exclusive, i.e. last pixel + 1).
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_polygon(kind: str, radius: float, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Vertices (unit-free, centred on 0) of a polygonal class; ``None`` for the circle."""
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        return None
    if kind == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        w, h = radius, radius * aspect
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind == "triangle":
        base = rng.uniform(-0.25, 0.25)
        a = np.array([0.0, 2 * math.pi / 3 + base, 4 * math.pi / 3 - base]) + math.pi / 2
        pts = radius * np.stack([np.cos(a), np.sin(a)], axis=1)
    elif kind == "star":
        inner = rng.uniform(0.38, 0.5)
        a = np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * inner)
        pts = np.stack([radii * np.cos(a), radii * np.sin(a)], axis=1)
    elif kind == "hexagon":
        a = np.arange(6) * math.pi / 3
        pts = radius * np.stack([np.cos(a), np.sin(a)], axis=1)
    elif kind == "cross":
        t = radius * rng.uniform(0.28, 0.4)
        r = radius
        pts = np.array(
            [[-t, -r], [t, -r], [t, -t], [r, -t], [r, t], [t, t], [t, r], [-t, r], [-t, t], [-r, t], [-r, -t], [-t, -t]]
        )
    else:  # pragma: no cover - internal table
        raise ValueError(kind)
    return _rotate(pts, angle)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """[h, w, 3] float32 fill: solid, stripes, checker or noisy, in random colors."""
    c1, c2 = _random_color(rng), _random_color(rng)
    kind = rng.integers(0, 4)
    if kind == 0:
        tex = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == 1:
        period = rng.uniform(4, 16)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        sel = (np.floor(phase) % 2).astype(bool)[..., None]
        tex = np.where(sel, c1, c2)
    elif kind == 2:
        cell = int(rng.integers(4, 14))
        yy, xx = np.mgrid[0:h, 0:w]
        sel = (((yy // cell) + (xx // cell)) % 2).astype(bool)[..., None]
        tex = np.where(sel, c1, c2)
    else:
        noise = rng.normal(0, 1, size=(h, w, 1)).astype(np.float32)
        tex = c1 + 35.0 * noise
    return tex.astype(np.float32)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = _random_color(rng), _random_color(rng)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    img += rng.normal(0, rng.uniform(3, 18), size=(h, w, 1)).astype(np.float32)
    return img


def _clutter(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Unannotated distractors: lines and arcs of random width and color."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(int(rng.integers(3, 12))):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, 4))
        if rng.random() < 0.6:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(2, 5)))]
            draw.line(pts, fill=color, width=width)
        else:
            x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            r = float(rng.uniform(5, max(6.0, min(w, h) / 4)))
            start = float(rng.uniform(0, 360))
            draw.arc(
                [x0 - r, y0 - r, x0 + r, y0 + r], start, start + float(rng.uniform(40, 200)), fill=color, width=width
            )


def _object_mask(
    kind: str, cx: float, cy: float, radius: float, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    poly = _shape_polygon(kind, radius, rng)
    if poly is None:
        d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        d.polygon([(float(x + cx), float(y + cy)) for x, y in poly], fill=255)
    return np.asarray(m) > 127


def generate_sample(
    seed: int,
    index: int,
    min_size: int = 256,
    max_size: int = 512,
    max_objects: int = 8,
) -> ShapeSample:
    """Generate image ``index`` of the set identified by ``seed``.

    Image sides are drawn in ``[min_size, max_size]`` independently (so aspect ratios vary); objects range from
    about 10 px across to most of the image.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x5A4E]))
    h = int(rng.integers(min_size, max_size + 1))
    w = int(rng.integers(min_size, max_size + 1))
    img = _background(h, w, rng)
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _clutter(canvas, rng)
    img = np.asarray(canvas).astype(np.float32)

    n = int(rng.integers(1, max_objects + 1))
    short = min(h, w)
    full_masks: List[np.ndarray] = []
    labels: List[int] = []
    for _ in range(n):
        label = int(rng.integers(0, len(SHAPE_CLASSES)))
        # log-uniform diameter from ~10 px to ~80% of the short side: many small objects, a few huge ones.
        diameter = math.exp(rng.uniform(math.log(10), math.log(0.8 * short)))
        radius = diameter / 2
        cx = rng.uniform(-0.1 * radius, w + 0.1 * radius)
        cy = rng.uniform(-0.1 * radius, h + 0.1 * radius)
        mask = _object_mask(SHAPE_CLASSES[label], cx, cy, radius, h, w, rng)
        if mask.sum() < _MIN_VISIBLE_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _texture(y1 - y0, x1 - x0, rng)
        region = img[y0:y1, x0:x1]
        sel = mask[y0:y1, x0:x1]
        region[sel] = tex[sel]
        full_masks.append(mask)
        labels.append(label + 1)

    # Visible masks: every later object hides what it covers of the earlier ones.
    visible: List[np.ndarray] = []
    keep_labels: List[int] = []
    covered = np.zeros((h, w), dtype=bool)
    for mask, label in zip(reversed(full_masks), reversed(labels)):
        vis = mask & ~covered
        covered |= mask
        if vis.sum() >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * mask.sum()):
            visible.append(vis)
            keep_labels.append(label)
    visible.reverse()
    keep_labels.reverse()

    # Slight global blur-free noise so flat fills are not trivially separable.
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    if visible:
        masks = np.stack(visible)
        boxes = np.stack([_mask_box(m) for m in visible]).astype(np.float32)
    else:
        masks = np.zeros((0, h, w), dtype=bool)
        boxes = np.zeros((0, 4), dtype=np.float32)
    return ShapeSample(image=image, masks=masks, labels=np.array(keep_labels, dtype=np.int64), boxes=boxes)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def generate_samples(seed: int, num: int, **kwargs) -> Iterator[ShapeSample]:
    for i in range(num):
        yield generate_sample(seed, i, **kwargs)


#: Seed of the held-out synthetic images that `check`, `convert` and `demo` use: never used in training (seed 1).
HELD_OUT_SEED = 2026


def held_out_images(num: int) -> Tuple[List[np.ndarray], List[str]]:
    """The first ``num`` held-out synthetic images (seed :data:`HELD_OUT_SEED`) and their names."""
    return [generate_sample(HELD_OUT_SEED, i).image for i in range(num)], [f"synthetic {i}" for i in range(num)]


def mask_to_rle(mask: np.ndarray) -> Dict[str, object]:
    """Uncompressed COCO RLE of a [H, W] bool mask (column-major runs, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def write_dataset(
    out_dir: Path,
    num: int,
    seed: int,
    min_size: int = 256,
    max_size: int = 512,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Path:
    """Write ``num`` images as PNG files under ``out_dir/images`` and ``out_dir/annotations.json`` (COCO)."""
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(num):
        s = generate_sample(seed, i, min_size=min_size, max_size=max_size)
        name = f"{seed:06d}_{i:06d}.png"
        Image.fromarray(s.image).save(img_dir / name)
        h, w = s.image.shape[:2]
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for mask, label, box in zip(s.masks, s.labels, s.boxes):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(mask.sum()),
                    "segmentation": mask_to_rle(mask),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        if progress is not None:
            progress(i + 1, num)
    coco = {
        "info": {"description": "maskrcnn-deploy synthetic shapes", "seed": seed, "num_images": num},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)],
    }
    ann_path = out_dir / "annotations.json"
    tmp = ann_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(coco))
    tmp.replace(ann_path)
    return ann_path
