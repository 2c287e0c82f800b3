"""`Detections`: the result of one image, in the original image's pixel coordinates.

Masks come in one of three forms, chosen by ``Predictor(mask_format=...)``:

- ``"full"`` (default): ``masks`` [N, H, W] bool, pasted to the whole image;
- ``"box"``: ``mask_crops[i]`` bool [h_i, w_i] with ``mask_offsets[i]`` = (x, y) of its top-left pixel, i.e. the
  full mask restricted to the region where it can be non-zero (memory ~ box area, not image area);
- ``"rle"``: ``rles[i]``, COCO run-length encoding (``{"size": [H, W], "counts": str}``, column-major, the
  compressed string form pycocotools writes);
- ``"none"``: no masks.

:meth:`Detections.full_masks` gives [N, H, W] bool from whichever form is stored.

Memory of the default: full masks take H * W bytes per detection (numpy bool), so a 6000x4000 photograph with
100 detections holds 2.4 GB of masks; ``"box"`` and ``"rle"`` grow with the objects instead of the image.
:class:`~deploy_sdk.Predictor` warns once when the full masks of one call pass
:data:`FULL_MASK_WARN_BYTES`.

Each :class:`Detections` made by a predictor keeps a reference to its input (``source``: the path, array or PIL
image as given, not a decoded copy), so ``det.draw()``, ``det.plot()`` and ``det.save("overlay.png")`` need no
image argument; a path is decoded again when drawn.
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["Detections", "encode_rle", "decode_rle", "FULL_MASK_WARN_BYTES", "label_font_size"]

# Predictor warns once when the full masks ([N, H, W] bool) returned by one call are larger than this.
FULL_MASK_WARN_BYTES = 512 * 2**20
_OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Detections:
    """Instances found in one image, sorted by descending score.

    - ``boxes``: [N, 4] float32, x1 y1 x2 y2 in original image pixels
    - ``scores``: [N] float32 in 0..1
    - ``labels``: [N] int64, the checkpoint's class ids (0 is the background and never appears)
    - ``masks``: [N, H, W] bool pasted to the full image (the default), or ``None`` for the other mask formats
    - ``class_names``: the model's names, indexed by label id
    - ``image_size``: (height, width) of the original image
    - ``mask_crops`` / ``mask_offsets``: box-cropped masks (``mask_format="box"``), see the module docstring
    - ``rles``: COCO RLE per detection (``mask_format="rle"``)
    - ``source``: the input image as it was given to the predictor (a path, an array or a PIL image; not a copy),
      used by :meth:`draw`, :meth:`plot` and :meth:`save` when no image is passed; ``source_channel_order`` is
      the predictor's ``channel_order`` for array inputs
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: Optional[np.ndarray]
    class_names: List[str] = field(default_factory=list)
    image_size: tuple = (0, 0)
    mask_crops: Optional[List[np.ndarray]] = None
    mask_offsets: Optional[np.ndarray] = None
    rles: Optional[List[Dict[str, Any]]] = None
    source: Any = field(default=None, repr=False, compare=False)
    source_channel_order: str = field(default="rgb", repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        form = (
            "full"
            if self.masks is not None
            else "box"
            if self.mask_crops is not None
            else ("rle" if self.rles is not None else "none")
        )
        h, w = self.image_size
        more = "..." if len(self) > 5 else ""
        return f"Detections({len(self)} in a {h}x{w} image, masks={form}, labels={self.names[:5]}{more})"

    @property
    def names(self) -> List[str]:
        """Class name of each detection."""
        return [self.class_names[i] if 0 <= i < len(self.class_names) else f"class_{i}" for i in self.labels.tolist()]

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.mask_crops is not None or self.rles is not None

    @classmethod
    def empty(cls, image_size, class_names: Sequence[str] = (), mask_format: str = "full") -> Detections:
        """No detections in an image of ``image_size`` (height, width), masks in ``mask_format``."""
        h, w = int(image_size[0]), int(image_size[1])
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            masks=np.zeros((0, h, w), bool) if mask_format == "full" else None,
            class_names=list(class_names),
            image_size=(h, w),
            mask_crops=[] if mask_format == "box" else None,
            mask_offsets=np.zeros((0, 2), np.int64) if mask_format == "box" else None,
            rles=[] if mask_format == "rle" else None,
        )

    def full_masks(self) -> Optional[np.ndarray]:
        """[N, H, W] bool masks in image pixels from whichever form is stored; ``None`` without masks."""
        if self.masks is not None:
            return self.masks
        h, w = int(self.image_size[0]), int(self.image_size[1])
        if self.mask_crops is not None and self.mask_offsets is not None:
            out = np.zeros((len(self.mask_crops), h, w), dtype=bool)
            for i, (crop, (x, y)) in enumerate(zip(self.mask_crops, self.mask_offsets.tolist())):
                out[i, y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            return out
        if self.rles is not None:
            return np.stack([decode_rle(r) for r in self.rles]) if self.rles else np.zeros((0, h, w), bool)
        return None

    def _mask_region(self, i: int):
        """(x, y, mask) of detection ``i``: its mask over the region where it can be non-zero, whose top-left
        pixel is (x, y) in the image."""
        if self.masks is not None:
            return 0, 0, self.masks[i]
        if self.mask_crops is not None and self.mask_offsets is not None:
            x, y = (int(v) for v in self.mask_offsets[i])
            return x, y, self.mask_crops[i]
        assert self.rles is not None
        return 0, 0, decode_rle(self.rles[i])

    def to_coco(self, image_id: int, category_ids: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
        """COCO results entries: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation"}``.

        ``bbox`` is in original image pixels (x, y of the top-left corner, width, height), as COCO wants.
        ``category_ids[label]`` maps label ids to the data set's category ids (default: the label id itself).
        ``segmentation`` (only when the detections carry masks) is a compressed COCO RLE.
        """
        rles = self.rles
        if rles is None and self.has_masks:
            rles = self._rles_from_masks()
        results = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            label = int(self.labels[i])
            entry: Dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]) if category_ids is not None else label,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(self.scores[i]), 5),
            }
            if rles is not None:
                entry["segmentation"] = rles[i]
            results.append(entry)
        return results

    def _rles_from_masks(self) -> List[Dict[str, Any]]:
        # One mask at a time, so box-cropped results never materialize [N, H, W].
        h, w = int(self.image_size[0]), int(self.image_size[1])
        if self.masks is not None:
            return [encode_rle(m) for m in self.masks]
        out = []
        assert self.mask_crops is not None and self.mask_offsets is not None
        for crop, (x, y) in zip(self.mask_crops, self.mask_offsets.tolist()):
            full = np.zeros((h, w), dtype=bool)
            full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            out.append(encode_rle(full))
        return out

    def draw(
        self,
        image: Any = None,
        alpha: float = 0.45,
        show_labels: bool = True,
        min_score: float = 0.0,
        font_size: Optional[int] = None,
    ) -> np.ndarray:
        """An overlay: the original image with masks tinted in one colour per detection scoring at least
        ``min_score``, box outlines and "name score" labels. Returns a new [H, W, 3] uint8 RGB array.

        ``image``: the original image ([H, W, 3] uint8 RGB array, path or PIL image); default: :attr:`source`, the
        input the predictor was given. ``font_size``: label height in pixels; default
        :func:`label_font_size` of the image (grows with the image, so labels stay readable on photographs).
        """
        from PIL import Image, ImageDraw

        from deploy_sdk.preprocessing import load_image

        if image is None:
            if self.source is None:
                raise ValueError(
                    "these detections carry no source image (made without a Predictor, or the source was dropped): "
                    "pass the image, draw(image)"
                )
            img = np.array(load_image(self.source, self.source_channel_order, what="the source image"), dtype=np.uint8)
        else:
            img = np.array(load_image(image), dtype=np.uint8)  # copy: the caller's image is not modified
        if img.shape[:2] != tuple(self.image_size):
            raise ValueError(f"image is {img.shape[:2]} but these detections are for {tuple(self.image_size)}")
        colors = _palette(len(self))
        shown = [i for i in range(len(self)) if float(self.scores[i]) >= min_score]
        if self.has_masks:
            # One mask at a time, over its own region: box-cropped and RLE results never become [N, H, W].
            for i in shown:
                x, y, crop = self._mask_region(i)
                region = img[y : y + crop.shape[0], x : x + crop.shape[1]]
                tinted = region[crop].astype(np.float32) * (1.0 - alpha) + colors[i] * alpha
                region[crop] = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        size = int(font_size) if font_size else label_font_size(img.shape[0], img.shape[1])
        font = _font(size)
        line = max(1, round(size / 6))
        for i in shown:
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            color = tuple(int(c) for c in colors[i])
            draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
            if show_labels:
                text = f"{self.names[i]} {float(self.scores[i]):.2f}"
                left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
                tx, ty = x1 + line, max(y1 - (bottom - top) - 2 * line, 0)
                draw.rectangle([tx + left - 1, ty + top - 1, tx + right + 1, ty + bottom + 1], fill=(0, 0, 0))
                draw.text((tx, ty), text, fill=color, font=font)
        return np.asarray(pil)

    def plot(self, image: Any = None, min_score: float = 0.5, **kwargs: Any) -> np.ndarray:
        """The overlay as :meth:`draw` makes it, of the detections scoring at least ``min_score`` (default 0.5,
        as ``infer --draw-min-score``): [H, W, 3] uint8 RGB, e.g. for ``PIL.Image.fromarray`` or ``plt.imshow``."""
        return self.draw(image, min_score=min_score, **kwargs)

    def to_dict(self, image_id: Optional[int] = None) -> Dict[str, Any]:
        """Plain-JSON form: ``{"image_size": [H, W], "detections": [{"label", "name", "score", "box": [x1, y1, x2,
        y2], "segmentation"?}]}`` (plus ``"image_id"`` when given, and ``"file_name"`` when the source is a path).
        ``segmentation`` is a compressed COCO RLE, present when the detections carry masks. Schema:
        docs/json_schemas.md."""
        rles = self.rles if self.rles is not None else (self._rles_from_masks() if self.has_masks else None)
        names = self.names
        items = []
        for i in range(len(self)):
            item: Dict[str, Any] = {
                "label": int(self.labels[i]),
                "name": names[i],
                "score": round(float(self.scores[i]), 5),
                "box": [round(float(v), 3) for v in self.boxes[i]],
            }
            if rles is not None:
                item["segmentation"] = rles[i]
            items.append(item)
        out: Dict[str, Any] = {}
        if image_id is not None:
            out["image_id"] = int(image_id)
        if isinstance(self.source, (str, os.PathLike)):
            out["file_name"] = os.fspath(self.source)
        out["image_size"] = [int(self.image_size[0]), int(self.image_size[1])]
        out["detections"] = items
        return out

    def to_json(self, image_id: Optional[int] = None, indent: Optional[int] = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(image_id), indent=indent)

    def save(self, path: Union[str, os.PathLike[str]], image: Any = None, min_score: float = 0.5) -> Path:
        """Write the overlay (``.png``, ``.jpg``, ... as :meth:`plot` draws it) or the detections as JSON
        (``.json``, :meth:`to_json`), by the suffix of ``path``; atomically. Returns the path."""
        from deploy_sdk.atomic_file import atomic_path
        from deploy_sdk.errors import DeploySdkError

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = self.to_json(indent=1)
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            return path
        if suffix not in _OVERLAY_SUFFIXES:
            raise DeploySdkError(
                f"cannot tell what to save from the suffix of {path}: use .json (the detections) or an image "
                f"suffix ({', '.join(_OVERLAY_SUFFIXES)}) for the overlay"
            )
        from PIL import Image

        overlay = Image.fromarray(self.plot(image, min_score=min_score))
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, suffix[1:].upper())
        with atomic_path(path) as tmp:
            overlay.save(tmp, format=fmt)
        return path


