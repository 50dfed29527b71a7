"""GligenPipeline: an engine folder + a backend -> images, the same as gligen_ref's ReferencePipeline.

    pipe = GligenPipeline.from_engines("engines/", backend="ort-cpu")
    result = pipe(GenerationRequest(prompt=..., objects=(...), seed=1))
    result.images            (N, H, W, 3) uint8
    result.timings           seconds per stage (+ "engines": the sum of engine calls)
    result.step_times        seconds of every denoising step

What happens per request mirrors gligen_ref/pipeline.py step for step (validate; text encoder on
[negative, prompt, *phrases] in one batch; image encoder; grounding tokens once for [null; real];
the plan; the loop; VAE decode; NaN check) and draws the same noise in the same order
(NoiseStream), so for the same seed the images agree with the reference up to engine numerics.

Thread-safety: a pipeline may be called from several threads at once. All per-request state (noise
stream, scheduler, arrays, timings) lives in the call's locals; the tokenizer and the backends'
``run`` are thread-safe (see runtime/backend.py). Creating and closing a pipeline are not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gligen_rt.core import flow as F
from gligen_rt.core.errors import NumericalError, RequestError
from gligen_rt.core.imageio import to_uint8
from gligen_rt.core.modality import Modality
from gligen_rt.core.noise import NoiseStream
from gligen_rt.core.request import GenerationRequest, validate
from gligen_rt.core.schedule import make_plan, request_gates
from gligen_rt.core.schedulers import make_scheduler
from gligen_rt.engines.spec import (
    GROUNDING,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    UNET_SHALLOW_GROUNDED,
    VAE_DECODER,
    VAE_ENCODER,
    concrete_shapes,
)

from .backend import Backend, make_backend
from .folder import EngineFolder
from .inputs import grounding_inputs, read_inputs
from .loop import Conditioning, Inpainting, denoise
from .tiles import decode_tiled

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 64  # 3 UNet downsamplings of a latent that is 1/8 of the image


@dataclass
class GenerationResult:
    """images: (N, H, W, 3) uint8. latents: (N, 4, H/8, W/8) float32, the final denoised latents.
    timings: seconds per stage: text_encoder, image_encoder, grounding, vae_encoder (inpainting),
    denoise (the loop), unet (UNet engine calls), vae_decoder, engines (every engine call),
    overhead (total - engines), total. step_times: seconds of every denoising step."""

    images: np.ndarray
    latents: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)


class _Timeline:
    """Per-request timing on the backend's clock without making the host wait: marks are host
    clocks on CPU backends and CUDA events on the backend's stream on GPU backends (arrays.mark),
    read only after the request's one synchronize.

    Also the backend's run: each engine call is bracketed by two marks, summed per engine."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.arrays = backend.arrays
        self.calls: list[tuple[str, Any, Any]] = []
        self.stages: dict[str, tuple[Any, Any]] = {}

    def __call__(self, engine: str, inputs: dict[str, Any]) -> dict[str, Any]:
        start = self.arrays.mark()
        out = self.backend.run(engine, inputs)
        self.calls.append((engine, start, self.arrays.mark()))
        return out

    def stage(self, name: str, start: Any) -> None:
        """Record the stage `name` from the mark `start` to now."""
        self.stages[name] = (start, self.arrays.mark())

    def seconds(self) -> tuple[dict[str, float], dict[str, float]]:
        """({stage: seconds}, {engine: seconds}); call after the request's synchronize."""
        elapsed = self.arrays.elapsed
        per_engine: dict[str, float] = {}
        for engine, a, b in self.calls:
            per_engine[engine] = per_engine.get(engine, 0.0) + elapsed(a, b)
        return {k: elapsed(a, b) for k, (a, b) in self.stages.items()}, per_engine


# Engines --low-memory loads for their stage of a request and releases after it.
UNETS = (UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED)  # the engines a denoising step may run
STAGED_ENGINES = (TEXT_ENCODER, IMAGE_ENCODER, VAE_ENCODER, VAE_DECODER)


