"""The wire format of the online service: request bodies to images, :class:`~deploy_sdk.Detections` to JSON.

Requests (``POST /predict``):

- one image as the whole body, ``Content-Type`` an image type (``image/jpeg``, ``image/png``, ...) or
  ``application/octet-stream``;
- several images as ``multipart/form-data``, one file part per image, answered in the order of the parts.

Every way a request can be wrong is a :class:`RequestError` carrying the HTTP status and a one-line reason:
400 (empty body, not a decodable image, malformed multipart, an unknown ``mask_format``), 413 (body or image
larger than the service accepts), 415 (a content type that is not an image or multipart). Bad requests never
reach the model, so they cannot take a replica down.

Responses: ``{"results": [{"image_size": [H, W], "num_detections": N, "detections": [...]}, ...]}``, one entry per
image. A detection is ``{"box": [x1, y1, x2, y2], "score", "label", "class_name", "mask"}``: box in original image
pixels (float32 values, exact in JSON), ``label`` the model's class id. ``mask`` by the request's ``mask_format``:

- ``rle`` (default): COCO RLE of the mask pasted to the whole image, ``{"size": [H, W], "counts": str}``, the
  compressed form pycocotools reads (:func:`deploy_sdk.detections.encode_rle`);
- ``box``: the same mask restricted to its bounding region, ``{"size": [h, w], "counts": str, "offset": [x, y]}``
  (x, y of the region's top-left pixel): far smaller for small objects in large images;
- ``none``: no ``mask`` key.

Standard library, numpy and Pillow only: no Ray here, so the format is testable and reusable without it.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from deploy_sdk.detections import Detections, encode_rle
from deploy_sdk.errors import DeploySdkError, InputImageError

__all__ = [
    "RequestError",
    "RequestLimits",
    "JSON_MASK_FORMATS",
    "IMAGE_CONTENT_TYPES",
    "check_mask_format",
    "decode_request",
    "decode_image_bytes",
    "detections_to_json",
]

JSON_MASK_FORMATS = ("rle", "box", "none")
IMAGE_CONTENT_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "application/octet-stream",
)
_MULTIPART = "multipart/form-data"


class RequestError(DeploySdkError):
    """A request the service refuses: ``status`` (an HTTP 4xx code) and a one-line ``reason``."""

    def __init__(self, status: int, reason: str):
        self.status = int(status)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause's message looked like
        super().__init__(f"HTTP {self.status}: {self.reason}")


class RequestLimits:
    """What one request may carry: ``max_body_bytes`` (whole body), ``max_images`` (parts of a multipart body),
    ``max_pixels`` (per image, checked from the image header before any pixel is decoded)."""

    def __init__(self, max_body_bytes: int = 32 * 1024 * 1024, max_images: int = 16, max_pixels: int = 40_000_000):
        for name, value in (("max_body_bytes", max_body_bytes), ("max_images", max_images), ("max_pixels", max_pixels)):
            if int(value) < 1:
                raise DeploySdkError(f"{name} must be a positive integer, got {value}")
        self.max_body_bytes = int(max_body_bytes)
        self.max_images = int(max_images)
        self.max_pixels = int(max_pixels)

    def __repr__(self) -> str:
        return (
            f"RequestLimits(max_body_bytes={self.max_body_bytes}, max_images={self.max_images}, "
            f"max_pixels={self.max_pixels})"
        )


def check_mask_format(value: Optional[str]) -> str:
    """The request's ``mask_format`` query parameter, default ``rle``; 400 for anything else."""
    if value is None or value == "":
        return "rle"
    if value not in JSON_MASK_FORMATS:
        raise RequestError(400, f"mask_format={value!r} is not one of {', '.join(JSON_MASK_FORMATS)}")
    return value


