"""Output images: float -> uint8, atomic PNG writes, grounding overlays, output file names.

Torch-free (numpy + Pillow).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gligen_rt.core.errors import NumericalError, RequestError
from gligen_rt.core.request import GroundedObject, Person

# Distinct, readable colours for boxes and persons (cycled).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoded images (B, 3, H, W) float, about [-1, 1] -> (B, H, W, 3) uint8.

    clamp(-1, 1) * 0.5 + 0.5, then * 255 and round half to even (numpy's round, as diffusers).
    NaN or Inf anywhere raises NumericalError.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise NumericalError(
            "the decoded images contain NaN or Inf: try fp32 engines, another seed, or fewer steps at fp16"
        )
    x = np.clip(x, -1.0, 1.0) * 0.5 + 0.5
    return np.round(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def save_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` ((H, W, 3) or (H, W) uint8) to `path` as PNG, atomically.

    The PNG is written to a temporary file in the same folder and moved over `path` with
    os.replace, so `path` is either untouched or complete. On any failure the temporary file is
    removed; an OSError (missing or unwritable folder, full disk) becomes a one-line RequestError,
    anything else is re-raised.
    """
    path = os.fspath(path)
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(
            f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {arr.dtype} {arr.shape}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        reason = " ".join(str(e.strerror or e).splitlines())
        raise RequestError(f"cannot write {path!r} ({reason}): choose an existing, writable folder") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def _box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        round(x0 * width),
        round(y0 * height),
        max(round(x0 * width), round(x1 * width) - 1),
        max(round(y0 * height), round(y1 * height) - 1),
    )


def draw_overlay(
    image: np.ndarray,
    objects: Sequence[GroundedObject] | Sequence[Sequence[float]] = (),
    labels: Sequence[str | None] | None = None,
    persons: Sequence[Person] | None = None,
) -> np.ndarray:
    """The image with its grounding drawn on: a new (H, W, 3) uint8 array (the input is not changed).

    image: (H, W, 3) uint8. objects: GroundedObjects (labelled with their phrase, else their
    image's file name) or plain normalised boxes (x0, y0, x1, y1) with optional `labels`.
    Boxes become coloured rectangles with their label on a filled tag at the top-left corner;
    keypoints of `persons` become dots (one colour per person; missing ones are skipped).
    Text uses Pillow's default font.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    canvas = Image.fromarray(arr.copy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = max(1, min(height, width) // 170)

    for i, obj in enumerate(objects):
        if isinstance(obj, GroundedObject):
            box = obj.box
            label = obj.phrase if obj.phrase else (os.path.basename(obj.image) if obj.image else None)
        else:
            box = tuple(obj)
            label = None
        if labels is not None and i < len(labels) and labels[i] is not None:
            label = labels[i]
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = _box_pixels(box, height, width)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        if label:
            left, top, right, bottom = draw.textbbox((x0, y0), label, font=font)
            ty = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
            tb = draw.textbbox((x0 + 1, ty), label, font=font)
            draw.rectangle((tb[0] - 1, tb[1] - 1, tb[2] + 1, tb[3] + 1), fill=colour)
            draw.text((x0 + 1, ty), label, fill=(0, 0, 0), font=font)

    radius = max(2, min(height, width) // 128)
    for p, person in enumerate(persons or ()):
        colour = PALETTE[p % len(PALETTE)]
        for kp in person.keypoints:
            if kp is None:
                continue
            cx, cy = kp[0] * width, kp[1] * height
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour, outline=(0, 0, 0))
    return np.asarray(canvas, dtype=np.uint8)


def output_paths(out: str | os.PathLike[str], n: int) -> list[str]:
    """Where n images go: [out] when n == 1, else out_0.png, out_1.png, ... (suffix kept, .png if none)."""
    out = os.fspath(out)
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(n)]
