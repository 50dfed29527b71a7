"""The assembled GLIGEN model: one nn.Module whose methods are the engines (see ARCHITECTURE.md).

The diffusers UNet2DConditionModel is built with ``attention_type="gated"``; then every
``BasicTransformerBlock.fuser`` is replaced by our gated fuser (with the per-step gate), the UNet's
``position_net`` by a pass-through that hands ``(tokens, gate)`` to every fuser, and its ``conv_in`` by
an identity: the model applies GLIGEN's conv_in (4/5/9/12 input channels) itself and, for spatial
models, SD's 4-channel conv_in where ``gate == 0`` (the original's ``restore_first_conv_from_SD``).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from gligen_ref.convnext import Block as ConvNeXtBlock
from gligen_ref.downsampler import GroundingDownsampler
from gligen_ref.fuser import GatedSelfAttention
from gligen_ref.position_net import KeypointNet, SpatialNet, TextBoxNet, TextImageBoxNet, build_position_net
from gligen_rt.core.config import ModelConfig


class GroundingPassThrough(nn.Module):
    """Stands in for diffusers' ``unet.position_net``: the tokens are computed once, outside the UNet."""

    def forward(self, tokens: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B,N,D), gate () or (1,) -> the same pair (what every fuser receives as ``objs``)."""
        return tokens, gate


def build_unet(config: ModelConfig) -> UNet2DConditionModel:
    """diffusers UNet2DConditionModel with gated fusers, before the GLIGEN replacements."""
    u = config.unet
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels))
    return UNet2DConditionModel(
        sample_size=config.default_size // config.vae.downscale,
        in_channels=config.conv_in_channels,
        out_channels=u.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.heads,  # legacy meaning: number of heads
        cross_attention_dim=u.cross_attention_dim,
        norm_num_groups=u.norm_num_groups,
        attention_type="gated",
    )


def build_vae(config: ModelConfig) -> AutoencoderKL:
    v = config.vae
    n = len(v.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_num_groups,
        sample_size=config.default_size,
        scaling_factor=v.scaling_factor,
    )


def build_text_encoder(config: ModelConfig) -> CLIPTextModel:
    t = config.text
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            max_position_embeddings=t.max_position_embeddings,
            hidden_act=t.hidden_act,
            layer_norm_eps=t.layer_norm_eps,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
        )
    )


def build_image_encoder(config: ModelConfig) -> CLIPVisionModelWithProjection:
    i = config.image
    if i is None:
        raise ValueError(f"{config.key} has no image encoder config")
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=i.hidden_size,
            intermediate_size=i.intermediate_size,
            num_hidden_layers=i.num_hidden_layers,
            num_attention_heads=i.num_attention_heads,
            image_size=i.image_size,
            patch_size=i.patch_size,
            projection_dim=i.projection_dim,
            hidden_act=i.hidden_act,
            layer_norm_eps=i.layer_norm_eps,
        )
    )


def transformer_blocks(unet: nn.Module) -> list[BasicTransformerBlock]:
    """Every BasicTransformerBlock of the UNet, in module order (one fuser each)."""
    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


class GLIGENModel(nn.Module):
    """GLIGEN on a Stable Diffusion 1.x UNet, one method per engine. float32, eval mode after build."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = build_text_encoder(config)
        self.image_encoder = build_image_encoder(config) if config.image is not None else None
        self.image_project = (
            nn.Linear(config.image.projection_dim, config.context_dim, bias=False)
            if config.image is not None
            else None
        )
        self.unet = build_unet(config)
        for block in transformer_blocks(self.unet):
            old = block.fuser
            block.fuser = GatedSelfAttention(
                old.linear.out_features,
                old.linear.in_features,
                old.attn.heads,
                old.attn.inner_dim // old.attn.heads,
            )
        self.unet.position_net = GroundingPassThrough()
        self.unet.conv_in = nn.Identity()
        c0 = config.unet.block_out_channels[0]
        self.conv_in = nn.Conv2d(config.conv_in_channels, c0, kernel_size=3, padding=1)
        spatial = config.modality.is_spatial
        self.sd_conv_in = (
            nn.Conv2d(config.unet.latent_channels, c0, kernel_size=3, padding=1) if spatial else None
        )
        self.position_net = build_position_net(config)
        self.downsample_net = GroundingDownsampler(config.modality, config.vae.downscale) if spatial else None
        self.vae = build_vae(config)

    # ---- engines -------------------------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B,77) int -> last_hidden_state (B,77,D), pooled (B,D) float32 (final-LN state at
        the first EOS)."""
        out = self.text_encoder(input_ids=input_ids)
        return out.last_hidden_state, out.pooler_output

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B,3,S,S) CLIP-normalised float32 -> (B,D) float32 with L2 norm
        ``config.image.normalize_constant`` (image_embeds @ image_project)."""
        if self.image_encoder is None or self.image_project is None or self.config.image is None:
            raise ValueError(f"{self.config.key} has no image encoder")
        feat = self.image_project(self.image_encoder(pixel_values=pixel_values).image_embeds)
        return feat / feat.norm(dim=-1, keepdim=True) * self.config.image.normalize_constant

    def grounding_tokens(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grounding inputs named as in ARCHITECTURE.md -> (tokens (B,N,D), extra or None), float32.

        ``extra`` (B,k,H/8,W/8) is the downsampled condition for spatial models, else None.
        """
        tokens = self.position_net(**inputs)
        extra = self.downsample_net(inputs["condition"]) if self.downsample_net is not None else None
        return tokens, extra

    def unet_grounded(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        tokens: torch.Tensor,
        gate: torch.Tensor,
        extra: torch.Tensor | None = None,
        return_deep: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """sample (B,4,h,w), timestep float () / (1,) / (B,), context (B,77,D), tokens (B,N,D),
        gate () or (1,) float, extra (B,k,h,w) (spatial: downsampler output; inpaint: masked latent + mask)
        -> eps (B,4,h,w) float32 (and, with ``return_deep``, the feature cache's ``deep``:
        see ``unet_shallow``)."""
        gate = gate.to(sample.dtype)
        kwargs = {"gligen": {"tokens": tokens, "gate": gate}}
        return self._unet(self._grounded_conv_in(sample, extra, gate), timestep, context, kwargs, return_deep)

    def unet_plain(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        extra: torch.Tensor | None = None,
        return_deep: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """SD without fusers: sample (B,4,h,w), timestep, context (B,77,D) -> eps (B,4,h,w) (and,
        with ``return_deep``, the feature cache's ``deep``: see ``unet_shallow``).

        Spatial models use SD's conv_in and ignore ``extra``; inpainting models keep their 9-channel
        conv_in and need ``extra``.
        """
        return self._unet(self._plain_conv_in(sample, extra), timestep, context, None, return_deep)

    def unet_shallow(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        deep: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The feature cache's reuse step (DeepCache, arXiv 2312.00858, branch at the first level):
        ``unet_plain`` with everything below the first level replaced by ``deep``, the input of the
        last up block that an earlier plain step returned (B, block_out_channels[1], h, w).

        Runs conv_in, the time embedding, the first down level's resnets / transformers (not its
        downsampler), the last up level and conv_out: with ``deep`` from the same inputs it is
        ``unet_plain`` exactly. sample, timestep, context, extra as ``unet_plain`` -> eps (B,4,h,w).
        """
        return self._shallow(self._plain_conv_in(sample, extra), timestep, context, deep, None)

    def unet_shallow_grounded(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        tokens: torch.Tensor,
        gate: torch.Tensor,
        deep: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The feature cache on the grounded steps: ``unet_grounded`` with everything below the
        first level replaced by ``deep`` from an earlier grounded step (``unet_grounded`` with
        ``return_deep``). The first and last levels run their fusers with ``tokens`` and ``gate``;
        with ``deep`` from the same inputs it is ``unet_grounded`` exactly. Inputs as
        ``unet_grounded``, plus ``deep`` -> eps (B,4,h,w)."""
        gate = gate.to(sample.dtype)
        # what the UNet's forward hands its blocks: position_net (the pass-through) makes ``objs``
        kwargs = {"gligen": {"objs": self.unet.position_net(tokens=tokens, gate=gate)}}
        return self._shallow(self._grounded_conv_in(sample, extra, gate), timestep, context, deep, kwargs)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B,4,h,w) scaled -> images (B,3,8h,8w) float32, un-clamped (about [-1,1])."""
        return self.vae.decode(latents / self.config.vae.scaling_factor).sample

    def vae_encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) in [-1,1] -> mean, std (B,4,H/8,W/8), both times the scaling factor."""
        dist = self.vae.encode(images).latent_dist
        sf = self.config.vae.scaling_factor
        return dist.mean * sf, dist.std * sf

    # ---- helpers -------------------------------------------------------------------------------

    def _plain_conv_in(self, sample: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if self.sd_conv_in is not None:
            return self.sd_conv_in(sample)
        return self.conv_in(self._with_extra(sample, extra))

    def _grounded_conv_in(
        self, sample: torch.Tensor, extra: torch.Tensor | None, gate: torch.Tensor
    ) -> torch.Tensor:
        """Spatial models: SD's conv_in where the gate is 0 (the original's scheduled sampling),
        else the grounded conv_in over [sample; extra]."""
        if self.sd_conv_in is not None:
            return torch.where(
                gate == 0, self.sd_conv_in(sample), self.conv_in(self._with_extra(sample, extra))
            )
        return self.conv_in(self._with_extra(sample, extra))

    def _shallow(
        self,
        h: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        deep: torch.Tensor,
        kwargs: dict | None,
    ) -> torch.Tensor:
        """The UNet after conv_in with its levels below the first replaced by ``deep``: the time
        embedding, the first down level (not its downsampler), the last up level, conv_out."""
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=h, timestep=timestep))
        skips = [h]
        first = unet.down_blocks[0]
        attentions = getattr(first, "attentions", None) or [None] * len(first.resnets)
        for resnet, attention in zip(first.resnets, attentions):
            h = resnet(h, emb)
            if attention is not None:
                h = attention(
                    h, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False
                )[0]
            skips.append(h)
        last = unet.up_blocks[-1]
        if len(last.resnets) != len(skips):
            raise ValueError(
                f"the last up block takes {len(last.resnets)} skips, the first level gives {len(skips)}"
            )
        extra_kw = (
            {"encoder_hidden_states": context, "cross_attention_kwargs": kwargs}
            if getattr(last, "has_cross_attention", False)
            else {}
        )
        h = last(hidden_states=deep.to(h.dtype), temb=emb, res_hidden_states_tuple=tuple(skips), **extra_kw)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)

    def _unet(
        self,
        h: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        kwargs: dict | None,
        return_deep: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The diffusers UNet after conv_in -> eps, or (eps, deep) where deep is the last up block's
        input (caught by a forward pre-hook, so the UNet's own forward runs unchanged)."""
        if not return_deep:
            return self.unet(h, timestep, encoder_hidden_states=context, cross_attention_kwargs=kwargs).sample
        caught: list[torch.Tensor] = []

        def catch(module: nn.Module, args: tuple, kw: dict) -> None:
            caught.append(kw["hidden_states"] if "hidden_states" in kw else args[0])

        handle = self.unet.up_blocks[-1].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            eps = self.unet(h, timestep, encoder_hidden_states=context, cross_attention_kwargs=kwargs).sample
        finally:
            handle.remove()
        return eps, caught[0]

    def _with_extra(self, sample: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if self.config.extra_channels == 0:
            return sample
        if extra is None:
            raise ValueError(f"{self.config.key} needs `extra` ({self.config.extra_channels} channels)")
        return torch.cat([sample, extra.to(sample.dtype)], dim=1)

    def fusers(self) -> list[GatedSelfAttention]:
        """Every fuser, in module order (16 at SD-1.x size)."""
        return [m for m in self.unet.modules() if isinstance(m, GatedSelfAttention)]


def build_model(config: ModelConfig, seed: int = 0) -> GLIGENModel:
    """A deterministic random GLIGEN (eval, float32) that is NOT an identity.

    Built under ``torch.manual_seed(seed)`` inside a forked RNG state (the caller's RNG is untouched).
    Then, from a local generator with the same seed: every fuser's alpha_attn / alpha_dense ~ U[0.2, 0.8],
    null features, person / keypoint embeddings ~ N(0, 1), pos_embedding ~ N(0, 0.02^2) (the original's
    init), ConvNeXt layer scales ~ U[0.1, 0.5] (1e-6 at init would make the backbone almost the
    identity), and the position net's Linear weights ~ N(0, 1/fan_in) (PyTorch's default init shrinks the
    tokens to ~0.05, where the fusers' ``linear`` bias drowns them and grounding barely matters).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GLIGENModel(config)
    gen = torch.Generator().manual_seed(seed)

    def uniform(p: torch.Tensor, lo: float, hi: float) -> None:
        p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=gen))

    def normal(p: torch.Tensor, std: float = 1.0) -> None:
        p.copy_(std * torch.randn(p.shape, generator=gen))

    with torch.no_grad():
        for fuser in model.fusers():
            uniform(fuser.alpha_attn, 0.2, 0.8)
            uniform(fuser.alpha_dense, 0.2, 0.8)
        pn = model.position_net
        for lin in pn.modules():
            if isinstance(lin, nn.Linear):
                normal(lin.weight, lin.in_features**-0.5)
        if isinstance(pn, TextBoxNet):
            normal(pn.null_positive_feature)
            normal(pn.null_position_feature)
        elif isinstance(pn, TextImageBoxNet):
            normal(pn.null_text_feature)
            normal(pn.null_image_feature)
            normal(pn.null_position_feature)
        elif isinstance(pn, KeypointNet):
            normal(pn.person_embeddings)
            normal(pn.keypoint_embeddings)
            normal(pn.null_person_feature)
            normal(pn.null_xy_feature)
        elif isinstance(pn, SpatialNet):
            normal(pn.null_feature)
            normal(pn.pos_embedding, 0.02)
            for block in pn.modules():
                if isinstance(block, ConvNeXtBlock):
                    uniform(block.gamma, 0.1, 0.5)
    return model.float().eval()
