"""The `grounding` engine's inputs as numpy arrays, and the image preprocessing that feeds them.

Torch-free: the reference pipeline and the runtime build their grounding inputs here, so both
see identical arrays. Names are the engine's input names (ARCHITECTURE.md). Builders return one
unbatched example (no batch axis); `stack_cfg` / `repeat` add the batch axis. All arrays float32.

- text-box:       boxes (30, 4), masks (30,), phrase_embeddings (30, D)
- text-image-box: boxes (30, 4), masks (30,), text_masks (30,), image_masks (30,),
                  phrase_embeddings (30, D), image_embeddings (30, D)
- keypoint:       points (136, 2), masks (136,)
- spatial:        condition (Cc, H, W) in [-1, 1] (sem: 152-channel one-hot of 0/1), masks (1,)

Padding slots are zero with mask 0 (the original's and diffusers' convention).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import (
    CONDITION_CHANNELS,
    MAX_OBJECTS,
    MAX_PERSONS,
    NUM_KEYPOINTS,
    SEM_CLASSES,
    Modality,
)
from gligen_rt.core.request import GroundedObject, Person

# The demo's box for the style-image object: a thin strip along the top edge.
STYLE_BOX = (0.0, 0.0, 1.0, 0.01)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Inputs = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Boxes


def box_inputs(
    objects: Sequence[GroundedObject],
    phrase_embeddings: np.ndarray,
    image_embeddings: np.ndarray | None = None,
    text_image: bool = False,
    style_embedding: np.ndarray | None = None,
) -> Inputs:
    """Grounding inputs of a box model for one image, padded to 30 slots, objects in the given order.

    phrase_embeddings: (n_phr, D) float, one row per object with `has_phrase`, in object order
        (the CLIP text pooled output of each phrase; (0, D) when no object has one).
    image_embeddings: (n_img, D) float, one row per object that has an image, in object order
        (the projected, renormalised CLIP image embedding); text-image only, None when n_img == 0.
    text_image: build the text-image-box inputs (else text-box: every object needs a phrase and
        images are ignored).
    style_embedding: (D,) or (1, D) embedding of a style image (text-image only): appended after
        the objects as one more slot with box STYLE_BOX, text_mask 0, image_mask 1 (the demo's
        style trick); it counts toward the 30 slots.

    Returns boxes (30, 4), masks (30,), phrase_embeddings (30, D), and for text-image also
    text_masks (30,), image_masks (30,), image_embeddings (30, D); float32. masks is 1 for every
    used slot, text_masks / image_masks 1 where a phrase / image was given.
    """
    phr = np.asarray(phrase_embeddings, dtype=np.float32)
    if phr.ndim != 2:
        raise ValueError(f"phrase_embeddings must be (n_phr, D), got shape {phr.shape}")
    dim = phr.shape[1]
    has_phrase = [o.has_phrase for o in objects]
    has_image = [o.image is not None for o in objects] if text_image else [False] * len(objects)
    if phr.shape[0] != sum(has_phrase):
        raise ValueError(f"{phr.shape[0]} phrase embeddings for {sum(has_phrase)} objects with a phrase")
    img = np.zeros((0, dim), np.float32)
    if text_image and image_embeddings is not None:
        img = np.asarray(image_embeddings, dtype=np.float32).reshape(-1, dim)
    if img.shape[0] != sum(has_image):
        raise ValueError(f"{img.shape[0]} image embeddings for {sum(has_image)} objects with an image")
    if style_embedding is not None and not text_image:
        raise ValueError("a style embedding needs the text-image inputs (text_image=True)")

    n = len(objects) + (style_embedding is not None)
    if n > MAX_OBJECTS:
        raise RequestError(
            f"{n} grounded objects: at most {MAX_OBJECTS} are supported, remove {n - MAX_OBJECTS}"
        )

    boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
    masks = np.zeros((MAX_OBJECTS,), np.float32)
    text_masks = np.zeros((MAX_OBJECTS,), np.float32)
    image_masks = np.zeros((MAX_OBJECTS,), np.float32)
    phrases = np.zeros((MAX_OBJECTS, dim), np.float32)
    images = np.zeros((MAX_OBJECTS, dim), np.float32)
    ip = ii = 0
    for i, obj in enumerate(objects):
        boxes[i] = obj.box
        masks[i] = 1.0
        if has_phrase[i]:
            phrases[i] = phr[ip]
            text_masks[i] = 1.0
            ip += 1
        if has_image[i]:
            images[i] = img[ii]
            image_masks[i] = 1.0
            ii += 1
    if style_embedding is not None:
        s = len(objects)
        boxes[s] = STYLE_BOX
        masks[s] = 1.0
        images[s] = np.asarray(style_embedding, np.float32).reshape(dim)
        image_masks[s] = 1.0

    out = {"boxes": boxes, "masks": masks, "phrase_embeddings": phrases}
    if text_image:
        out.update(text_masks=text_masks, image_masks=image_masks, image_embeddings=images)
    return out


# ------------------------------------------------------------------------------------------------
# Keypoints


def keypoint_inputs(persons: Sequence[Person]) -> Inputs:
    """Grounding inputs of the keypoint model for one image.

    Slot p*17 + j holds keypoint j (COCO order) of person p; up to 8 persons, in the given order.
    Returns points (136, 2) float32 (missing and padding: (0, 0)) and masks (136,) float32.
    As in the original (`prepare_batch_kp`), the mask is derived from the points:
    mask = mean(x, y) != 0, so a keypoint given exactly at (0, 0) counts as missing (mask 0).
    """
    if len(persons) > MAX_PERSONS:
        raise RequestError(
            f"{len(persons)} persons: at most {MAX_PERSONS} are supported, remove {len(persons) - MAX_PERSONS}"
        )
    points = np.zeros((MAX_PERSONS * NUM_KEYPOINTS, 2), np.float32)
    for p, person in enumerate(persons):
        if len(person.keypoints) != NUM_KEYPOINTS:
            raise RequestError(
                f"persons[{p}] has {len(person.keypoints)} keypoints: give exactly {NUM_KEYPOINTS} in COCO order"
            )
        for j, kp in enumerate(person.keypoints):
            if kp is not None:
                points[p * NUM_KEYPOINTS + j] = kp
    masks = (points.mean(axis=1) != 0).astype(np.float32)
    return {"points": points, "masks": masks}


# ------------------------------------------------------------------------------------------------
# Batching


def null_inputs(like: Mapping[str, np.ndarray]) -> Inputs:
    """The unconditional branch's grounding: same keys, shapes and dtypes as `like`, all zeros (masks 0).

    This is the original's `get_null_input` for every modality. Note for spatial models: the
    original feeds the *real* downsampler map (`extra`) to the unconditional branch as well; only
    its tokens use this null input, so take `extra` from the real half of the grounding output.
    """
    return {k: np.zeros_like(np.asarray(v, dtype=np.float32)) for k, v in like.items()}


def repeat(inputs: Mapping[str, np.ndarray], num_images: int) -> Inputs:
    """Add a leading batch axis of `num_images` copies: (...) -> (num_images, ...), float32."""
    return {k: np.repeat(np.asarray(v, np.float32)[None], num_images, axis=0) for k, v in inputs.items()}


def stack_cfg(null: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray], num_images: int) -> Inputs:
    """The classifier-free-guidance batch [null x num_images; real x num_images]: (2 * num_images, ...)."""
    if set(null) != set(real):
        raise ValueError(f"null and real inputs have different keys: {sorted(null)} vs {sorted(real)}")
    n, r = repeat(null, num_images), repeat(real, num_images)
    return {k: np.concatenate([n[k], r[k]], axis=0) for k in real}


# ------------------------------------------------------------------------------------------------
# Images


def _open_image(source: str | os.PathLike[str] | Image.Image | np.ndarray, what: str) -> Image.Image:
    """A PIL image from a path, a PIL image, or a uint8 array ((H, W) or (H, W, 3|4))."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise RequestError(
                f"{what} array must be uint8 (H, W) or (H, W, C), got {source.dtype} {source.shape}"
            )
        return Image.fromarray(source)
    path = os.fspath(source)
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # detached from the (closed) file
    except FileNotFoundError:
        raise RequestError(f"{what} {path!r} does not exist: check the path") from None
    except UnidentifiedImageError:
        raise RequestError(
            f"{what} {path!r} is not an image Pillow can read: give a PNG or JPEG file"
        ) from None
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).splitlines())
        raise RequestError(f"{what} {path!r} cannot be read ({msg}): check the file") from None


