"""Model configurations (torch-free: the reference, export, engines and runtime all read them): frozen dataclasses for the real SD-1.4 GLIGEN size and a tiny one.

`sd14(modality)` is the architecture of every released checkpoint. `tiny_random(modality)` keeps the same
structure (4 UNet levels, 2 res blocks per level, attention on the first three levels, a mid-block
fuser, the same grounding token counts, a 4-level VAE with factor 8, CLIP text/vision transformers)
with small widths, so every modality runs on a CPU in seconds. `tiny` built from a fixed seed is
the embedded default model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gligen_rt.core.modality import (
    CONDITION_CHANNELS,
    DOWNSAMPLER_OUT_CHANNELS,
    MAX_OBJECTS,
    MAX_PERSONS,
    NUM_KEYPOINTS,
    Modality,
)

# export --token-downsample: 1 (off) or the first level's key/value pooling (the latent's side is a
# multiple of 8 at every accepted size); gligen_ref/token_downsample.py
TOKEN_DOWNSAMPLE_FACTORS = (1, 2, 4)


def check_token_downsample(factor: int) -> int:
    """``factor`` if it is one of TOKEN_DOWNSAMPLE_FACTORS, else ValueError with the choices."""
    if factor not in TOKEN_DOWNSAMPLE_FACTORS:
        raise ValueError(
            f"token downsampling factor {factor} is not one of {TOKEN_DOWNSAMPLE_FACTORS} (1 = off)"
        )
    return factor


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # Which down levels carry a SpatialTransformer (SD-1.x: the first three).
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    heads: int = 8  # attention heads everywhere (SD and fusers); head_dim = C / heads
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    latent_channels: int = 4


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP ViT-L/14 text transformer (transformers CLIPTextConfig fields)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407


@dataclass(frozen=True)
class ImageEncoderConfig:
    """CLIP ViT-L/14 vision transformer with projection (text-image models only)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # Image grounding features are renormalised to this L2 norm (typical pooled text norm).
    normalize_constant: float = 28.7


