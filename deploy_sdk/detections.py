"""`Detections`: the result of one image, in the original image's pixel coordinates.

Masks come in one of three forms, chosen by ``Predictor(mask_format=...)``:

- ``"full"`` (default): ``masks`` [N, H, W] bool, pasted to the whole image;
- ``"box"``: ``mask_crops[i]`` bool [h_i, w_i] with ``mask_offsets[i]`` = (x, y) of its top-left pixel, i.e. the
  full mask restricted to the region where it can be non-zero (memory ~ box area, not image area);
- ``"rle"``: ``rles[i]``, COCO run-length encoding (``{"size": [H, W], "counts": str}``, column-major, the
  compressed string form pycocotools writes);
- ``"none"``: no masks.

:meth:`Detections.full_masks` gives [N, H, W] bool from whichever form is stored.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Detections", "encode_rle", "decode_rle"]


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

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        form = "full" if self.masks is not None else "box" if self.mask_crops is not None else (
            "rle" if self.rles is not None else "none")
        h, w = self.image_size
        return f"Detections({len(self)} in a {h}x{w} image, masks={form}, labels={self.names[:5]}{'...' if len(self) > 5 else ''})"

    @property
    def names(self) -> List[str]:
        """Class name of each detection."""
        return [self.class_names[i] if 0 <= i < len(self.class_names) else f"class_{i}" for i in self.labels.tolist()]

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.mask_crops is not None or self.rles is not None

    @classmethod
    def empty(cls, image_size, class_names: Sequence[str] = (), mask_format: str = "full") -> "Detections":
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
                out[i, y: y + crop.shape[0], x: x + crop.shape[1]] = crop
            return out
        if self.rles is not None:
            return np.stack([decode_rle(r) for r in self.rles]) if self.rles else np.zeros((0, h, w), bool)
        return None

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
            full[y: y + crop.shape[0], x: x + crop.shape[1]] = crop
            out.append(encode_rle(full))
        return out

    def draw(
        self, image: np.ndarray, alpha: float = 0.45, show_labels: bool = True, min_score: float = 0.0
    ) -> np.ndarray:
        """An overlay: ``image`` ([H, W, 3] uint8 RGB, the original image) with masks tinted in one colour per
        detection scoring at least ``min_score``, box outlines and "name score" labels. Returns a new [H, W, 3]
        uint8 array."""
        from PIL import Image, ImageDraw

        from deploy_sdk.preprocessing import load_image

        img = np.array(load_image(image), dtype=np.uint8)  # copy: the caller's image is not modified
        if img.shape[:2] != tuple(self.image_size):
            raise ValueError(f"image is {img.shape[:2]} but these detections are for {tuple(self.image_size)}")
        colors = _palette(len(self))
        shown = [i for i in range(len(self)) if float(self.scores[i]) >= min_score]
        masks = self.full_masks()
        if masks is not None:
            blended = img.astype(np.float32)
            for i in shown:
                m = masks[i]
                blended[m] = blended[m] * (1.0 - alpha) + colors[i] * alpha
            img = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        for i in shown:
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            color = tuple(int(c) for c in colors[i])
            draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
            if show_labels:
                text = f"{self.names[i]} {float(self.scores[i]):.2f}"
                tx, ty = x1 + 2, max(y1 - 12, 0)
                draw.rectangle(draw.textbbox((tx, ty), text), fill=(0, 0, 0))
                draw.text((tx, ty), text, fill=color)
        return np.asarray(pil)


def _palette(n: int) -> np.ndarray:
    """``n`` distinct bright RGB colours (golden-angle hues), [n, 3] float32."""
    return np.array(
        [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0) for i in range(n)], dtype=np.float32
    ).reshape(n, 3) * 255.0


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
            flat[pos: pos + c] = True
        pos += c
    return flat.reshape((w, h)).T
