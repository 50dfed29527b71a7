"""Fourier features of normalised box corners and keypoints (GLIGEN's FourierEmbedder)."""

from __future__ import annotations

import torch
from torch import nn


class FourierEmbedder(nn.Module):
    """sin/cos features at frequencies ``temperature ** (k / num_freqs)``, k = 0..num_freqs-1 (no 2*pi).

    Output layout for an input with C coordinates: ``[sin(f0*x) (C), cos(f0*x) (C), sin(f1*x) (C), ...]``,
    i.e. index ``k*2*C + s*C + c`` with s = 0 for sin, 1 for cos. Boxes (C=4) give 64 features and
    points (C=2) give 32 at 8 frequencies.

    Always computed in float32: the arguments reach ~56 rad, where float16 loses ~1.6 % in sin/cos.
    Parameter-free (the frequencies are built in ``forward``, so they never follow a dtype cast).
    """

    def __init__(self, num_freqs: int = 8, temperature: float = 100.0) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.temperature = temperature

    def out_dim(self, coords: int) -> int:
        """Feature count for ``coords`` input coordinates."""
        return self.num_freqs * 2 * coords

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C) any float dtype -> (..., num_freqs*2*C) float32."""
        x = x.float()
        freqs = self.temperature ** (
            torch.arange(self.num_freqs, dtype=torch.float32, device=x.device) / self.num_freqs
        )
        args = freqs[:, None] * x[..., None, :]  # (..., K, C)
        feats = torch.stack((args.sin(), args.cos()), dim=-2)  # (..., K, 2, C)
        return feats.flatten(-3)
