"""VAE decoding in tiles, for images larger than the decoder should see at once (``--low-memory``).

The latent is cut into overlapping tiles (``tile`` x ``tile`` latent pixels, neighbours sharing
``overlap``); each is decoded by the backend's VAE decoder and the pixels are blended with linear
ramps across the overlaps (weights sum to 1 everywhere). The decoder's activation memory then grows
with the tile, not the image. It is an approximation: the SD VAE's GroupNorm statistics and its
mid-block attention see one tile instead of the whole latent, which the overlap hides in most
images (the same trade diffusers' ``enable_vae_tiling`` makes). Works on any backend's arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .arrays import Array, HostArrays


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, size), consecutive tiles sharing >= `overlap`."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile, stride))
    return sorted({*starts, size - tile})


def _ramp(length: int, start: int, size: int, overlap: int) -> np.ndarray:
    """(length,) float32 weights of one tile along one axis: rising over the first `overlap`
    pixels and falling over the last, except where the tile touches the image border."""
    w = np.ones(length, np.float32)
    if overlap <= 0:
        return w
    ramp = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
    n = min(overlap, length)
    if start > 0:
        w[:n] = np.minimum(w[:n], ramp[:n])
    if start + length < size:
        w[-n:] = np.minimum(w[-n:], ramp[:n][::-1])
    return w


def decode_tiled(
    decode: Callable[[Array], Array],
    latents: Array,
    arrays: HostArrays,
    *,
    tile: int,
    overlap: int,
    factor: int = 8,
) -> Array:
    """Decode (B, 4, h, w) latents tile by tile -> (B, 3, h*factor, w*factor) float32.

    decode: one VAE decoder call on a (B, 4, th, tw) latent tile -> (B, 3, th*factor, tw*factor).
    tile, overlap: in latent pixels (e.g. 64 and 16 at SD size: 512 px tiles sharing 128 px).
    A latent no larger than `tile` is decoded in one call, exactly as untiled.
    """
    B, _, h, w = latents.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(ys) == 1 and len(xs) == 1:
        return decode(latents)
    xp = arrays.xp
    out: Any = None
    total: Any = None
    th, tw = min(tile, h), min(tile, w)
    for y0 in ys:
        wy = _ramp(th * factor, y0 * factor, h * factor, overlap * factor)
        for x0 in xs:
            part = decode(xp.ascontiguousarray(latents[:, :, y0 : y0 + th, x0 : x0 + tw]))
            if out is None:
                out = xp.zeros((B, part.shape[1], h * factor, w * factor), dtype=np.float32)
                total = xp.zeros((h * factor, w * factor), dtype=np.float32)
            wx = _ramp(tw * factor, x0 * factor, w * factor, overlap * factor)
            weight = arrays.asarray(wy[:, None] * wx[None, :])
            ry, rx = slice(y0 * factor, (y0 + th) * factor), slice(x0 * factor, (x0 + tw) * factor)
            out[:, :, ry, rx] += part * weight
            total[ry, rx] += weight
    return out / total
