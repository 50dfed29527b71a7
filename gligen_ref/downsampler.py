"""GLIGEN's grounding downsamplers: the spatial condition map -> extra UNet input channels.

| modality | input | resize (to 4x latent size) | layers | out |
|---|---|---|---|---|
| hed | channel 0 | bicubic, straight to the latent size | none | 1 |
| canny, depth | channel 0 | bicubic | Conv(1->4,k4,s2,p1) SiLU Conv(4->8,k4,s2,p1) | 8 |
| normal | 3 channels | bicubic | Conv(3->4) SiLU Conv(4->8) | 8 |
| sem | 152 one-hot | nearest | Conv(152->16) SiLU Conv(16->8) | 8 |

The original resizes to fixed 256 (64 for hed), i.e. 4x (1x) the latent size of a 512 px image; here the
target is 4*(H/f) x 4*(W/f) (H/f x W/f for hed) with f the VAE factor, equal at 512 px and valid at other
sizes. Keys: ``layers.{0,2}.{weight,bias}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gligen_rt.core.modality import CONDITION_CHANNELS, DOWNSAMPLER_OUT_CHANNELS, Modality


class GroundingDownsampler(nn.Module):
    """condition (B,Cc,H,W) float32 -> extra (B,k,H/f,W/f) float32 for one spatial modality."""

    def __init__(self, modality: Modality | str, latent_factor: int = 8) -> None:
        super().__init__()
        modality = Modality(modality)
        if not modality.is_spatial:
            raise ValueError(f"no downsampler for the {modality.value} modality")
        self.modality = modality
        self.latent_factor = latent_factor
        self.out_dim = DOWNSAMPLER_OUT_CHANNELS[modality]
        self.first_channel_only = modality in (Modality.HED, Modality.CANNY, Modality.DEPTH)
        self.mode = "nearest" if modality is Modality.SEM else "bicubic"
        self.layers: nn.Sequential | None = None
        if modality is not Modality.HED:
            in_ch = 1 if self.first_channel_only else CONDITION_CHANNELS[modality]
            hidden = 16 if modality is Modality.SEM else 4
            self.layers = nn.Sequential(
                nn.Conv2d(in_ch, hidden, 4, 2, 1), nn.SiLU(), nn.Conv2d(hidden, self.out_dim, 4, 2, 1)
            )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """condition (B,Cc,H,W) in [-1,1] (sem: one-hot) -> (B,out_dim,H/f,W/f)."""
        x = condition.float()
        if self.first_channel_only:
            x = x[:, :1]
        h, w = x.shape[-2] // self.latent_factor, x.shape[-1] // self.latent_factor
        if self.layers is None:
            return F.interpolate(x, (h, w), mode=self.mode)
        x = F.interpolate(x, (4 * h, 4 * w), mode=self.mode)
        return self.layers(x)