def center_crop_to_aspect(image: Image.Image, height: int, width: int) -> Image.Image:
    """The largest centered crop with the aspect ratio width:height (square target: min side).

    Offsets round like torchvision's `center_crop` (round((size - crop) / 2)), so a square target
    reproduces the original's `TF.center_crop(image, min(image.size))`.
    """
    w, h = image.size
    if w * height > h * width:  # wider than the target: crop the width
        cw, ch = max(1, round(h * width / height)), h
    else:
        cw, ch = w, max(1, round(w * height / width))
    left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
    if (cw, ch) == (w, h):
        return image
    return image.crop((left, top, left + cw, top + ch))


def _to_signed(rgb: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 PIL image -> (3, H, W) float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5).astype(np.float32)


def condition_input(
    source: str | os.PathLike[str] | Image.Image | np.ndarray,
    modality: Modality | str,
    height: int,
    width: int,
) -> Inputs:
    """The spatial grounding input of one image: condition (Cc, H, W) float32 and masks (1,) = 1.

    hed / canny / depth / normal: the image as RGB, center-cropped to the target aspect, resized to
    (height, width) with bicubic (Pillow's default filter, the original's `crop_and_resize`), then
    x / 255 -> (x - 0.5) / 0.5 in [-1, 1]; Cc = 3.
    sem: a label map of uint8 class ids converted to 'L' (as the original: a palette or RGB file is
    converted to luminance, not to its indices), center-cropped, NEAREST-resized, one-hot over 152
    channels (values 0 / 1); a class id >= 152 is a RequestError.
    source: a path, a PIL image, or a uint8 array ((H, W) label map for sem, (H, W, 3) otherwise).
    """
    modality = Modality(modality)
    if not modality.is_spatial:
        raise ValueError(f"the {modality.value} model takes no condition map")
    image = _open_image(source, "condition")
    if modality is Modality.SEM:
        labels = center_crop_to_aspect(image.convert("L"), height, width)
        labels = labels.resize((width, height), Image.Resampling.NEAREST)
        ids = np.asarray(labels, dtype=np.int64)
        if ids.max() >= SEM_CLASSES:
            raise RequestError(
                f"the sem label map has class id {int(ids.max())}: ids must be below {SEM_CLASSES} (ADE20K label indices)"
            )
        condition = (np.arange(SEM_CLASSES)[:, None, None] == ids[None]).astype(np.float32)
    else:
        rgb = center_crop_to_aspect(image.convert("RGB"), height, width)
        condition = _to_signed(rgb.resize((width, height), Image.Resampling.BICUBIC))
    assert condition.shape[0] == CONDITION_CHANNELS[modality]
    return {"condition": condition, "masks": np.ones((1,), np.float32)}


