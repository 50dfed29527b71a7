"""Output images: float -> uint8, atomic image writes, grounding overlays, output file names.

Torch-free (numpy + Pillow). The output format follows the file extension (`IMAGE_FORMATS`: PNG,
JPEG, WebP); any other extension is a one-line RequestError before anything is computed.
"""

from __future__ import annotations

import contextlib
import math
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


# Extension -> Pillow format of the files `generate` writes (lossless PNG first: the default).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# COCO keypoint skeleton (0-based indices into the 17 keypoints: nose, eyes, ears, shoulders,
# elbows, wrists, hips, knees, ankles; left before right), as drawn by COCO's own tools.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


def image_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format `path`'s extension names (case-insensitive); RequestError (one line) otherwise."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in IMAGE_FORMATS:
        named = f"extension {ext!r}" if ext else "no extension"
        raise RequestError(
            f"output {os.fspath(path)!r} has {named}: end it in .png, .jpg or .webp (the format follows the extension)"
        )
    return IMAGE_FORMATS[ext]


def overlay_path(path: str | os.PathLike[str]) -> str:
    """The overlay written beside an output image: NAME_overlay.EXT (same folder and format)."""
    stem, ext = os.path.splitext(os.fspath(path))
    return f"{stem}_overlay{ext}"


def save_image(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` to `path` atomically in the format its extension names (`image_format`)."""
    _save(path, array, image_format(path))


def save_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` ((H, W, 3) or (H, W) uint8) to `path` as PNG, atomically (any file name)."""
    _save(path, array, "PNG")


def _save(path: str | os.PathLike[str], array: np.ndarray, fmt: str) -> None:
    """Write `array` ((H, W, 3) or (H, W) uint8) to `path` in Pillow format `fmt`, atomically.

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
            image = Image.fromarray(arr)
            if fmt == "JPEG" and image.mode == "RGBA":
                image = image.convert("RGB")
            image.save(f, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
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
    condition: np.ndarray | None = None,
) -> np.ndarray:
    """The image with its grounding drawn on: a new (H, W, 3) uint8 array (the input is not changed).

    image: (H, W, 3) uint8. objects: GroundedObjects (labelled with their phrase, else their
    image's file name) or plain normalised boxes (x0, y0, x1, y1) with optional `labels`.
    Boxes become coloured rectangles with their label on a filled tag at the top-left corner;
    `persons` become their COCO skeleton (limbs as lines, keypoints as dots; one colour per
    person; missing keypoints and their limbs are skipped). `condition`: the spatial model's map as
    the model saw it ((H, W, 3) uint8, see `condition_preview`), blended 50 % over the image.
    Text uses Pillow's default font.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {arr.dtype} {arr.shape}")
    height, width = arr.shape[:2]
    if condition is not None:
        cond = np.asarray(condition)
        if cond.shape != arr.shape or cond.dtype != np.uint8:
            raise ValueError(
                f"condition must be {arr.shape} uint8 like the image, got {cond.dtype} {cond.shape}"
            )
        arr = ((arr.astype(np.uint16) + cond.astype(np.uint16) + 1) // 2).astype(np.uint8)
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
        points = [None if kp is None else (kp[0] * width, kp[1] * height) for kp in person.keypoints]
        for a, b in COCO_SKELETON:
            if a < len(points) and b < len(points) and points[a] is not None and points[b] is not None:
                draw.line((points[a], points[b]), fill=colour, width=max(2, line + 1))
        for pt in points:
            if pt is None:
                continue
            cx, cy = pt
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour, outline=(0, 0, 0))
    return np.asarray(canvas, dtype=np.uint8)


def condition_preview(source: str | os.PathLike[str], modality: str, height: int, width: int) -> np.ndarray:
    """A spatial model's condition map as the model sees it, for overlays: (height, width, 3) uint8.

    The same crop and resize as the grounding input (gligen_rt.core.grounding.condition_input);
    a sem label map is shown with one colour per class id.
    """
    from gligen_rt.core.grounding import condition_input
    from gligen_rt.core.modality import Modality

    m = Modality(modality)
    cond = condition_input(source, m, height, width)["condition"]  # (Cc, H, W)
    if m is Modality.SEM:
        ids = cond.argmax(axis=0)
        rng = np.random.default_rng(0)  # a fixed, distinct colour per class id
        colours = rng.integers(40, 256, (cond.shape[0], 3), dtype=np.uint8)
        return colours[ids]
    return np.round((np.clip(cond, -1, 1) * 0.5 + 0.5) * 255).astype(np.uint8).transpose(1, 2, 0)


def output_paths(out: str | os.PathLike[str], n: int) -> list[str]:
    """Where n images go: [out] when n == 1, else out_0.png, out_1.png, ... (suffix kept, .png if none)."""
    out = os.fspath(out)
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(n)]


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 images (or batches) of equal shape (inf when identical): the one
    definition the tests, the benchmarks and the runtime's checks use."""
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image {a.shape} and reference {b.shape} differ in shape")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