def label_font_size(height: int, width: int) -> int:
    """Label text height for an overlay of a ``height`` x ``width`` image: 2.5% of the shorter side, at least 11
    pixels (readable on small images, not tiny on 24-megapixel photographs)."""
    return max(11, int(round(min(int(height), int(width)) * 0.025)))


_FONTS: Dict[int, Any] = {}


def _font(size: int) -> Any:
    """PIL's scalable default font (a TrueType font bundled with Pillow 10.1+) at ``size`` pixels; the fixed bitmap
    font on older Pillow."""
    font = _FONTS.get(size)
    if font is None:
        from PIL import ImageFont

        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: no size argument
            font = ImageFont.load_default()
        _FONTS[size] = font
    return font


def _palette(n: int) -> np.ndarray:
    """``n`` distinct bright RGB colours (golden-angle hues), [n, 3] float32."""
    return (
        np.array(
            [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0) for i in range(n)], dtype=np.float32
        ).reshape(n, 3)
        * 255.0
    )


def encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO RLE of a [H, W] bool mask, with the compressed ``counts`` string pycocotools writes.

    Runs are counted in column-major order, starting with a (possibly empty) run of zeros. Each count is stored as
    its difference to the count two places back (from the fourth on), in 5-bit groups of a signed varint, each
    group + 48 as one ASCII character.
    """
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    flat = m.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = (x != -1) if (group & 0x10) else (x != 0)
            if more:
                group |= 0x20
            chars.append(chr(group + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def decode_rle(rle: Dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle` (also accepts uncompressed ``counts`` lists): [H, W] bool."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        values: List[int] = []
        pos = 0
        while pos < len(counts):
            x, shift, more = 0, 0, True
            while more:
                group = ord(counts[pos]) - 48
                pos += 1
                x |= (group & 0x1F) << shift
                more = bool(group & 0x20)
                shift += 5
                if not more and (group & 0x10):
                    x |= -1 << shift
            if len(values) > 2:
                x += values[-2]
            values.append(x)
        counts = values
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for i, c in enumerate(counts):
        if i % 2:
            flat[pos : pos + c] = True
        pos += c
    return flat.reshape((w, h)).T