def _media_type(content_type: str) -> Tuple[str, Dict[str, str]]:
    from email.message import Message

    msg = Message()
    msg["content-type"] = content_type
    params = {str(k).lower(): str(v) for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type().lower(), params


def decode_request(body: bytes, content_type: Optional[str], limits: RequestLimits) -> List[Tuple[str, np.ndarray]]:
    """``(name, image)`` pairs, image [H, W, 3] uint8 RGB, from a request body and its ``Content-Type``.

    ``name`` is "image" for a single-image body and the part's file name (or field name, or ``part N``) for a
    multipart one. Raises :class:`RequestError` (4xx) for every kind of bad request.
    """
    if len(body) > limits.max_body_bytes:
        raise RequestError(
            413,
            f"request body is {len(body)} bytes, more than this service accepts "
            f"({limits.max_body_bytes}); send a smaller image or split the request",
        )
    if not body:
        raise RequestError(
            400,
            "empty request body; send an encoded image (JPEG, PNG, ...) as the body, or "
            "multipart/form-data with one file part per image",
        )
    if not content_type:
        raise RequestError(415, "missing Content-Type; use an image type (e.g. image/jpeg) or multipart/form-data")
    media, params = _media_type(content_type)
    if media == _MULTIPART:
        parts = _multipart_parts(body, params.get("boundary"), limits)
        return [(name, decode_image_bytes(data, name, limits)) for name, data in parts]
    if media not in IMAGE_CONTENT_TYPES:
        raise RequestError(
            415, f"Content-Type {media} is not accepted; use one of {', '.join(IMAGE_CONTENT_TYPES)} or {_MULTIPART}"
        )
    return [("image", decode_image_bytes(body, "image", limits))]


def _multipart_parts(body: bytes, boundary: Optional[str], limits: RequestLimits) -> List[Tuple[str, bytes]]:
    """The file parts of a multipart/form-data body (RFC 7578), as (name, bytes), in order."""
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary parameter in Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    # chunks[0] is the preamble; the part after the closing delimiter starts with "--".
    parts: List[Tuple[str, bytes]] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        if not chunk.startswith(b"\r\n"):
            raise RequestError(400, "malformed multipart body: a boundary is not followed by CRLF")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(400, "malformed multipart body: a part has no blank line after its headers")
        if not data.endswith(b"\r\n"):
            raise RequestError(400, "malformed multipart body: a part does not end with CRLF before the boundary")
        data = data[:-2]
        name = _part_name(head.decode("latin-1"), len(parts))
        parts.append((name, data))
        if len(parts) > limits.max_images:
            raise RequestError(413, f"more than {limits.max_images} images in one request; split the request")
    if not closed:
        raise RequestError(400, "malformed multipart body: no closing boundary (--BOUNDARY--)")
    if not parts:
        raise RequestError(400, "multipart body without any part; send one file part per image")
    return parts


def _part_name(headers: str, index: int) -> str:
    from email.parser import Parser

    msg = Parser().parsestr(headers + "\r\n\r\n", headersonly=True)
    disposition = msg.get("content-disposition")
    if disposition is not None:
        filename = msg.get_param("filename", header="content-disposition")
        field = msg.get_param("name", header="content-disposition")
        for value in (filename, field):
            if isinstance(value, str) and value:
                return value
    return f"part {index}"


def decode_image_bytes(data: bytes, what: str, limits: RequestLimits) -> np.ndarray:
    """An encoded image (any format Pillow reads) as [H, W, 3] uint8 RGB, EXIF orientation applied, as
    :func:`deploy_sdk.preprocessing.load_image` reads a file; :class:`RequestError` when it is not one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from deploy_sdk.preprocessing import load_image

    if not data:
        raise RequestError(400, f"{what}: empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
                if width * height > limits.max_pixels:
                    raise RequestError(
                        413,
                        f"{what}: {width}x{height} = {width * height} pixels is more than this "
                        f"service accepts ({limits.max_pixels}); downscale the image first",
                    )
                im.load()
                if im.getexif().get(0x0112, 1) in range(2, 9):
                    ImageOps.exif_transpose(im, in_place=True)
                return np.ascontiguousarray(load_image(im, what=what))
    except RequestError:
        raise
    except InputImageError as exc:
        raise RequestError(400, str(exc)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(413, f"{what}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise RequestError(
            400, f"{what}: not an image (no format Pillow reads, JPEG, PNG, ..., was recognized)"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow: OSError for truncated or corrupt data, ValueError/SyntaxError for malformed headers.
        raise RequestError(400, f"{what}: not a decodable image ({exc})") from exc


def detections_to_json(det: Detections, mask_format: str = "rle") -> Dict[str, Any]:
    """One image's result as JSON-ready data (see the module docstring).

    ``det`` may carry its masks in any form (full, box-cropped, RLE); the service runs its predictor with
    box-cropped masks, the cheapest to turn into either JSON form.
    """
    if mask_format not in JSON_MASK_FORMATS:
        raise DeploySdkError(f"mask_format must be one of {', '.join(JSON_MASK_FORMATS)}, got {mask_format!r}")
    height, width = (int(v) for v in det.image_size)
    names = det.names
    masks: Optional[List[Dict[str, Any]]] = None
    if mask_format != "none" and det.has_masks:
        masks = _rle_masks(det, mask_format)
    detections = []
    for i in range(len(det)):
        entry: Dict[str, Any] = {
            "box": [float(v) for v in det.boxes[i]],
            "score": float(det.scores[i]),
            "label": int(det.labels[i]),
            "class_name": names[i],
        }
        if masks is not None:
            entry["mask"] = masks[i]
        detections.append(entry)
    return {"image_size": [height, width], "num_detections": len(det), "detections": detections}


def _rle_masks(det: Detections, mask_format: str) -> List[Dict[str, Any]]:
    height, width = (int(v) for v in det.image_size)
    if det.mask_crops is None or det.mask_offsets is None:
        full = det.full_masks()
        assert full is not None
        crops, offsets = [], []
        for m in full:  # the bounding region of each pasted mask
            ys, xs = np.nonzero(m)
            if ys.size == 0:
                crops.append(np.zeros((0, 0), bool))
                offsets.append((0, 0))
                continue
            y0, x0 = int(ys.min()), int(xs.min())
            crops.append(m[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1])
            offsets.append((x0, y0))
    else:
        crops, offsets = list(det.mask_crops), [tuple(o) for o in det.mask_offsets.tolist()]
    out = []
    for crop, (x, y) in zip(crops, offsets):
        if mask_format == "box":
            rle = encode_rle(crop)
            rle["offset"] = [int(x), int(y)]
        else:
            full = np.zeros((height, width), dtype=bool)
            full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            rle = encode_rle(full)
        out.append(rle)
    return out
