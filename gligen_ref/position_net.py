"""GLIGEN's grounding tokenizers ("position_net"), one per modality, with the original parameter names.

Every padded / absent slot is replaced by a learned null feature with arithmetic blending
``e * m + (1 - m) * null`` (never ``where``: identical to the original, and a masked slot's value
is multiplied by 0 exactly as in training). Everything runs in float32.

| class | modality | inputs | tokens |
|---|---|---|---|
| TextBoxNet | text-box | boxes (B,30,4), masks (B,30), phrase_embeddings (B,30,D) | (B,30,D) |
| TextImageBoxNet | text-image-box | + text_masks, image_masks (B,30), image_embeddings (B,30,D) | (B,60,D) text first |
| KeypointNet | keypoint | points (B,136,2), masks (B,136) | (B,136,D) |
| SpatialNet | hed/canny/depth/normal/sem | condition (B,Cc,H,W), masks (B,1) | (B,T,D), T=(resize/32)^2 |
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gligen_ref.convnext import ConvNeXt
from gligen_ref.fourier import FourierEmbedder
from gligen_rt.core.config import ModelConfig
from gligen_rt.core.modality import MAX_PERSONS, NUM_KEYPOINTS, Modality


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear -> SiLU -> Linear (keys 0, 2, 4)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
    )


def blend(e: torch.Tensor, m: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """``e * m + (1 - m) * null``; e (..., F), m broadcastable to e[..., :1], null (F,)."""
    return e * m + (1 - m) * null


class TextBoxNet(nn.Module):
    """Text + box tokenizer (original text_grounding_net.PositionNet).

    Keys: ``linears.{0,2,4}.*``, ``null_positive_feature`` [in_dim], ``null_position_feature`` [64].
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int = 512, fourier_freqs: int = 8, temperature: float = 100.0
    ) -> None:
        super().__init__()
        self.fourier_embedder = FourierEmbedder(fourier_freqs, temperature)
        self.position_dim = self.fourier_embedder.out_dim(4)
        self.linears = mlp(in_dim + self.position_dim, hidden, out_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(
        self, boxes: torch.Tensor, masks: torch.Tensor, phrase_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """boxes (B,N,4) xyxy in [0,1], masks (B,N), phrase_embeddings (B,N,in_dim) float32 -> (B,N,out_dim)."""
        m = masks.float().unsqueeze(-1)
        pe = blend(self.fourier_embedder(boxes), m, self.null_position_feature)
        pos = blend(phrase_embeddings.float(), m, self.null_positive_feature)
        return self.linears(torch.cat([pos, pe], dim=-1))


class TextImageBoxNet(nn.Module):
    """Text + image + box tokenizer (original text_image_grounding_net.PositionNet).

    Keys: ``linears_text.*``, ``linears_image.*``, ``null_text_feature``, ``null_image_feature``,
    ``null_position_feature``. Output: the N text tokens, then the N image tokens.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int = 512, fourier_freqs: int = 8, temperature: float = 100.0
    ) -> None:
        super().__init__()
        self.fourier_embedder = FourierEmbedder(fourier_freqs, temperature)
        self.position_dim = self.fourier_embedder.out_dim(4)
        self.linears_text = mlp(in_dim + self.position_dim, hidden, out_dim)
        self.linears_image = mlp(in_dim + self.position_dim, hidden, out_dim)
        self.null_text_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_image_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(
        self,
        boxes: torch.Tensor,
        masks: torch.Tensor,
        text_masks: torch.Tensor,
        image_masks: torch.Tensor,
        phrase_embeddings: torch.Tensor,
        image_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """boxes (B,N,4), masks/text_masks/image_masks (B,N), phrase/image_embeddings (B,N,in_dim)
        float32 -> (B,2N,out_dim)."""
        pe = blend(self.fourier_embedder(boxes), masks.float().unsqueeze(-1), self.null_position_feature)
        txt = blend(phrase_embeddings.float(), text_masks.float().unsqueeze(-1), self.null_text_feature)
        img = blend(image_embeddings.float(), image_masks.float().unsqueeze(-1), self.null_image_feature)
        objs_text = self.linears_text(torch.cat([txt, pe], dim=-1))
        objs_image = self.linears_image(torch.cat([img, pe], dim=-1))
        return torch.cat([objs_text, objs_image], dim=1)


class KeypointNet(nn.Module):
    """Keypoint tokenizer (original keypoint_grounding_net.PositionNet): slot p*17+j = person p, joint j.

    Keys: ``person_embeddings`` [P,D], ``keypoint_embeddings`` [17,D], ``linears.*``,
    ``null_person_feature`` [D], ``null_xy_feature`` [32].
    """

    def __init__(
        self,
        out_dim: int,
        hidden: int = 512,
        max_persons: int = MAX_PERSONS,
        num_keypoints: int = NUM_KEYPOINTS,
        fourier_freqs: int = 8,
        temperature: float = 100.0,
    ) -> None:
        super().__init__()
        self.fourier_embedder = FourierEmbedder(fourier_freqs, temperature)
        self.position_dim = self.fourier_embedder.out_dim(2)
        self.person_embeddings = nn.Parameter(torch.zeros(max_persons, out_dim))
        self.keypoint_embeddings = nn.Parameter(torch.zeros(num_keypoints, out_dim))
        self.linears = mlp(out_dim + self.position_dim, hidden, out_dim)
        self.null_person_feature = nn.Parameter(torch.zeros(out_dim))
        self.null_xy_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, points: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """points (B,P*17,2) normalised xy, masks (B,P*17) float32 -> (B,P*17,out_dim)."""
        m = masks.float().unsqueeze(-1)
        ident = (self.person_embeddings[:, None, :] + self.keypoint_embeddings[None, :, :]).flatten(0, 1)
        ident = blend(ident.unsqueeze(0), m, self.null_person_feature)  # (B, P*17, D)
        xy = blend(self.fourier_embedder(points), m, self.null_xy_feature)
        return self.linears(torch.cat([ident, xy], dim=-1))


class SpatialNet(nn.Module):
    """Tokenizer of a spatially aligned condition map (original {hed,canny,depth,normal,sem}_grounding_net).

    condition -> nearest resize to (resize_input, resize_input) -> [sem: in_conv 152->3] -> ConvNeXt
    -> T = (resize_input/32)^2 row-major tokens -> null blend with ``masks`` -> + pos_embedding -> MLP.

    Keys: ``convnext_tiny_backbone.*``, ``pos_embedding`` [1,T,F], ``null_feature`` [F], ``linears.*``,
    and for sem ``in_conv.*``.
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        hidden: int = 512,
        resize_input: int = 256,
        convnext_dims: Sequence[int] = (96, 192, 384, 768),
        convnext_depths: Sequence[int] = (3, 3, 9, 3),
    ) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.in_conv = nn.Conv2d(in_channels, 3, 3, 1, 1) if in_channels != 3 else None
        self.convnext_tiny_backbone = ConvNeXt(3, convnext_dims, convnext_depths)
        stride = self.convnext_tiny_backbone.stride
        if resize_input % stride:
            raise ValueError(f"resize_input {resize_input} is not a multiple of the backbone stride {stride}")
        self.num_tokens = (resize_input // stride) ** 2
        feature_dim = self.convnext_tiny_backbone.out_dim
        self.pos_embedding = nn.Parameter(torch.empty(1, self.num_tokens, feature_dim).normal_(std=0.02))
        self.linears = mlp(feature_dim, hidden, out_dim)
        self.null_feature = nn.Parameter(torch.zeros(feature_dim))

    def forward(self, condition: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """condition (B,Cc,H,W) in [-1,1] (sem: one-hot), masks (B,1) float32 -> (B,T,out_dim)."""
        x = F.interpolate(condition.float(), (self.resize_input, self.resize_input), mode="nearest")
        if self.in_conv is not None:
            x = self.in_conv(x)
        objs = self.convnext_tiny_backbone(x).flatten(2).transpose(1, 2)  # (B, T, F)
        objs = blend(objs, masks.float().reshape(-1, 1, 1), self.null_feature)
        return self.linears(objs + self.pos_embedding)


def build_position_net(config: ModelConfig) -> nn.Module:
    """The tokenizer of ``config.modality`` at the config's sizes (MLP hidden = grounding.mlp_hidden)."""
    g, d, m = config.grounding, config.context_dim, config.modality
    fourier = {"fourier_freqs": g.fourier_freqs, "temperature": g.fourier_temperature}
    if m is Modality.TEXT_BOX:
        return TextBoxNet(d, d, g.mlp_hidden, **fourier)
    if m is Modality.TEXT_IMAGE_BOX:
        return TextImageBoxNet(d, d, g.mlp_hidden, **fourier)
    if m is Modality.KEYPOINT:
        return KeypointNet(d, g.mlp_hidden, **fourier)
    return SpatialNet(
        config.condition_channels, d, g.mlp_hidden, g.resize_input, g.convnext_dims, g.convnext_depths
    )