class GligenPipeline:
    """One engine folder on one backend.

    single_unet: load only `unet` and run gate-0 steps on it with gate 0 (one UNet in memory, for
        memory-tight devices) instead of `unet_plain`.
    low_memory: the UNet(s) and the grounding engine stay loaded; the text/image encoders and the
        VAE are loaded for their stage of each request and released after it, the resident engines'
        intermediate buffers are freed before the VAE decodes (``Backend.trim``; the next request
        allocates them again), and the VAE decodes in tiles (``vae_tile``) when the image is larger
        than one tile. Peak memory is then the resident engines plus the largest stage's working
        memory. Not for concurrent calls.
    vae_tile: latent pixels per VAE-decoder tile (default with low_memory: the model's default
        image size / 8, i.e. 512 px tiles at SD size; None without it: no tiling).
    """

    def __init__(
        self,
        folder: EngineFolder,
        backend: Backend,
        *,
        single_unet: bool = False,
        low_memory: bool = False,
        vae_tile: int | None = None,
    ) -> None:
        self.folder = folder
        self.config = folder.config
        self.backend = backend
        self.single_unet = single_unet
        self.low_memory = low_memory
        if vae_tile is None and low_memory:
            vae_tile = self.config.default_size // self.config.vae.downscale
        self.vae_tile = vae_tile
        self.tokenizer = folder.tokenizer()
        engines = [n for n in folder.specs if not (single_unet and n == UNET_PLAIN)]
        self.staged = [n for n in engines if low_memory and n in STAGED_ENGINES]
        self.specs: dict[str, Any] = {}
        for name in self.staged:  # verified and measured one at a time, never all in memory
            backend.load(folder, [name])
            self.specs[name] = backend.specs[name]
            backend.release([name])
        backend.load(folder, [n for n in engines if n not in self.staged])
        self.specs.update(backend.specs)

    @contextlib.contextmanager
    def _stage(self, engine: str) -> Iterator[None]:
        """With --low-memory: `engine` is loaded for the block and released after it."""
        if engine not in self.staged:
            yield
            return
        self.backend.load(self.folder, [engine])
        try:
            yield
        finally:
            self.backend.release([engine])

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_engines(
        cls,
        path: str | os.PathLike[str],
        backend: str = "ort-cpu",
        *,
        single_unet: bool = False,
        low_memory: bool = False,
        check_sha256: bool = True,
        **backend_options: Any,
    ) -> GligenPipeline:
        """Open an exported engine folder and load its engines on `backend` (runtime/backend.py).

        check_sha256: hash each graph the backend reads, once (seconds for GB-size graphs; sizes are
            always checked at open; built artifacts are checked by their backend).
        backend_options: passed to the backend, e.g. threads=2, or model=... for "torch".
        """
        folder = EngineFolder.open(path, check_sha256=check_sha256)
        b = make_backend(backend, **backend_options)
        try:
            return cls(folder, b, single_unet=single_unet, low_memory=low_memory)
        except BaseException:
            b.close()
            raise

    @classmethod
    def tiny_random(
        cls,
        modality: Modality | str = Modality.TEXT_BOX,
        inpaint: bool = False,
        backend: str = "ort-cpu",
        *,
        precision: str = "fp32",
        single_unet: bool = False,
        seed: int = 0,
        feature_cache: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        **backend_options: Any,
    ) -> GligenPipeline:
        """The embedded tiny random model, exported once into the cache (runtime/tiny.py) and reused.

        precision: "fp32" | "fp16" graphs. single_unet: a folder without unet_plain (exported faster).
        seed: the random weights' seed (build_model(tiny_random(modality, inpaint), seed)).
        feature_cache: a folder exported with --feature-cache (for requests with feature_cache).
        cache_dir: the cache root (default ~/.cache/gligen-rt, or $GLIGEN_RT_CACHE).
        """
        from .tiny import tiny_engines

        path = tiny_engines(
            modality,
            inpaint,
            precision=precision,
            seed=seed,
            plain=not single_unet,
            feature_cache=feature_cache,
            cache_dir=cache_dir,
        )
        return cls.from_engines(path, backend, single_unet=single_unet, **backend_options)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> GligenPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts ----------------------------------------------------------------------------------

    @property
    def modality(self) -> Modality:
        return self.config.modality

    @property
    def engines(self) -> tuple[str, ...]:
        """The loaded engines."""
        return tuple(self.specs)

    def max_size(self) -> int:
        """The largest height/width every loaded size-dependent engine accepts."""
        sizes = [r[2] for s in self.specs.values() for r in (s.envelope.height, s.envelope.width) if r]
        return min(sizes)

    def check_request(self, request: GenerationRequest) -> tuple[int, int]:
        """Validate against the model and every engine's envelope; (height, width). One-line errors."""
        cfg = self.config
        validate(request, cfg.modality, cfg.inpaint, max_size=self.max_size(), multiple=SIZE_MULTIPLE)
        H, W = request.height or cfg.default_size, request.width or cfg.default_size
        n = request.num_images
        n_phr = sum(o.has_phrase for o in request.objects)
        n_img = sum(o.image is not None for o in request.objects) + (request.style_image is not None)
        unet_batch = 2 * n if request.guidance != 1.0 else n
        batches = {
            TEXT_ENCODER: 2 + n_phr,
            IMAGE_ENCODER: n_img,
            GROUNDING: 2 * n,
            UNET: unet_batch,
            UNET_PLAIN: unet_batch,
            UNET_SHALLOW: unet_batch,
            UNET_SHALLOW_GROUNDED: unet_batch,
            VAE_DECODER: n,
            VAE_ENCODER: 1,
        }
        for name, spec in self.specs.items():
            if name == VAE_DECODER and self.vae_tile:
                t = self.vae_tile * cfg.vae.downscale
                concrete_shapes(spec, batches[name], min(H, t), min(W, t))
            elif batches[name] > 0:
                concrete_shapes(spec, batches[name], H, W)
        if request.feature_cache >= 2 and UNET_SHALLOW not in self.specs:
            raise RequestError(
                f"feature_cache {request.feature_cache} needs engines exported with "
                "`gligen-rt export --feature-cache` (this folder has no unet_shallow): re-export, or drop it"
            )
        if request.feature_cache_grounded >= 2 and UNET_SHALLOW_GROUNDED not in self.specs:
            raise RequestError(
                f"feature_cache_grounded {request.feature_cache_grounded} needs engines exported with "
                "`gligen-rt export --feature-cache` by this version (this folder has no "
                "unet_shallow_grounded): re-export, or drop it"
            )
        return H, W

    # -- one request ----------------------------------------------------------------------------

    def decode(self, latents: Any, run: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> Any:
        """VAE decoder on (B, 4, h, w) latents -> (B, 3, H, W), in tiles when `vae_tile` is set."""
        call = run or self.backend.run

        def one(z: Any) -> Any:
            return call(VAE_DECODER, {"latents": z})["images"]

        if not self.vae_tile:
            return one(latents)
        t = self.vae_tile
        return decode_tiled(
            one,
            latents,
            self.backend.arrays,
            tile=t,
            overlap=max(t // 4, 1),
            factor=self.config.vae.downscale,
        )

    def __call__(
        self,
        request: GenerationRequest,
        noise: np.ndarray | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """Generate request.num_images images.

        noise: optional (N, 4, H/8, W/8) float32 initial latents (else drawn from the seed).
        on_step: called as on_step(i, S) after each denoising step.
        """
        cfg = self.config
        t0 = time.perf_counter()
        H, W = self.check_request(request)
        n = request.num_images
        f = cfg.vae.downscale
        h, w = H // f, W // f
        latent_shape = (n, cfg.unet.latent_channels, h, w)
        if noise is not None and tuple(np.shape(noise)) != latent_shape:
            raise RequestError(
                f"noise has shape {tuple(np.shape(noise))}, expected {latent_shape} (N, 4, H/8, W/8)"
            )
        host = read_inputs(request, cfg, H, W)
        arrays = self.backend.arrays
        run = _Timeline(self.backend)
        rng = NoiseStream(request.seed)

        with arrays.scope():
            tic = arrays.mark()
            ids = self.tokenizer.encode([request.negative_prompt, request.prompt, *host.phrases]).astype(
                np.int32
            )
            with self._stage(TEXT_ENCODER):
                text = run(TEXT_ENCODER, {"input_ids": arrays.asarray(ids)})
            context = text["last_hidden_state"][:2]
            phrase_emb = arrays.to_host(text["pooled"][2:])
            run.stage("text_encoder", tic)

            tic = arrays.mark()
            image_emb = None
            if host.pixel_values is not None:
                with self._stage(IMAGE_ENCODER):
                    image_emb = arrays.to_host(
                        run(IMAGE_ENCODER, {"pixel_values": arrays.asarray(host.pixel_values)})[
                            "image_features"
                        ]
                    )
            run.stage("image_encoder", tic)

            tic = arrays.mark()
            ginputs = grounding_inputs(request, cfg.modality, host, phrase_emb, image_emb)
            gout = run(GROUNDING, {k: arrays.asarray(v, np.float32) for k, v in ginputs.items()})
            tokens, extra = gout["tokens"], gout.get("extra")
            if extra is not None:  # spatial: both CFG halves take the real map's downsampler output
                extra = F.spatial_extra(extra, n, arrays.concat)
            run.stage("grounding", tic)

            x = arrays.asarray(noise if noise is not None else rng.latents(latent_shape), np.float32)
            inpainting = None
            if cfg.inpaint:
                tic = arrays.mark()
                assert host.inpaint_image is not None and host.inpaint_mask is not None
                with self._stage(VAE_ENCODER):
                    enc = run(VAE_ENCODER, {"images": arrays.asarray(host.inpaint_image[None])})
                mean, std = enc["mean"], enc["std"]  # one encode, one sample, shared by the batch
                z0 = arrays.concat([mean + std * arrays.asarray(rng.like(mean))] * n)
                mask = arrays.asarray(np.repeat(host.inpaint_mask[None], n, axis=0))
                extra = arrays.concat([z0 * mask, mask], axis=1)
                run.stage("vae_encoder", tic)

            scheduler = make_scheduler(request.sampler, request.steps)
            gates = request_gates(
                request.beta, request.alpha_type, cfg.modality, cfg.inpaint, len(scheduler.timesteps)
            )
            plan = make_plan(
                scheduler.timesteps,
                gates,
                plain_available=self.backend.has(UNET_PLAIN),
                feature_cache=request.feature_cache,
                feature_cache_grounded=request.feature_cache_grounded,
            )
            if cfg.inpaint:
                step_noise = np.stack([rng.latents(latent_shape) for _ in plan])
                inpainting = Inpainting(z0, mask, arrays.asarray(step_noise))

            ctx = F.cfg_context(context, n, arrays.concat)
            if cfg.inpaint:
                extra = arrays.concat([extra, extra])
            if request.guidance == 1.0:
                ctx, tokens, extra = F.conditional_half(ctx, tokens, extra, n)
            cond = Conditioning(ctx, tokens, extra, float(request.guidance))

            x = x * scheduler.init_noise_sigma
            tic = arrays.mark()
            names = {e: self.backend.specs[e].input_names for e in UNETS if self.backend.has(e)}
            x, step_marks = denoise(
                x, plan, scheduler, cond, run, names, arrays, inpainting=inpainting, on_step=on_step
            )
            run.stage("denoise", tic)

            if self.low_memory:  # the UNets' buffers go before the VAE's come
                self.backend.trim([e for e in (*UNETS, GROUNDING) if self.backend.has(e)])
            tic = arrays.mark()
            with self._stage(VAE_DECODER):
                decoded = self.decode(x, run)
            run.stage("vae_decoder", tic)
            arrays.synchronize()  # the request's one wait for the device
            latents = arrays.to_host(x)
            decoded = arrays.to_host(decoded)

        if not np.isfinite(latents).all():
            raise NumericalError(
                "NaN or Inf in the latents: try fp32 engines or another seed; nothing was saved"
            )
        images = to_uint8(decoded)  # NumericalError on NaN / Inf
        timings, per_engine = run.seconds()
        timings["unet"] = sum(per_engine.get(e, 0.0) for e in UNETS)
        timings["engines"] = sum(per_engine.values())
        timings["total"] = time.perf_counter() - t0
        timings["overhead"] = timings["total"] - timings["engines"]
        step_times = [arrays.elapsed(a, b) for a, b in zip(step_marks, step_marks[1:])]
        return GenerationResult(images, np.asarray(latents, dtype=np.float32), timings, step_times)
