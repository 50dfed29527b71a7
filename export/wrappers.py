"""One small nn.Module per engine: forward takes the spec's inputs in spec order, returns its outputs.

The wrappers hold no model math: each calls one `GLIGENModel` method (gligen_ref/model.py). They
only adapt the boundary: int32 token ids are cast to int64 inside the text encoder, the grounding
engine's named inputs are passed by name, tuples are returned in the spec's output order.

| engine | wrapper | model method |
|---|---|---|
| text_encoder | TextEncoder | encode_text |
| image_encoder | ImageEncoder | encode_images |
| grounding | Grounding | grounding_tokens |
| unet | UNetGrounded | unet_grounded |
| unet_plain | UNetPlain | unet_plain |
| unet_shallow | UNetShallow | unet_shallow |
| unet_shallow_grounded | UNetShallowGrounded | unet_shallow_grounded |
| vae_decoder | VAEDecoder | vae_decode |
| vae_encoder | VAEEncoder | vae_encode |
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gligen_rt.engines import spec as S


class EngineWrapper(nn.Module):
    """Base: holds the model (a GLIGENModel, possibly with fused fusers) and the engine's spec."""

    def __init__(self, model: nn.Module, spec: S.EngineSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    @property
    def deep(self) -> bool:
        """Whether the spec also outputs the feature cache's ``deep`` (the UNets, export --feature-cache)."""
        return "deep" in self.spec.output_names


class TextEncoder(EngineWrapper):
    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, 77) int32 -> last_hidden_state (B, 77, D), pooled (B, D) float32."""
        return self.model.encode_text(input_ids.to(torch.int64))


class ImageEncoder(EngineWrapper):
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) float32 CLIP-normalised -> image_features (B, D) float32."""
        return self.model.encode_images(pixel_values)


class Grounding(EngineWrapper):
    """Inputs are the modality's grounding inputs in spec order (see engines/spec.py)."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """grounding inputs (float32) -> tokens (B, N, D) [, extra (B, k, H/8, W/8)] float32."""
        names = self.spec.input_names
        if len(inputs) != len(names):
            raise TypeError(f"grounding takes {len(names)} inputs {names}, got {len(inputs)}")
        tokens, extra = self.model.grounding_tokens(**dict(zip(names, inputs)))
        if len(self.spec.outputs) == 2:
            if extra is None:
                raise ValueError("the grounding spec has an `extra` output but the model returned none")
            return tokens, extra
        return tokens


class UNetGrounded(EngineWrapper):
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        tokens: torch.Tensor,
        gate: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, 4, h, w), timestep (1,), context (B, 77, D), tokens (B, N, D), gate (1,),
        [extra (B, k, h, w)] float32 -> eps (B, 4, h, w) [, deep (feature cache)] float32."""
        return self.model.unet_grounded(sample, timestep, context, tokens, gate, extra, self.deep)


class UNetPlain(EngineWrapper):
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, 4, h, w), timestep (1,), context (B, 77, D), [extra (B, 5, h, w) inpainting]
        float32 -> eps (B, 4, h, w) [, deep (feature cache)] float32."""
        return self.model.unet_plain(sample, timestep, context, extra, self.deep)


class UNetShallow(EngineWrapper):
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        deep: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, 4, h, w), timestep (1,), context (B, 77, D), deep (B, C1, h, w) from an earlier
        plain step, [extra (B, 5, h, w) inpainting] float32 -> eps (B, 4, h, w) float32."""
        return self.model.unet_shallow(sample, timestep, context, deep, extra)


class UNetShallowGrounded(EngineWrapper):
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        tokens: torch.Tensor,
        gate: torch.Tensor,
        deep: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, 4, h, w), timestep (1,), context (B, 77, D), tokens (B, N, D), gate (1,), deep
        (B, C1, h, w) from an earlier grounded step, [extra (B, k, h, w)] float32 -> eps float32."""
        return self.model.unet_shallow_grounded(sample, timestep, context, tokens, gate, deep, extra)


class VAEDecoder(EngineWrapper):
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, 4, h, w) scaled float32 -> images (B, 3, 8h, 8w) float32, about [-1, 1]."""
        return self.model.vae_decode(latents)


class VAEEncoder(EngineWrapper):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) float32 in [-1, 1] -> mean, std (B, 4, H/8, W/8) float32 (scaled)."""
        return self.model.vae_encode(images)


WRAPPERS: dict[str, type[EngineWrapper]] = {
    S.TEXT_ENCODER: TextEncoder,
    S.IMAGE_ENCODER: ImageEncoder,
    S.GROUNDING: Grounding,
    S.UNET: UNetGrounded,
    S.UNET_PLAIN: UNetPlain,
    S.UNET_SHALLOW: UNetShallow,
    S.UNET_SHALLOW_GROUNDED: UNetShallowGrounded,
    S.VAE_DECODER: VAEDecoder,
    S.VAE_ENCODER: VAEEncoder,
}


def wrap(model: nn.Module, spec: S.EngineSpec) -> EngineWrapper:
    """The eval-mode wrapper of engine ``spec.name`` around ``model``."""
    try:
        cls = WRAPPERS[spec.name]
    except KeyError:
        raise ValueError(f"no export wrapper for engine {spec.name!r}") from None
    return cls(model, spec).eval()


def run_wrapper(wrapper: EngineWrapper, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Run ``wrapper`` on named inputs (numpy arrays or tensors) -> {output name: tensor}, no grad."""
    args = [torch.as_tensor(inputs[name]) for name in wrapper.spec.input_names]
    with torch.inference_mode():
        out = wrapper(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return dict(zip(wrapper.spec.output_names, outs))
