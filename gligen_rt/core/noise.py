"""Seeded Gaussian noise shared by every pipeline, so one seed gives one image on every backend.

Torch-free: the reference pipeline draws from the same stream and converts to tensors.

Order of draws (a pipeline must keep it, and draw nothing else from the stream):

1. initial latents: ``latents((num_images, 4, H/8, W/8))``
2. inpainting only: the VAE-encoder sample noise, ``latents((1, 4, H/8, W/8))`` (z0 = mean + std * noise;
   one clean latent is shared by all num_images)
3. inpainting only: per sampling step, in step order, the noise that re-noises the known region,
   ``latents((num_images, 4, H/8, W/8))`` (one draw per outer step; PLMS's extra first-step
   evaluation draws nothing)
"""

from __future__ import annotations

import numpy as np


class NoiseStream:
    """A numpy Generator(PCG64(seed)) handing out float32 standard-normal arrays in call order.

    Equal seeds give equal sequences of arrays (`numpy.random.default_rng(seed)` is the same stream).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def latents(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next `shape` standard-normal values: float32, drawn directly in float32."""
        return self._rng.standard_normal(tuple(int(s) for s in shape), dtype=np.float32)

    def like(self, x: np.ndarray) -> np.ndarray:
        """The next standard-normal float32 array with the shape of `x` (any array-like with .shape)."""
        return self.latents(tuple(x.shape))
