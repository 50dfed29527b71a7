"""The reference pipeline: GLIGEN's original sampling semantics on the PyTorch model.

One request -> images. What happens, in order (the runtime does the same over engines):

1. validate the request against the model (one-line RequestError on bad input);
2. CLIP-encode [negative prompt, prompt, *phrases] in ONE batched call: prompts give the 77-token
   context, phrases their pooled (EOS) feature;
3. text-image models: CLIP-encode the reference images (projection + 28.7 renormalisation);
4. grounding tokens ONCE for the classifier-free-guidance batch [null; real] (null = every mask 0,
   so each token becomes MLP(null features); spatial maps keep their condition for the downsampler,
   as the original passes `grounding_extra_input` unchanged to the unconditional branch);
5. the per-step plan (timestep, gate, engine) from `beta` or `alpha_type`;
6. the loop: inpainting replaces the known region with q_sample(z0, t) at the start of every step;
   the UNet runs once per step on [uncond; cond]; eps = eps_u + s (eps_c - eps_u);
7. VAE decode, NaN check, uint8.

Noise comes from gligen_rt.core.noise.NoiseStream(seed), so the same seed gives the same image here
and in every runtime backend. The CFG layout and the per-step arithmetic (steps 4-6) are
gligen_rt.core.flow's, the same functions the runtime calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gligen_ref.model import GLIGENModel
from gligen_rt.core import flow as F
from gligen_rt.core import grounding as G
from gligen_rt.core.config import ModelConfig
from gligen_rt.core.errors import NumericalError
from gligen_rt.core.imageio import to_uint8
from gligen_rt.core.modality import Modality
from gligen_rt.core.noise import NoiseStream
from gligen_rt.core.request import GenerationRequest, validate
from gligen_rt.core.schedule import make_plan, request_gates
from gligen_rt.core.schedulers import make_scheduler
from gligen_rt.core.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 64  # 3 UNet downsamplings of a latent that is 1/8 of the image


@dataclass
class GenerationResult:
    images: np.ndarray  # (N, H, W, 3) uint8
    latents: np.ndarray  # (N, 4, H/8, W/8) float32, final denoised latents
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class ReferencePipeline:
    """GLIGEN on the PyTorch reference model (float32, CPU or any torch device)."""

    def __init__(self, model: GLIGENModel, tokenizer: ClipTokenizer, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.config: ModelConfig = model.config

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_preset(
        cls,
        name: str = "tiny-random",
        modality: Modality | str = Modality.TEXT_BOX,
        inpaint: bool = False,
        seed: int = 0,
    ) -> ReferencePipeline:
        """A random-weight model of a preset size (`tiny` is the embedded default model)."""
        from gligen_ref.model import build_model
        from gligen_rt.core.config import preset

        return cls(build_model(preset(name, modality, inpaint), seed), ClipTokenizer.default())

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> ReferencePipeline:
        from gligen_ref.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, **kwargs)
        return cls(loaded.model, loaded.tokenizer)

    # -- stages ---------------------------------------------------------------------------------

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.no_grad()
    def encode_text(
        self, prompt: str, negative: str, phrases: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context (2, 77, D) for [negative, prompt]; pooled phrase features (n_phrases, D)."""
        ids = self.tokenizer.encode([negative, prompt, *phrases]).astype(np.int64)
        hidden, pooled = self.model.encode_text(self._t(ids))
        return hidden[:2], pooled[2:]

    @torch.no_grad()
    def encode_images(self, paths: list[str]) -> torch.Tensor | None:
        """CLIP image grounding features (n, D) for text-image models."""
        if not paths:
            return None
        size = self.config.image.image_size
        pixels = np.stack([G.clip_image_input(p, size) for p in paths])
        return self.model.encode_images(self._t(pixels))

    def grounding_inputs(
        self,
        request: GenerationRequest,
        phrase_emb: torch.Tensor,
        image_emb: torch.Tensor | None,
        size: tuple[int, int],
    ) -> dict[str, np.ndarray]:
        """The `grounding` engine inputs for the CFG batch [null x n; real x n]."""
        m = self.config.modality
        if m.is_box:
            style = None
            if request.style_image is not None and image_emb is not None:
                style, image_emb = image_emb[-1].cpu().numpy(), image_emb[:-1]
            real = G.box_inputs(
                request.objects,
                phrase_emb.cpu().numpy(),
                None if image_emb is None else image_emb.cpu().numpy(),
                text_image=m is Modality.TEXT_IMAGE_BOX,
                style_embedding=style,
            )
        elif m is Modality.KEYPOINT:
            real = G.keypoint_inputs(request.persons)
        else:
            real = G.condition_input(request.condition, m, *size)
        return G.stack_cfg(G.null_inputs(real), real, request.num_images)

    # -- the whole request --------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        request: GenerationRequest,
        *,
        noise: np.ndarray | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        cfg = self.config
        validate(request, cfg.modality, cfg.inpaint, multiple=SIZE_MULTIPLE)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        H, W, n, h, w = F.request_geometry(request, cfg)
        rng = NoiseStream(request.seed)

        tic = time.perf_counter()
        phrases = [o.phrase for o in request.objects if o.has_phrase]
        context, phrase_emb = self.encode_text(request.prompt, request.negative_prompt, phrases)
        timings["text_encoder"] = time.perf_counter() - tic

        tic = time.perf_counter()
        image_paths = [o.image for o in request.objects if o.image is not None]
        if request.style_image is not None:
            image_paths.append(request.style_image)
        image_emb = self.encode_images(image_paths) if cfg.modality is Modality.TEXT_IMAGE_BOX else None
        timings["image_encoder"] = time.perf_counter() - tic

        tic = time.perf_counter()
        ginputs = self.grounding_inputs(request, phrase_emb, image_emb, (H, W))
        tokens, extra = self.model.grounding_tokens(**{k: self._t(v) for k, v in ginputs.items()})
        if extra is not None:  # spatial: both CFG halves take the real map's downsampler output
            extra = F.spatial_extra(extra, n, torch.cat)
        timings["grounding"] = time.perf_counter() - tic

        x = noise if noise is not None else rng.latents((n, cfg.unet.latent_channels, h, w))
        x = self._t(np.asarray(x, dtype=np.float32))
        z0 = mask = None
        if cfg.inpaint:
            tic = time.perf_counter()
            image = self._t(G.load_image(request.inpaint_image, H, W)[None])
            mean, std = self.model.vae_encode(image)  # one encode, one sample, shared by the batch
            z0 = (mean + std * self._t(rng.like(mean.cpu().numpy()))).expand(n, -1, -1, -1)
            boxes = [o.box for o in request.objects]
            mask = self._t(G.inpaint_mask(boxes, h, w)[None]).expand(n, -1, -1, -1)
            extra = torch.cat([z0 * mask, mask], dim=1)
            timings["vae_encoder"] = time.perf_counter() - tic

        ctx = F.cfg_context(context, n, torch.cat)
        if cfg.inpaint:
            extra = torch.cat([extra, extra])
        if request.guidance == 1.0:
            ctx, tokens, extra = F.conditional_half(ctx, tokens, extra, n)

        scheduler = make_scheduler(request.sampler, request.steps)
        gates = request_gates(
            request.beta, request.alpha_type, cfg.modality, cfg.inpaint, len(scheduler.timesteps)
        )
        plan = make_plan(
            scheduler.timesteps,
            gates,
            plain_available=True,
            feature_cache=request.feature_cache,
            feature_cache_grounded=request.feature_cache_grounded,
        )
        cached = any(step.engine == "unet_shallow" for step in plan)
        cached_grounded = any(step.engine == "unet_shallow_grounded" for step in plan)
        kept: dict[str, torch.Tensor] = {}  # the feature cache: deep of the last whole UNet
        x = x * scheduler.init_noise_sigma
        tic = time.perf_counter()
        for step in plan:
            if cfg.inpaint:
                known = scheduler.add_noise(z0, self._t(rng.like(z0.cpu().numpy())), step.index)
                x = F.inpaint_blend(x, known, mask)
            gate = torch.tensor([step.gate], dtype=torch.float32, device=self.device)

            def unet(sample: torch.Tensor, t: float, step=step, gate=gate) -> torch.Tensor:
                ts = torch.tensor([float(t)], dtype=torch.float32, device=self.device)
                if step.engine == "unet" and not cached_grounded:
                    return self.model.unet_grounded(sample, ts, ctx, tokens, gate, extra)
                if step.engine == "unet":
                    eps, kept["deep"] = self.model.unet_grounded(
                        sample, ts, ctx, tokens, gate, extra, return_deep=True
                    )
                    return eps
                if step.engine == "unet_shallow_grounded":
                    return self.model.unet_shallow_grounded(
                        sample, ts, ctx, tokens, gate, kept["deep"], extra
                    )
                if step.engine == "unet_shallow":
                    return self.model.unet_shallow(sample, ts, ctx, kept["deep"], extra)
                if not cached:
                    return self.model.unet_plain(sample, ts, ctx, extra)
                eps, kept["deep"] = self.model.unet_plain(sample, ts, ctx, extra, return_deep=True)
                return eps

            x = scheduler.step(x, step.index, F.make_eps_fn(unet, request.guidance, torch.cat))
            if on_step is not None:
                on_step(step.index, len(plan))
        timings["denoise"] = time.perf_counter() - tic

        tic = time.perf_counter()
        decoded = self.model.vae_decode(x)
        timings["vae_decoder"] = time.perf_counter() - tic
        if not torch.isfinite(decoded).all() or not torch.isfinite(x).all():
            raise NumericalError(
                "NaN or Inf in the latents: try --precision fp32 or another seed; nothing was saved"
            )
        timings["total"] = time.perf_counter() - t0
        return GenerationResult(to_uint8(decoded.float().cpu().numpy()), x.float().cpu().numpy(), timings)
