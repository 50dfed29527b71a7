"""The request flow both pipelines follow, written once: the reference (gligen_ref/pipeline.py, torch
tensors) and the runtime (runtime/pipeline.py and loop.py, numpy or CuPy arrays) call these, so the
classifier-free-guidance layout and the per-step arithmetic cannot drift apart.

Array-library neutral: the functions use slicing, ``shape`` and operators with python floats only;
where arrays are joined the caller passes its ``concat`` (torch.cat, numpy/CuPy concatenate).

    CFG batch layout: [uncond x n; cond x n] for context, grounding tokens and extra
    eps_fn(x, t):  e = unet([x; x], t);  e_u + s * (e_c - e_u)   (unguided, s == 1: unet(x, t))
    inpainting:    x <- known * mask + x * (1 - mask)   with known = add_noise(z0, noise_i, i)

Noise is drawn in one order by ``gligen_rt.core.noise.NoiseStream`` (initial latents, VAE-encoder
sample, per-step inpainting noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gligen_rt.core.request import GenerationRequest

Concat = Callable[[Sequence[Any]], Any]


def request_geometry(request: GenerationRequest, config: Any) -> tuple[int, int, int, int, int]:
    """(H, W, n, h, w): image size (request's, else the model's default), images, latent size."""
    H = request.height or config.default_size
    W = request.width or config.default_size
    f = config.vae.downscale
    return H, W, request.num_images, H // f, W // f


def cfg_context(context: Any, n: int, concat: Concat) -> Any:
    """(2, 77, D) [negative; prompt] -> (2n, 77, D) [uncond x n; cond x n]."""
    return concat([context[:1]] * n + [context[1:2]] * n)


def spatial_extra(extra: Any, n: int, concat: Concat) -> Any:
    """The downsampler's map for [null x n; real x n] -> both CFG halves take the real map's."""
    return concat([extra[n:], extra[n:]])


def conditional_half(context: Any, tokens: Any, extra: Any, n: int) -> tuple[Any, Any, Any]:
    """Unguided requests (guidance 1) run the conditional half only."""
    return context[n:], tokens[n:], None if extra is None else extra[n:]


def inpaint_blend(x: Any, known: Any, mask: Any) -> Any:
    """Keep the known region (mask 1) at the step's noise level, the rest from the sampler."""
    return known * mask + x * (1.0 - mask)


def make_eps_fn(
    unet: Callable[[Any, float], Any], guidance: float, concat: Concat
) -> Callable[[Any, float], Any]:
    """eps_fn(x, t) for the schedulers: the UNet on [x; x] blended by the guidance scale (on x
    alone when guidance is 1). unet(sample, t) -> eps of sample's batch."""
    guided = guidance != 1.0

    def eps_fn(x_in: Any, t: float) -> Any:
        if not guided:
            return unet(x_in, t)
        e = unet(concat([x_in, x_in]), t)
        half = e.shape[0] // 2
        e_u, e_c = e[:half], e[half:]
        return e_u + guidance * (e_c - e_u)

    return eps_fn