@dataclass(frozen=True)
class GroundingConfig:
    """The grounding tokenizer ("position net") and the spatial downsampler."""

    fourier_freqs: int = 8
    fourier_temperature: float = 100.0
    mlp_hidden: int = 512
    # Spatial modalities: ConvNeXt-T backbone on the condition resized to `resize_input`.
    convnext_dims: tuple[int, ...] = (96, 192, 384, 768)
    convnext_depths: tuple[int, ...] = (3, 3, 9, 3)
    resize_input: int = 256

    @property
    def spatial_tokens(self) -> int:
        return (self.resize_input // 32) ** 2


@dataclass(frozen=True)
class ModelConfig:
    name: str
    modality: Modality
    inpaint: bool = False
    unet: UNetConfig = UNetConfig()
    vae: VAEConfig = VAEConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    image: ImageEncoderConfig | None = None  # only for text-image-box
    grounding: GroundingConfig = GroundingConfig()
    default_size: int = 512  # pixel height = width the model was trained at

    def __post_init__(self) -> None:
        if self.inpaint and not self.modality.is_box:
            raise ValueError(f"inpainting exists only for box modalities, not {self.modality.value}")
        if (self.modality is Modality.TEXT_IMAGE_BOX) != (self.image is not None):
            raise ValueError("an image encoder config is required for text-image-box and only for it")

    @property
    def context_dim(self) -> int:
        """Width of CLIP text tokens and of grounding tokens (768 for SD-1.4)."""
        return self.unet.cross_attention_dim

    @property
    def num_tokens(self) -> int:
        """Grounding tokens per image fed to every fuser."""
        m = self.modality
        if m is Modality.TEXT_BOX:
            return MAX_OBJECTS
        if m is Modality.TEXT_IMAGE_BOX:
            return 2 * MAX_OBJECTS
        if m is Modality.KEYPOINT:
            return MAX_PERSONS * NUM_KEYPOINTS
        return self.grounding.spatial_tokens

    @property
    def extra_channels(self) -> int:
        """Channels concatenated to the noisy latent before the GLIGEN conv_in."""
        if self.inpaint:
            return self.unet.latent_channels + 1  # masked clean latent + mask
        if self.modality.is_spatial:
            return DOWNSAMPLER_OUT_CHANNELS[self.modality]
        return 0

    @property
    def conv_in_channels(self) -> int:
        return self.unet.latent_channels + self.extra_channels

    @property
    def condition_channels(self) -> int:
        return CONDITION_CHANNELS[self.modality] if self.modality.is_spatial else 0

    @property
    def key(self) -> str:
        """Short identifier, e.g. 'tiny-random-text-box' or 'sd14-inpaint-text-image-box'."""
        return f"{self.name}-{'inpaint-' if self.inpaint else ''}{self.modality.value}"


def sd14(modality: Modality | str = Modality.TEXT_BOX, inpaint: bool = False) -> ModelConfig:
    """The released GLIGEN architecture on Stable Diffusion 1.4."""
    modality = Modality(modality)
    image = ImageEncoderConfig() if modality is Modality.TEXT_IMAGE_BOX else None
    return ModelConfig(name="sd14", modality=modality, inpaint=inpaint, image=image)


def tiny_random(modality: Modality | str = Modality.TEXT_BOX, inpaint: bool = False) -> ModelConfig:
    """Same structure as sd14 with small widths: for tests and the embedded default model."""
    modality = Modality(modality)
    image = (
        ImageEncoderConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
        if modality is Modality.TEXT_IMAGE_BOX
        else None
    )
    return ModelConfig(
        name="tiny-random",
        modality=modality,
        inpaint=inpaint,
        unet=UNetConfig(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32),
        vae=VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
        text=TextEncoderConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        image=image,
        grounding=GroundingConfig(
            mlp_hidden=64, convnext_dims=(8, 16, 32, 64), convnext_depths=(1, 1, 2, 1), resize_input=64
        ),
        default_size=128,
    )


def tiny(modality: Modality | str = Modality.TEXT_BOX, inpaint: bool = False) -> ModelConfig:
    """The architecture `gligen-rt train` trains at tiny size (`--model tiny`, shipped trained: gligen_rt/models/tiny).

    SD-1.4's structure at 128 px: a 4-level KL VAE with factor 8 (16x16 latents), a 4-level UNet with
    cross-attention on the first three levels, a CLIP-style text encoder on CLIP's BPE vocabulary.
    """
    modality = Modality(modality)
    base = tiny_random(modality, inpaint)
    return dataclasses.replace(
        base,
        name="tiny",
        unet=UNetConfig(
            block_out_channels=(32, 48, 64, 64),
            layers_per_block=1,
            heads=2,
            cross_attention_dim=64,
            norm_num_groups=16,
        ),
        vae=VAEConfig(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
        text=TextEncoderConfig(
            hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4
        ),
        grounding=dataclasses.replace(base.grounding, mlp_hidden=128),
    )


PRESETS = {"sd14": sd14, "tiny-random": tiny_random, "tiny": tiny}


def preset(name: str, modality: Modality | str = Modality.TEXT_BOX, inpaint: bool = False) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name](modality, inpaint)


def to_dict(config: ModelConfig) -> dict:
    """JSON-ready form (manifests and saved folders)."""
    d = dataclasses.asdict(config)
    d["modality"] = config.modality.value
    return d


def from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    return ModelConfig(
        name=d["name"],
        modality=Modality(d["modality"]),
        inpaint=d["inpaint"],
        unet=UNetConfig(**_tuples(d["unet"])),
        vae=VAEConfig(**_tuples(d["vae"])),
        text=TextEncoderConfig(**d["text"]),
        image=ImageEncoderConfig(**d["image"]) if d.get("image") else None,
        grounding=GroundingConfig(**_tuples(d["grounding"])),
        default_size=d["default_size"],
    )


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
