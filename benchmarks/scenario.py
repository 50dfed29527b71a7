"""What one benchmark run measures: the scenario, the side-by-side configurations, the request.

A *scenario* fixes the work (model size with random weights, modality, resolution, steps, beta,
sampler, seeds) and how it is timed (warm-up runs, timed repeats, matmul size for the peak). A
*configuration* is one column of the side-by-side table:

| kind | backend | precision | what runs |
|---|---|---|---|
| ``ours`` | ort-cpu, openvino, ort-cuda, tensorrt, ... | fp32 / fp16 / bf16 | gligen_rt.runtime over exported engines |
| ``reference`` | torch | fp32 | gligen_ref.pipeline.ReferencePipeline (the image every PSNR is against) |
| ``eager`` | torch | fp32 / bf16 / bf16-autocast / fp16 | diffusers' gated UNet + position net, run as StableDiffusionGLIGENPipeline runs it (benchmarks/eager.py) |
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gligen_rt.core.config import check_token_downsample
from gligen_rt.core.modality import Modality

MODELS = ("tiny-random", "sd14")
KINDS = ("ours", "reference", "eager")

# Runtime backends and the precisions each can run. bf16 on openvino is the CPU's BF16 inference
# hint over the fp32 engines; fp16 on ort-cpu runs the fp16 graphs (casts inside, fp32 arithmetic).
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("fp32", "fp16"),
    "openvino": ("fp32", "bf16", "int8", "int8a"),
    "ort-cuda": ("fp32", "fp16"),
    "ort-trt": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16"),
}
CPU_BACKENDS = ("ort-cpu", "openvino")
GPU_BACKENDS = ("tensorrt", "ort-cuda")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8a")

# Eager PyTorch precisions per device: "bf16" casts the weights (.to(bfloat16)); "bf16-autocast"
# keeps FP32 weights under torch.autocast (both are common ways to run BF16 on a CPU).
EAGER_PRECISIONS = {"cpu": ("fp32", "bf16", "bf16-autocast"), "cuda": ("fp32", "fp16", "bf16")}

PROMPT = "a cozy living room with a sofa, a lamp and a painting, photo, detailed"
NEGATIVE = "blurry, low quality"
BOXES = (
    ("a grey sofa", (0.05, 0.55, 0.70, 0.95)),
    ("a floor lamp", (0.75, 0.15, 0.95, 0.90)),
    ("a painting", (0.20, 0.10, 0.55, 0.40)),
)


@dataclass(frozen=True)
class Scenario:
    """The work and how it is timed; ``key`` names its results (one table per key)."""

    model: str = "sd14"
    modality: str = "text-box"
    size: int = 256
    steps: int = 20
    beta: float = 0.3
    sampler: str = "plms"
    guidance: float = 7.5
    seed: int = 1
    model_seed: int = 0
    warmup: int = 1
    repeats: int = 3
    device: str = "cpu"  # "cpu" or "cuda"
    threads: int | None = None  # torch intra-op threads (None: the physical cores)
    matmul_size: int = 4096  # n of the n^3 matmul whose speed is the machine's peak
    gate_skip: bool = False  # our engines: one UNet with the fusers behind an If (no unet_plain)
    feature_cache: int = 0  # K >= 2: each of our configurations also runs with the feature cache K
    feature_cache_grounded: int = 0  # K >= 2: ... and once more with the cache on grounded steps too
    token_downsample: int = 1  # F > 1: our engines and the plain SD control pool the first level's keys FxF

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        Modality(self.modality)
        if self.size % 64:
            raise ValueError(f"size {self.size} must be a multiple of 64")
        if self.steps < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("steps and repeats must be >= 1 and warmup >= 0")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta {self.beta} must be in [0, 1]")
        if self.feature_cache < 0 or self.feature_cache_grounded < 0:
            raise ValueError(
                f"feature caches {self.feature_cache}, {self.feature_cache_grounded} must be 0 (off) "
                "or an interval >= 2"
            )
        check_token_downsample(self.token_downsample)  # torch-free: our runtime's worker never imports torch
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r} must be cpu or cuda")

    @property
    def key(self) -> str:
        """e.g. ``sd14-text-box-256px-20steps-cpu``."""
        skip = "-gateskip" if self.gate_skip else ""
        cache = f"-fc{self.feature_cache}" if self.feature_cache >= 2 else ""
        cache += f"-fcg{self.feature_cache_grounded}" if self.feature_cache_grounded >= 2 else ""
        cache += f"-td{self.token_downsample}" if self.token_downsample > 1 else ""
        return f"{self.model}-{self.modality}-{self.size}px-{self.steps}steps-{self.device}{skip}{cache}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Config:
    """One side-by-side configuration (a column of the table, a bar group of the plot)."""

    kind: str
    backend: str = "torch"
    precision: str = "fp32"
    feature_cache: int = 0  # ours: the request's feature_cache (engines exported with it when >= 2)
    feature_cache_grounded: int = 0  # ours: the request's feature_cache_grounded (the same engines)
    low_memory: bool = False  # ours: the pipeline's low_memory (staged encoders and VAE, trimmed UNets)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}: choose one of {', '.join(KINDS)}")

    @property
    def label(self) -> str:
        """``ours ort-cpu fp32``, ``reference fp32``, ``eager bf16-autocast``."""
        if self.kind == "ours":
            cache = f" feature-cache {self.feature_cache}" if self.feature_cache >= 2 else ""
            if self.feature_cache_grounded >= 2:
                cache += f" grounded {self.feature_cache_grounded}"
            return f"ours {self.backend} {self.precision}{cache}{' low-memory' if self.low_memory else ''}"
        return f"{self.kind} {self.precision}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(
            kind=d["kind"],
            backend=d.get("backend", "torch"),
            precision=d.get("precision", "fp32"),
            feature_cache=d.get("feature_cache", 0),
            feature_cache_grounded=d.get("feature_cache_grounded", 0),
            low_memory=bool(d.get("low_memory", False)),
        )


def plan_configs(
    scenario: Scenario,
    backends: list[str],
    precisions: list[str],
    eager: bool = True,
    reference: bool = True,
    cpu_bf16: bool = True,
    eager_precisions: list[str] | None = None,
    cached_only: bool = False,
    low_memory: bool = False,
) -> tuple[list[Config], list[dict[str, str]]]:
    """The configurations to run, and the combinations left out with the reason.

    ``cpu_bf16``: whether the CPU has BF16 arithmetic (eager BF16 and OpenVINO's bf16 hint need it).
    ``eager_precisions``: a subset of ``EAGER_PRECISIONS[device]`` (default: all of them).
    ``cached_only``: with a feature cache, leave out our configurations without it (they run on a
    second engine folder, exported and built without the cache).
    ``low_memory``: each of our configurations runs once more with the pipeline's ``low_memory``.
    """
    configs: list[Config] = []
    skipped: list[dict[str, str]] = []
    if reference:
        configs.append(Config("reference", "torch", "fp32"))
    for backend in backends:
        if backend not in BACKEND_PRECISIONS:
            raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKEND_PRECISIONS)}")
        for precision in precisions:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
            label = f"ours {backend} {precision}"
            if precision not in BACKEND_PRECISIONS[backend]:
                skipped.append(
                    {"label": label, "reason": f"{backend} runs {'/'.join(BACKEND_PRECISIONS[backend])}"}
                )
            elif precision in ("bf16", "int8", "int8a") and scenario.device == "cpu" and not cpu_bf16:
                skipped.append({"label": label, "reason": "this CPU has no BF16 arithmetic"})
            else:
                if cached_only and scenario.feature_cache >= 2:
                    skipped.append({"label": label, "reason": "left out by --cached-only"})
                else:
                    configs.append(Config("ours", backend, precision))
                if scenario.feature_cache >= 2:  # the same engines with and without the cache, one run
                    configs.append(Config("ours", backend, precision, scenario.feature_cache))
                if scenario.feature_cache_grounded >= 2:  # and with the grounded steps cached too
                    configs.append(
                        Config(
                            "ours",
                            backend,
                            precision,
                            scenario.feature_cache,
                            scenario.feature_cache_grounded,
                        )
                    )
    if low_memory:
        configs += [dataclasses.replace(c, low_memory=True) for c in configs if c.kind == "ours"]
    if eager:
        if Modality(scenario.modality) is not Modality.TEXT_BOX:
            skipped.append(
                {"label": "eager", "reason": "diffusers' GLIGEN eager baseline exists for text-box only"}
            )
        else:
            available = EAGER_PRECISIONS[scenario.device]
            for precision in eager_precisions or available:
                if precision not in available:
                    raise ValueError(
                        f"eager precision {precision!r} on {scenario.device}: choose from {', '.join(available)}"
                    )
                if precision.startswith("bf16") and scenario.device == "cpu" and not cpu_bf16:
                    skipped.append(
                        {"label": f"eager {precision}", "reason": "this CPU has no BF16 arithmetic"}
                    )
                    continue
                configs.append(Config("eager", "torch", precision))
    return configs, skipped


def make_request(scenario: Scenario, workdir: Path):
    """The benchmark's GenerationRequest for ``scenario.modality`` (synthetic inputs written to ``workdir``).

    Box modalities get the three objects of ``BOXES`` (text-image-box: each with a generated
    reference image too); keypoint two people; spatial modalities a generated condition map.
    """
    import numpy as np

    from gligen_rt.core.imageio import save_png
    from gligen_rt.core.request import GenerationRequest, GroundedObject, Person

    m = Modality(scenario.modality)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    kwargs: dict[str, Any] = {}
    if m.is_box:
        objects = []
        for i, (phrase, box) in enumerate(BOXES):
            image = None
            if m is Modality.TEXT_IMAGE_BOX:
                image = str(workdir / f"object{i}.png")
                save_png(image, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            objects.append(GroundedObject(box=box, phrase=phrase, image=image))
        kwargs["objects"] = tuple(objects)
    elif m is Modality.KEYPOINT:
        persons = []
        for cx in (0.3, 0.7):
            pts = [
                (float(np.clip(cx + rng.normal(0, 0.08), 0, 1)), float(np.clip(0.2 + 0.04 * k, 0, 1)))
                for k in range(17)
            ]
            persons.append(Person(keypoints=tuple(pts)))
        kwargs["persons"] = tuple(persons)
    else:
        path = str(workdir / "condition.png")
        yy, xx = np.mgrid[0 : scenario.size, 0 : scenario.size]
        if m is Modality.SEM:
            cond = ((xx // 32 + yy // 32) % 7).astype(np.uint8)
            save_png(path, np.repeat(cond[..., None], 3, axis=-1))
        else:
            ring = (np.hypot(xx - scenario.size / 2, yy - scenario.size / 2) % 48 < 3) * 255
            save_png(path, np.repeat(ring.astype(np.uint8)[..., None], 3, axis=-1))
        kwargs["condition"] = path
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=scenario.seed,
        steps=scenario.steps,
        guidance=scenario.guidance,
        sampler=scenario.sampler,
        beta=scenario.beta,
        height=scenario.size,
        width=scenario.size,
        **kwargs,
    )


def dump_task(path: Path, scenario: Scenario, config: Config, **extra: Any) -> None:
    """The file a worker process reads (see benchmarks/worker.py)."""
    path.write_text(
        json.dumps({"scenario": scenario.to_dict(), "config": config.to_dict(), **extra}, indent=1)
    )
