"""The eager PyTorch baseline: diffusers' GLIGEN modules run as StableDiffusionGLIGENPipeline runs them.

Built on the same random weights as the reference model (``GLIGENModel``'s state dict maps onto
diffusers' names one to one: the UNet with ``attention_type="gated"`` and its
``GatedSelfAttentionDense`` fusers, ``conv_in``, and the position net as diffusers'
``GLIGENTextBoundingboxProjection``); the CLIP text encoder and the VAE are the transformers /
diffusers modules themselves. Nothing from our runtime is used.

What the loop does, as the diffusers pipeline does (text-box):

- encodes the prompt and the negative prompt in two text-encoder calls, the phrases in a third
  (padded to the longest phrase), pooled output per phrase;
- passes ``cross_attention_kwargs={"gligen": {boxes, positive_embeddings, masks}}`` to every UNet
  call, so the position net runs inside every call (the unconditional half's masks are 0);
- enables every fuser, and disables them (``fuser.enabled = False``) from step ``int(beta * S)`` on;
- one UNet call per step on [uncond; cond], guidance, VAE decode.

Departure, on purpose: the sampler is gligen_rt.core's PLMS (the original's), not diffusers'
PNDMScheduler, so both pipelines make exactly the same UNet calls (PLMS evaluates twice on its first
step) and the image can be compared with the reference's. The sampler's arithmetic is a few
element-wise ops per step, nothing next to a UNet call.

Precisions: ``fp32``; ``bf16`` / ``fp16`` (``module.to(dtype)``: weights, activations and the
latents in that dtype, as diffusers runs with ``torch_dtype``); ``bf16-autocast`` (FP32 weights and
latents, matrix work under ``torch.autocast(device, torch.bfloat16)``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from diffusers.models.attention import GatedSelfAttentionDense

from gligen_rt.benchmarks.measure import CallTimer, run_record
from gligen_rt.core.imageio import to_uint8
from gligen_rt.core.modality import MAX_OBJECTS, Modality
from gligen_rt.core.noise import NoiseStream
from gligen_rt.core.request import GenerationRequest
from gligen_rt.core.schedule import beta_gates
from gligen_rt.core.schedulers import make_scheduler
from gligen_rt.core.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "bf16-autocast": torch.float32,
}


def diffusers_unet(model: Any) -> torch.nn.Module:
    """diffusers' gated UNet2DConditionModel holding ``model``'s tensors (shared, not copied).

    ``model``: a gligen_ref GLIGENModel (text-box). The UNet is built on the meta device and its
    parameters are assigned from the reference model's state dict (``load_state_dict(assign=True)``),
    so no second copy of the weights exists.
    """
    from diffusers import UNet2DConditionModel

    from gligen_ref.model import build_unet

    config = model.config
    if config.modality is not Modality.TEXT_BOX or config.inpaint:
        raise ValueError(f"the diffusers eager baseline covers text-box only, not {config.key}")
    with torch.device("meta"):
        unet: UNet2DConditionModel = build_unet(config)
        # diffusers fixes the position net's hidden width at 512 (SD-1.4's); tiny models use less
        hidden = config.grounding.mlp_hidden
        pn = unet.position_net
        if pn.linears[0].out_features != hidden:
            d = config.context_dim
            pn.linears = torch.nn.Sequential(
                torch.nn.Linear(pn.linears[0].in_features, hidden),
                torch.nn.SiLU(),
                torch.nn.Linear(hidden, hidden),
                torch.nn.SiLU(),
                torch.nn.Linear(hidden, d),
            )
    ours = model.state_dict()
    state = {k[len("unet.") :]: v for k, v in ours.items() if k.startswith("unet.")}
    state.update({k: v for k, v in ours.items() if k.startswith("conv_in.")})
    state.update({k: v for k, v in ours.items() if k.startswith("position_net.")})
    missing, unexpected = unet.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"weights do not map onto diffusers' UNet: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return unet.eval()


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


class EagerGLIGEN:
    """diffusers' modules + the StableDiffusionGLIGENPipeline loop; ``generate`` times every stage."""

    def __init__(
        self, model: Any, tokenizer: ClipTokenizer, precision: str = "fp32", device: str = "cpu"
    ) -> None:
        if precision not in DTYPES:
            raise ValueError(f"unknown eager precision {precision!r}: choose one of {', '.join(DTYPES)}")
        self.config = model.config
        self.tokenizer = tokenizer
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        self.unet = diffusers_unet(model)
        self.text_encoder = model.text_encoder
        self.vae = model.vae
        self.vae.encoder = None  # decode only: free what the pipeline never uses
        self.vae.quant_conv = None
        with _quiet_diffusers():  # its "modules to keep in float32: []" note on every .to(dtype)
            for m in (self.unet, self.text_encoder, self.vae):
                m.to(self.device, self.dtype)
        self.fusers = [m for m in self.unet.modules() if type(m) is GatedSelfAttentionDense]
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        self.timer = CallTimer(sync)
        self._text = self.timer.wrap("text_encoder", self.text_encoder)
        self._unet_grounded = self.timer.wrap("unet_grounded", self.unet)
        self._unet_plain = self.timer.wrap("unet_plain", self.unet)
        self._decode = self.timer.wrap("vae_decoder", self.vae.decode)
        # The position net runs inside every UNet call: time it there (hooks), reported apart. On
        # CUDA with events read after the run (a synchronize inside the UNet call would stall it).
        self._pn_tic = 0.0
        self._pn_events: list[tuple[Any, Any]] = []
        self.unet.position_net.register_forward_pre_hook(self._pn_start)
        self.unet.position_net.register_forward_hook(self._pn_end)

    def _pn_start(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self._pn_events.append(
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            )
            self._pn_events[-1][0].record()
        else:
            self._pn_tic = time.perf_counter()

    def _pn_end(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self._pn_events[-1][1].record()
        else:
            self.timer.add("grounding", time.perf_counter() - self._pn_tic)

    def _collect_events(self) -> None:
        if self._pn_events:
            torch.cuda.synchronize()
            for start, end in self._pn_events:
                self.timer.add("grounding", start.elapsed_time(end) / 1000.0)
            self._pn_events.clear()

    def weight_bytes(self) -> int:
        """Bytes of the weights in use (text encoder, UNet with fusers and position net, VAE decoder)."""
        mods = (self.text_encoder, self.unet, self.vae)
        return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())

    def enable_fusers(self, enabled: bool) -> None:
        """diffusers' StableDiffusionGLIGENPipeline.enable_fuser."""
        for f in self.fusers:
            f.enabled = enabled

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> tuple[np.ndarray, dict[str, Any]]:
        """-> images (1, H, W, 3) uint8 and the run record (end to end, every call; seconds)."""
        self.timer.take()
        tic = time.perf_counter()
        with self._autocast():
            images = self._generate(request)
        images = to_uint8(images.float().cpu().numpy())
        e2e = time.perf_counter() - tic
        self._collect_events()
        return images, run_record(e2e, self.timer.take(), nested=("grounding",))

    def _ids(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.tokenizer.encode(texts)).to(self.device)

    def _generate(self, request: GenerationRequest) -> torch.Tensor:
        cfg = self.config
        dev, dtype = self.device, self.dtype
        height, width = request.height or cfg.default_size, request.width or cfg.default_size
        # 3. encode_prompt: prompt and negative prompt, one call each
        cond = self._text(input_ids=self._ids([request.prompt]))[0]
        uncond = self._text(input_ids=self._ids([request.negative_prompt]))[0]
        prompt_embeds = torch.cat([uncond, cond]).to(dtype)
        # 5.1 phrases: padded to the longest phrase, pooled output
        phrases = [o.phrase or "" for o in request.objects]
        boxes = torch.zeros(MAX_OBJECTS, 4, device=dev, dtype=dtype)
        embeddings = torch.zeros(MAX_OBJECTS, cfg.context_dim, device=dev, dtype=dtype)
        masks = torch.zeros(MAX_OBJECTS, device=dev, dtype=dtype)
        n = len(phrases)
        if n:
            ids = self.tokenizer.encode(phrases)
            longest = int((ids != self.tokenizer.pad_id).sum(axis=1).max()) + 1  # + the EOS
            ids = torch.from_numpy(ids[:, :longest]).to(dev)
            attention = torch.ones_like(ids)
            pooled = self._text(input_ids=ids, attention_mask=attention).pooler_output
            boxes[:n] = torch.tensor([o.box for o in request.objects], device=dev, dtype=dtype)
            embeddings[:n] = pooled.to(dtype)
            masks[:n] = 1
        boxes = torch.cat([boxes[None]] * 2)
        embeddings = torch.cat([embeddings[None]] * 2)
        masks = torch.cat([masks[None]] * 2)
        masks[:1] = 0
        kwargs = {"gligen": {"boxes": boxes, "positive_embeddings": embeddings, "masks": masks}}

        scheduler = make_scheduler(request.sampler, request.steps)
        num_grounding = int(sum(beta_gates(len(scheduler.timesteps), request.beta or 0.0)))
        h, w = height // cfg.vae.downscale, width // cfg.vae.downscale
        noise = NoiseStream(request.seed).latents((1, cfg.unet.latent_channels, h, w))
        latents = torch.from_numpy(noise).to(dev, dtype) * scheduler.init_noise_sigma
        self.enable_fusers(True)
        grounded = True
        guidance = request.guidance

        def eps_fn(x: torch.Tensor, t: float) -> torch.Tensor:
            unet = self._unet_grounded if grounded else self._unet_plain
            ts = torch.tensor(t, device=dev)
            e = unet(
                torch.cat([x, x]).to(dtype),
                ts,
                encoder_hidden_states=prompt_embeds,
                cross_attention_kwargs=kwargs,
            )
            e_u, e_c = e.sample.to(x.dtype).chunk(2)
            return e_u + guidance * (e_c - e_u)

        for i in range(len(scheduler.timesteps)):
            if i == num_grounding:  # scheduled sampling
                self.enable_fusers(False)
                grounded = False
            latents = scheduler.step(latents, i, eps_fn)
        return self._decode(latents.to(dtype) / self.vae.config.scaling_factor).sample


def sd_unet_step_times(eager: EagerGLIGEN, size: int, calls: int) -> list[float]:
    """Seconds per call of diffusers' plain SD UNet (no fusers, no position net) at the same size,
    precision and CFG batch as the plain phase: the control of the "plain step <= 1.03x SD" target.

    The SD UNet shares the gated UNet's tensors (meta build + assign), so it costs no memory.
    """
    from gligen_rt.benchmarks.machine import sd_unet_like

    cfg = eager.config
    with torch.device("meta"):
        sd = sd_unet_like(cfg)
    state = {
        k: v
        for k, v in eager.unet.state_dict().items()
        if ".fuser." not in k and not k.startswith("position_net.")
    }
    sd.load_state_dict(state, strict=True, assign=True)
    lat = size // cfg.vae.downscale
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.unet.latent_channels, lat, lat, generator=g).to(eager.device, eager.dtype)
    ctx = torch.randn(2, 77, cfg.context_dim, generator=g).to(eager.device, eager.dtype)
    t = torch.tensor(500.0, device=eager.device)
    times = []
    with torch.no_grad(), eager._autocast():
        for i in range(calls + 1):
            tic = time.perf_counter()
            sd(x, t, encoder_hidden_states=ctx)
            if eager.device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up
                times.append(time.perf_counter() - tic)
    return times
