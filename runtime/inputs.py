"""Host-side inputs of one request, read and checked before any engine runs.

Everything that touches files happens here (reference images, condition map, image to inpaint),
so an unreadable file fails fast with one RequestError line and no engine time spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gligen_rt.core import grounding as G
from gligen_rt.core.modality import Modality
from gligen_rt.core.request import GenerationRequest


@dataclass
class RequestInputs:
    """height, width: image size in pixels. phrases: the objects' non-blank phrases, in object order.
    pixel_values: (n_img, 3, S, S) float32 CLIP-normalised reference images (object images in object
    order, then the style image), or None. condition: spatial grounding input of one image
    ({"condition": (Cc, H, W), "masks": (1,)}), or None. inpaint_image: (3, H, W) float32 in [-1, 1],
    or None. inpaint_mask: (1, h, w) float32 (1 = keep), or None."""

    height: int
    width: int
    phrases: list[str]
    pixel_values: np.ndarray | None = None
    condition: dict[str, np.ndarray] | None = None
    inpaint_image: np.ndarray | None = None
    inpaint_mask: np.ndarray | None = None


def read_inputs(request: GenerationRequest, config: Any, height: int, width: int) -> RequestInputs:
    """Read every file the request names, for a model `config` (gligen_ref ModelConfig)."""
    modality: Modality = config.modality
    phrases = [o.phrase for o in request.objects if o.has_phrase]
    out = RequestInputs(height, width, phrases)
    if modality is Modality.TEXT_IMAGE_BOX:
        paths = [o.image for o in request.objects if o.image is not None]
        if request.style_image is not None:
            paths.append(request.style_image)
        if paths:
            size = config.image.image_size
            out.pixel_values = np.stack([G.clip_image_input(p, size) for p in paths]).astype(np.float32)
    if modality.is_spatial:
        out.condition = G.condition_input(request.condition, modality, height, width)
    if config.inpaint:
        f = config.vae.downscale
        out.inpaint_image = G.load_image(request.inpaint_image, height, width)
        out.inpaint_mask = G.inpaint_mask([o.box for o in request.objects], height // f, width // f)
    return out


def grounding_inputs(
    request: GenerationRequest,
    modality: Modality,
    inputs: RequestInputs,
    phrase_emb: np.ndarray,
    image_emb: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The grounding engine's inputs for the CFG batch [null x n; real x n] (2n, ...) float32.

    phrase_emb: (n_phrases, D) pooled CLIP text features; image_emb: (n_img, D) or None (the style
    image's row last, when given).
    """
    if modality.is_box:
        style = None
        if request.style_image is not None and image_emb is not None:
            style, image_emb = image_emb[-1], image_emb[:-1]
        real = G.box_inputs(
            request.objects,
            phrase_emb,
            image_emb,
            text_image=modality is Modality.TEXT_IMAGE_BOX,
            style_embedding=style,
        )
    elif modality is Modality.KEYPOINT:
        real = G.keypoint_inputs(request.persons)
    else:
        assert inputs.condition is not None
        real = inputs.condition
    return G.stack_cfg(G.null_inputs(real), real, request.num_images)
