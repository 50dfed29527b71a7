"""The contract of every engine: ordered, named, typed inputs and outputs with symbolic dims.

One frozen `EngineSpec` per engine (ARCHITECTURE.md, "The model"). ONNX dynamic axes, TensorRT
optimization profiles, runtime buffer shapes and the cache key of every built artifact are all
derived from it, never written by hand elsewhere.

Dims are ints (fixed per model: 77 text tokens, the context width D, 30 box slots, ...) or one of
the symbols below. Only `batch`, `height` and `width` have ranges (an `Envelope`); the latent dims
are derived from the pixel dims by the VAE factor (8):

    batch          the engine's own batch axis (the UNet's is the CFG batch [uncond; cond] = 2B)
    height, width  image size in pixels, multiples of 64 (4 UNet levels on a latent of H/8)
    height_latent  height / 8
    width_latent   width / 8

Torch-free (numpy is not even needed): the exporter, the builders and the runtime share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gligen_rt.core.errors import EngineError
from gligen_rt.core.modality import MAX_OBJECTS, MAX_PERSONS, NUM_KEYPOINTS, Modality

BATCH = "batch"
HEIGHT = "height"
WIDTH = "width"
HEIGHT_LATENT = "height_latent"
WIDTH_LATENT = "width_latent"
SYMBOLS = (BATCH, HEIGHT, WIDTH, HEIGHT_LATENT, WIDTH_LATENT)
DTYPES = ("float32", "int32")
TEXT_TOKENS = 77  # CLIP context length

# Engine names, in build order.
TEXT_ENCODER = "text_encoder"
IMAGE_ENCODER = "image_encoder"
GROUNDING = "grounding"
UNET = "unet"
UNET_PLAIN = "unet_plain"
UNET_SHALLOW = "unet_shallow"  # the feature cache's reuse steps (exported with --feature-cache)
UNET_SHALLOW_GROUNDED = "unet_shallow_grounded"  # the same on grounded steps, fusers included
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
ENGINE_NAMES = (
    TEXT_ENCODER,
    IMAGE_ENCODER,
    GROUNDING,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    UNET_SHALLOW_GROUNDED,
    VAE_DECODER,
    VAE_ENCODER,
)

Range = tuple[int, int, int]  # (min, opt, max)
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: `dims` are ints or names from `SYMBOLS`."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype {self.dtype!r} is not one of {DTYPES}")
        for d in self.dims:
            if isinstance(d, str) and d not in SYMBOLS:
                raise ValueError(f"{self.name}: unknown dim symbol {d!r} (known: {', '.join(SYMBOLS)})")
            if isinstance(d, int) and d < 1:
                raise ValueError(f"{self.name}: fixed dims must be positive, got {d}")


def _check_range(name: str, r: Range, multiple: int = 1) -> Range:
    r = tuple(int(v) for v in r)
    if len(r) != 3 or not 1 <= r[0] <= r[1] <= r[2]:
        raise ValueError(f"{name} range {r} must be (min, opt, max) with 1 <= min <= opt <= max")
    if any(v % multiple for v in r):
        raise ValueError(f"{name} range {r} must hold multiples of {multiple}")
    return r  # type: ignore[return-value]


@dataclass(frozen=True)
class Envelope:
    """Shape ranges of one engine: `None` for a symbol the engine does not use.

    `height` and `width` are in pixels, multiples of `multiple` (64: the latent, H/8, passes
    three stride-2 UNet levels); `height_latent` = height / latent_factor.
    """

    batch: Range | None = None
    height: Range | None = None
    width: Range | None = None
    latent_factor: int = 8
    multiple: int = 64

    def __post_init__(self) -> None:
        if self.multiple % self.latent_factor:
            raise ValueError(f"multiple {self.multiple} must be a multiple of {self.latent_factor}")
        for sym in (BATCH, HEIGHT, WIDTH):
            r = getattr(self, sym)
            if r is not None:
                object.__setattr__(self, sym, _check_range(sym, r, self.multiple if sym != BATCH else 1))

    def range_of(self, symbol: str) -> Range:
        """(min, opt, max) of any symbol, latent ones derived from the pixel ranges."""
        root = {HEIGHT_LATENT: HEIGHT, WIDTH_LATENT: WIDTH}.get(symbol, symbol)
        r = getattr(self, root, None) if root in (BATCH, HEIGHT, WIDTH) else None
        if r is None:
            raise ValueError(f"symbol {symbol!r} has no range in this envelope")
        if root != symbol:
            return tuple(v // self.latent_factor for v in r)  # type: ignore[return-value]
        return r

    @property
    def is_static(self) -> bool:
        return all(r is None or r[0] == r[2] for r in (self.batch, self.height, self.width))


@dataclass(frozen=True)
class ShapeEnvelope:
    """What a request may ask for: images per request, pixel height and width, each (min, opt, max).

    Engine batch ranges are derived from it per engine (CFG doubles the UNet's, phrases and
    grounding images widen the encoders'), see `specs_for`.
    """

    batch: Range = (1, 1, 4)
    height: Range = (256, 512, 768)
    width: Range = (256, 512, 768)
    multiple: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", _check_range("batch", self.batch))
        object.__setattr__(self, "height", _check_range("height", self.height, self.multiple))
        object.__setattr__(self, "width", _check_range("width", self.width, self.multiple))

    @classmethod
    def for_config(
        cls,
        config: Any,
        *,
        batch: Range | None = None,
        height: Range | None = None,
        width: Range | None = None,
    ) -> ShapeEnvelope:
        """Defaults around `config.default_size` S: (S/2, S, 3S/2) rounded to 64, batch (1, 1, 4)."""
        s = int(config.default_size)
        m = 64
        default = (max(m, s // 2 // m * m), s, max(s, (3 * s // 2) // m * m))
        return cls(batch=batch or (1, 1, 4), height=height or default, width=width or default)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "height": list(self.height), "width": list(self.width)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeEnvelope:
        return cls(batch=tuple(d["batch"]), height=tuple(d["height"]), width=tuple(d["width"]))


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its ordered inputs and outputs and the shape envelope it is built for."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    envelope: Envelope

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate tensor names in {names}")
        for t in self.inputs + self.outputs:
            for d in t.dims:
                if isinstance(d, str):
                    self.envelope.range_of(d)  # raises when the symbol has no range

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


# ---------------------------------------------------------------------------------------------
# The engines of a model


def _t(name: str, *dims: Dim, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims))


def _grounding_inputs(config: Any) -> tuple[TensorSpec, ...]:
    d = config.context_dim
    m = config.modality
    b = BATCH
    if m is Modality.TEXT_BOX:
        return (
            _t("boxes", b, MAX_OBJECTS, 4),
            _t("masks", b, MAX_OBJECTS),
            _t("phrase_embeddings", b, MAX_OBJECTS, d),
        )
    if m is Modality.TEXT_IMAGE_BOX:
        return (
            _t("boxes", b, MAX_OBJECTS, 4),
            _t("masks", b, MAX_OBJECTS),
            _t("text_masks", b, MAX_OBJECTS),
            _t("image_masks", b, MAX_OBJECTS),
            _t("phrase_embeddings", b, MAX_OBJECTS, d),
            _t("image_embeddings", b, MAX_OBJECTS, d),
        )
    if m is Modality.KEYPOINT:
        k = MAX_PERSONS * NUM_KEYPOINTS
        return (_t("points", b, k, 2), _t("masks", b, k))
    return (_t("condition", b, config.condition_channels, HEIGHT, WIDTH), _t("masks", b, 1))


def specs_for(
    config: Any,
    envelope: ShapeEnvelope | None = None,
    *,
    include_plain: bool = True,
    feature_cache: bool = False,
) -> dict[str, EngineSpec]:
    """The engines of `config` (a gligen_ref ModelConfig), in build order, keyed by name.

    Batch ranges per engine, from the request envelope (images b_min..b_max, opt b_opt):
    text_encoder 1..30*b_max, opt 2*b_opt (prompts [negative; positive], and up to 30 box phrases
    per image),
    image_encoder 1..30*b_max (one per grounding image), grounding and the UNets b_min..2*b_max
    with opt 2*b_opt (the CFG batch; b_min when guidance is off), the VAE b_min..b_max.

    feature_cache: the folder was exported for the feature cache (DeepCache-style, on plain steps):
    `unet` and `unet_plain` also output `deep`, the input of the UNet's last up block
    (B, block_out_channels[1], h, w), and `unet_shallow` takes it back: conv_in, the first down
    level and the last up level only (gligen_ref/model.py `unet_shallow`); `unet_shallow_grounded`
    is the same cut of the grounded UNet (its fusers included), for the grounded steps.
    """
    env = envelope or ShapeEnvelope.for_config(config)
    f = config.vae.downscale
    d = config.context_dim
    c = config.unet.latent_channels
    b0, bo, b1 = env.batch
    hw = {"height": env.height, "width": env.width, "latent_factor": f, "multiple": env.multiple}
    cfg_batch = (b0, 2 * bo, 2 * b1)
    b, h, w, hl, wl = BATCH, HEIGHT, WIDTH, HEIGHT_LATENT, WIDTH_LATENT

    specs: dict[str, EngineSpec] = {}
    text_max = MAX_OBJECTS * b1
    specs[TEXT_ENCODER] = EngineSpec(
        TEXT_ENCODER,
        (_t("input_ids", b, TEXT_TOKENS, dtype="int32"),),
        (_t("last_hidden_state", b, TEXT_TOKENS, d), _t("pooled", b, d)),
        Envelope(batch=(1, min(2 * bo, text_max), text_max), latent_factor=f),
    )
    if config.modality is Modality.TEXT_IMAGE_BOX:
        s = config.image.image_size
        specs[IMAGE_ENCODER] = EngineSpec(
            IMAGE_ENCODER,
            (_t("pixel_values", b, 3, s, s),),
            (_t("image_features", b, d),),
            Envelope(batch=(1, bo, MAX_OBJECTS * b1), latent_factor=f),
        )
    spatial = config.modality.is_spatial
    k = config.extra_channels
    g_out = [_t("tokens", b, config.num_tokens, d)]
    if spatial:
        g_out.append(_t("extra", b, k, hl, wl))
    specs[GROUNDING] = EngineSpec(
        GROUNDING,
        _grounding_inputs(config),
        tuple(g_out),
        Envelope(batch=cfg_batch, **hw) if spatial else Envelope(batch=cfg_batch, latent_factor=f),
    )
    sample = _t("sample", b, c, hl, wl)
    timestep = _t("timestep", 1)
    context = _t("context", b, TEXT_TOKENS, d)
    eps = (_t("eps", b, c, hl, wl),)
    deep = _t("deep", b, config.unet.block_out_channels[1], hl, wl)
    unet_out = eps + ((deep,) if feature_cache else ())
    extra = (_t("extra", b, k, hl, wl),) if k else ()
    grounding = (_t("tokens", b, config.num_tokens, d), _t("gate", 1))
    specs[UNET] = EngineSpec(
        UNET, (sample, timestep, context) + grounding + extra, unet_out, Envelope(batch=cfg_batch, **hw)
    )
    plain_extra = extra if config.inpaint else ()
    if include_plain:
        specs[UNET_PLAIN] = EngineSpec(
            UNET_PLAIN, (sample, timestep, context) + plain_extra, unet_out, Envelope(batch=cfg_batch, **hw)
        )
    if feature_cache:
        specs[UNET_SHALLOW] = EngineSpec(
            UNET_SHALLOW,
            (sample, timestep, context, deep) + plain_extra,
            eps,
            Envelope(batch=cfg_batch, **hw),
        )
        specs[UNET_SHALLOW_GROUNDED] = EngineSpec(
            UNET_SHALLOW_GROUNDED,
            (sample, timestep, context) + grounding + (deep,) + extra,
            eps,
            Envelope(batch=cfg_batch, **hw),
        )
    specs[VAE_DECODER] = EngineSpec(
        VAE_DECODER,
        (_t("latents", b, c, hl, wl),),
        (_t("images", b, 3, h, w),),
        Envelope(batch=env.batch, **hw),
    )
    if config.inpaint:
        specs[VAE_ENCODER] = EngineSpec(
            VAE_ENCODER,
            (_t("images", b, 3, h, w),),
            (_t("mean", b, c, hl, wl), _t("std", b, c, hl, wl)),
            Envelope(batch=env.batch, **hw),
        )
    return specs


# ---------------------------------------------------------------------------------------------
# Derived forms


def _resolve(dims: tuple[Dim, ...], values: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else values[d] for d in dims)


def _values_at(env: Envelope, corner: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for sym in SYMBOLS:
        try:
            out[sym] = env.range_of(sym)[corner]
        except ValueError:
            pass
    return out


def onnx_dynamic_axes(spec: EngineSpec) -> dict[str, dict[int, str]]:
    """`dynamic_axes` for torch.onnx.export: {tensor: {axis: symbol}} for inputs and outputs.

    Symbols that are fixed in the envelope (static specs) are left out, so the graph is static.
    """
    axes: dict[str, dict[int, str]] = {}
    for t in spec.inputs + spec.outputs:
        a = {
            i: d
            for i, d in enumerate(t.dims)
            if isinstance(d, str) and spec.envelope.range_of(d)[0] != spec.envelope.range_of(d)[2]
        }
        if a:
            axes[t.name] = a
    return axes


def trt_profile(spec: EngineSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """TensorRT optimization profile: {input: (min_shape, opt_shape, max_shape)}."""
    corners = [_values_at(spec.envelope, i) for i in range(3)]
    return {
        t.name: tuple(_resolve(t.dims, v) for v in corners)  # type: ignore[misc]
        for t in spec.inputs
    }


def concrete_shapes(spec: EngineSpec, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every input and output at one point; EngineError (one line) outside the envelope.

    `batch` is the engine's own batch (the CFG batch for the UNets); `height`, `width` in pixels.
    Symbols an engine does not use are ignored.
    """
    env = spec.envelope
    given = {BATCH: batch, HEIGHT: height, WIDTH: width}
    values: dict[str, int] = {}
    for sym, v in given.items():
        r = getattr(env, sym)
        if r is None:
            continue
        if not r[0] <= v <= r[2] or (sym != BATCH and v % env.multiple):
            step = "" if sym == BATCH else f" in steps of {env.multiple}"
            raise EngineError(
                f"{spec.name}: {sym} {v} is outside the engine's envelope {r[0]}..{r[2]}{step}: "
                f"rebuild the engines with a wider envelope or request a size inside it"
            )
        values[sym] = v
    if HEIGHT in values:
        values[HEIGHT_LATENT] = values[HEIGHT] // env.latent_factor
    if WIDTH in values:
        values[WIDTH_LATENT] = values[WIDTH] // env.latent_factor
    return {t.name: _resolve(t.dims, values) for t in spec.inputs + spec.outputs}


def is_static(spec: EngineSpec) -> bool:
    """True when min = opt = max for every range (CUDA-graph engines)."""
    return spec.envelope.is_static


def static(spec: EngineSpec, batch: int, height: int, width: int) -> EngineSpec:
    """The same engine fixed at one shape (min = opt = max); checks the point is inside."""
    concrete_shapes(spec, batch, height, width)
    env = spec.envelope

    def fix(r: Range | None, v: int) -> Range | None:
        return None if r is None else (v, v, v)

    return dataclasses.replace(
        spec,
        envelope=dataclasses.replace(
            env, batch=fix(env.batch, batch), height=fix(env.height, height), width=fix(env.width, width)
        ),
    )


# ---------------------------------------------------------------------------------------------
# Canonical JSON and fingerprint


def spec_to_dict(spec: EngineSpec) -> dict[str, Any]:
    """JSON-ready form (manifests); `spec_from_dict` inverts it."""

    def tensors(ts: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in ts]

    env = spec.envelope
    return {
        "name": spec.name,
        "inputs": tensors(spec.inputs),
        "outputs": tensors(spec.outputs),
        "envelope": {
            "batch": list(env.batch) if env.batch else None,
            "height": list(env.height) if env.height else None,
            "width": list(env.width) if env.width else None,
            "latent_factor": env.latent_factor,
            "multiple": env.multiple,
        },
    }


def spec_from_dict(d: Mapping[str, Any]) -> EngineSpec:
    def tensors(ts: list[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in ts)

    e = d["envelope"]

    def rng(v: list[int] | None) -> Range | None:
        return tuple(v) if v is not None else None  # type: ignore[return-value]

    return EngineSpec(
        d["name"],
        tensors(d["inputs"]),
        tensors(d["outputs"]),
        Envelope(
            rng(e["batch"]), rng(e["height"]), rng(e["width"]), int(e["latent_factor"]), int(e["multiple"])
        ),
    )


def canonical_json(spec: EngineSpec) -> str:
    return json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"))


def fingerprint(spec: EngineSpec) -> str:
    """sha256 hex of the canonical JSON: names, dtypes, dims, envelope. Keys every built artifact."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()