def inpaint_mask(boxes: Sequence[Sequence[float]] | np.ndarray, h: int, w: int) -> np.ndarray:
    """The latent-resolution inpainting mask (1, h, w) float32: 1 = keep, 0 = generate.

    Starts at ones; for every box (x0, y0, x1, y1) sets mask[int(y0*h):int(y1*h), int(x0*w):int(x1*w)]
    to 0 (the original's `draw_masks_from_boxes`: int() truncation of float32 box * size).
    """
    mask = np.ones((1, h, w), np.float32)
    for box in np.asarray(boxes, dtype=np.float32).reshape(-1, 4):
        x0, y0, x1, y1 = (float(v) for v in box)
        ys = slice(int(np.float32(y0) * np.float32(h)), int(np.float32(y1) * np.float32(h)))
        xs = slice(int(np.float32(x0) * np.float32(w)), int(np.float32(x1) * np.float32(w)))
        mask[0, ys, xs] = 0.0
    return mask


def load_image(source: str | os.PathLike[str] | Image.Image, height: int, width: int) -> np.ndarray:
    """An image to inpaint / encode: (3, height, width) float32 in [-1, 1].

    RGB, center-cropped to the target aspect, LANCZOS-resized to (height, width) (the diffusers
    GLIGEN pipeline's preprocessing; the original resized straight to 512 x 512 without a crop,
    which is the same for square inputs up to the filter), then (x / 255 - 0.5) / 0.5.
    """
    rgb = center_crop_to_aspect(_open_image(source, "image").convert("RGB"), height, width)
    return _to_signed(rgb.resize((width, height), Image.Resampling.LANCZOS))


def clip_image_input(source: str | os.PathLike[str] | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """CLIP vision preprocessing of one image: (3, size, size) float32, CLIP-normalised.

    RGB via Pillow's convert("RGB") (as the original's `Image.open(path).convert("RGB")`: an alpha
    channel is dropped, not composited onto white as transformers >= 5 does); bicubic resize of
    the shortest side to `size` (long side int(size * long / short)); center
    crop size x size (offset (dim - size) // 2); / 255; (x - mean) / std with CLIP's mean/std.
    For RGB input this equals transformers' CLIPImageProcessor(size={"shortest_edge": size},
    crop_size={"height": size, "width": size}) within 1e-5.
    """
    rgb = _open_image(source, "image").convert("RGB")
    w, h = rgb.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = np.asarray(rgb, dtype=np.float32)[top : top + size, left : left + size] / np.float32(255.0)
    mean = np.asarray(CLIP_MEAN, np.float32)
    std = np.asarray(CLIP_STD, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1).astype(np.float32)


def describe(inputs: Mapping[str, Any]) -> str:
    """One line listing each input's name, shape and dtype (for logs)."""
    return ", ".join(f"{k} {tuple(np.shape(v))} {np.asarray(v).dtype}" for k, v in inputs.items())
