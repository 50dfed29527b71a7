"""ConvNeXt backbone (features only) as used by GLIGEN's spatial grounding tokenizers.

Same structure and parameter names as the original (ConvNeXt-T: dims 96/192/384/768, depths 3/3/9/3),
so checkpoint keys ``position_net.convnext_tiny_backbone.*`` load unchanged:
``downsample_layers.{i}.{j}.*`` (stem: Conv k4 s4 + channels-first LayerNorm; later: LayerNorm +
Conv k2 s2) and ``stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2,gamma}``. No final norm or head; no
drop path (inference only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) (the original's ``channels_first`` branch)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm (channels last) -> Linear 4x -> GELU -> Linear -> gamma -> residual."""

    def __init__(self, dim: int, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, dim, H, W) -> (B, dim, H, W)."""
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt feature extractor: (B, in_chans, S, S) -> (B, dims[-1], S/32, S/32) for 4 stages.

    The total stride is ``4 * 2**(len(dims) - 1)``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 9, 3),
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} differ in length")
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
        )
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dim, layer_scale_init_value) for _ in range(depth)])
            for dim, depth in zip(dims, depths)
        )
        self.out_dim = dims[-1]
        self.stride = 4 * 2 ** (len(dims) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) float32 -> features (B, dims[-1], H/stride, W/stride)."""
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return x
