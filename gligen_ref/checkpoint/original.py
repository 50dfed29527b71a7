"""The original GLIGEN single-file layout (``diffusion_pytorch_model.bin`` of gligen/gligen-* repos).

File: a torch.save'd dict with ``model`` (LDM UNet incl. fusers, ``position_net.*``,
``downsample_net.*``), ``autoencoder`` (LDM AutoencoderKL), ``text_encoder``
(``transformer.text_model.*``), ``diffusion`` (DDPM schedule buffers) and maybe ``config_dict``
(pickled omegaconf objects: read as inert placeholders, never executed, see safe_pickle.py).

Weights the file does not hold, as the original repository keeps them:
- spatial models: SD-1.4's conv_in for the plain phase, ``SD_input_conv_weight_bias.pth``
  ({"weight": [320,4,3,3], "bias": [320]}) next to the checkpoint or ``sd_conv_in=``;
- text-image models: the CLIP image encoder (a transformers CLIPVisionModelWithProjection or CLIPModel
  folder, ``clip_vision/`` next to the checkpoint or ``clip_vision=``) and the 768x768
  ``projection_matrix`` P (feat = image_embeds @ P, so image_project.weight = P.T).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gligen_ref.checkpoint.diffusers_folder import (
    TRANSFORMERS_WEIGHTS,
    atomic_save_file,
    read_weights,
    transformers_config_json,
)
from gligen_ref.checkpoint.keys import SECTIONS, assemble_model, key_map, original_shapes, pick_preset
from gligen_ref.checkpoint.safe_pickle import load_torch_file
from gligen_ref.model import GLIGENModel
from gligen_rt.core.config import ModelConfig
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.modality import Modality

log = logging.getLogger(__name__)

SD_CONV_IN_FILE = "SD_input_conv_weight_bias.pth"
PROJECTION_MATRIX_FILE = "projection_matrix"
CLIP_VISION_DIR = "clip_vision"

# Keys older transformers saved as persistent buffers; not weights.
_IGNORED = ("text_encoder.transformer.text_model.embeddings.position_ids",)

# SD-1.x DDPM schedule (GLIGEN's DDPM.register_schedule with linear_start/end 0.00085 / 0.012).
_LINEAR_START, _LINEAR_END, _TIMESTEPS = 0.00085, 0.012, 1000


def sd_schedule_buffers() -> dict[str, torch.Tensor]:
    """The ``diffusion`` section of an original file: DDPM buffers of the SD schedule, float32 (1000,)."""
    betas = (
        torch.linspace(_LINEAR_START**0.5, _LINEAR_END**0.5, _TIMESTEPS, dtype=torch.float64) ** 2
    ).numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


# ---- detection --------------------------------------------------------------------------------------


def detect_modality(
    shapes: Mapping[str, tuple[int, ...]], source: Path, modality: Modality | str | None = None
) -> tuple[Modality, bool]:
    """(modality, inpaint) of an original file from its flat ``section.key`` shapes.

    Canny and depth files have identical shapes: ``modality`` (or 'canny' / 'depth' in the file
    name) decides; anything else contradicting the file raises CheckpointError.
    """
    wanted = Modality(modality) if modality is not None else None
    conv = shapes.get("model.input_blocks.0.0.weight")
    if conv is None or len(conv) != 4:
        raise CheckpointError(f"{source}: missing key 'model.input_blocks.0.0.weight': not a GLIGEN UNet")
    in_ch = conv[1]
    inpaint = False
    if "model.position_net.linears_text.0.weight" in shapes:
        found = Modality.TEXT_IMAGE_BOX
    elif "model.position_net.person_embeddings" in shapes:
        found = Modality.KEYPOINT
    elif any(k.startswith("model.position_net.convnext_tiny_backbone.") for k in shapes):
        down = shapes.get("model.downsample_net.layers.0.weight")
        if "model.position_net.in_conv.weight" in shapes:
            found = Modality.SEM
        elif down is None:
            found = Modality.HED
        elif down[1] == 3:
            found = Modality.NORMAL
        elif wanted in (Modality.CANNY, Modality.DEPTH):
            found = wanted
        else:
            hint = _name_hint(source)
            if hint is None:
                raise CheckpointError(
                    f"{source}: canny and depth checkpoints have the same layout; say which with "
                    "--modality canny|depth (modality= in Python)"
                )
            found = hint
    elif "model.position_net.linears.0.weight" in shapes:
        found = Modality.TEXT_BOX
    else:
        raise CheckpointError(f"{source}: no known grounding tokenizer under 'model.position_net.*'")
    if found.is_box:
        inpaint = in_ch == 9
    if wanted is not None and wanted is not found:
        raise CheckpointError(f"{source}: the file is a {found.value} checkpoint, not {wanted.value}")
    return found, inpaint


def _name_hint(path: Path) -> Modality | None:
    """'canny' / 'depth' when exactly one of them is in the file name."""
    name = path.name.lower()
    hits = [m for m in (Modality.CANNY, Modality.DEPTH) if m.value in name]
    return hits[0] if len(hits) == 1 else None


# ---- loading ----------------------------------------------------------------------------------------


def _flatten(data: Any, source: Path) -> dict[str, torch.Tensor]:
    if not isinstance(data, Mapping) or "model" not in data:
        raise CheckpointError(f"{source}: not an original GLIGEN checkpoint (no 'model' section)")
    flat: dict[str, torch.Tensor] = {}
    for section in SECTIONS:
        part = data.get(section)
        if not isinstance(part, Mapping):
            raise CheckpointError(
                f"{source}: missing section '{section}' (not an original GLIGEN checkpoint)"
            )
        for key, value in part.items():
            name = f"{section}.{key}"
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{source}: '{name}' is a {type(value).__name__}, not a tensor")
            if name not in _IGNORED:
                flat[name] = value
    return flat


def _check_diffusion(diffusion: Any, source: Path) -> None:
    if not isinstance(diffusion, Mapping) or not isinstance(diffusion.get("betas"), torch.Tensor):
        log.debug("%s: no diffusion buffers; assuming the SD-1.x schedule", source)
        return
    betas = diffusion["betas"].double()
    ref = sd_schedule_buffers()["betas"].double()
    if betas.shape != ref.shape or not torch.allclose(betas, ref, rtol=1e-4, atol=1e-9):
        log.warning("%s: its diffusion betas differ from the SD-1.x schedule the runtime uses", source)


def load_original(
    path: str | os.PathLike[str],
    *,
    modality: Modality | str | None = None,
    sd_conv_in: str | os.PathLike[str] | None = None,
    clip_vision: str | os.PathLike[str] | None = None,
    projection_matrix: str | os.PathLike[str] | None = None,
) -> tuple[GLIGENModel, ModelConfig]:
    """An original GLIGEN file -> (GLIGENModel float32 eval, its ModelConfig).

    Args:
        path: the .bin / .pth file.
        modality: required only to tell canny from depth when the file name does not.
        sd_conv_in: spatial models: SD_input_conv_weight_bias.pth, an SD checkpoint (.ckpt /
            .safetensors) or a diffusers SD folder; default: SD_input_conv_weight_bias.pth beside ``path``.
        clip_vision: text-image models: a transformers CLIP(VisionModelWithProjection) folder;
            default: ``clip_vision/`` beside ``path``.
        projection_matrix: text-image models: the original repository's ``projection_matrix`` file;
            default: ``projection_matrix`` beside ``path``.

    Raises CheckpointError (one line naming the file and key) for unreadable files, unknown or
    inconsistent layouts, missing / unexpected / mis-shaped keys and missing sidecar weights.
    """
    source = Path(path)
    data = load_torch_file(source)
    flat = _flatten(data, source)
    shapes = {k: tuple(v.shape) for k, v in flat.items()}
    found, inpaint = detect_modality(shapes, source, modality)
    config = pick_preset(
        shapes, found, inpaint, original_shapes, str(source), "model.input_blocks.0.0.weight"
    )
    km = key_map(config)
    state = {km.from_original(k): km.from_original_tensor(k, v) for k, v in flat.items()}
    if found.is_spatial:
        state.update(_sd_conv_in_state(config, source, sd_conv_in))
    if found is Modality.TEXT_IMAGE_BOX:
        state.update(_image_state(config, source, clip_vision, projection_matrix))
    _check_diffusion(data.get("diffusion"), source)
    return assemble_model(config, state), config


def _expect(name: str, t: torch.Tensor, shape: tuple[int, ...], source: Path) -> torch.Tensor:
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{source}: key '{name}' has shape {list(t.shape)}, expected {list(shape)}")
    return t


_CONV_IN_NAMES = (
    ("weight", "bias"),
    ("conv_in.weight", "conv_in.bias"),
    ("input_blocks.0.0.weight", "input_blocks.0.0.bias"),
    ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.0.0.bias"),
)


def _sd_conv_in_state(
    config: ModelConfig, checkpoint: Path, given: str | os.PathLike[str] | None
) -> dict[str, torch.Tensor]:
    source = Path(given) if given is not None else checkpoint.parent / SD_CONV_IN_FILE
    if not source.exists():
        raise CheckpointError(
            f"{checkpoint}: spatial models need SD-1.4's conv_in for the plain phase; put {SD_CONV_IN_FILE} "
            f"(from the GLIGEN repository) beside the checkpoint or pass --sd-conv-in FILE (sd_conv_in= in "
            "Python; an SD-1.4 checkpoint works too)"
        )
    tensors = _read_conv_in(source)
    for w_name, b_name in _CONV_IN_NAMES:
        if w_name in tensors and b_name in tensors:
            c0, lat = config.unet.block_out_channels[0], config.unet.latent_channels
            return {
                "sd_conv_in.weight": _expect(w_name, tensors[w_name], (c0, lat, 3, 3), source),
                "sd_conv_in.bias": _expect(b_name, tensors[b_name], (c0,), source),
            }
    raise CheckpointError(f"{source}: no conv_in weight/bias in it (expected keys 'weight' and 'bias')")


def _read_conv_in(source: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of an SD conv_in source (only the candidate keys are read from safetensors)."""
    if source.is_dir():
        for sub in (source / SD_CONV_IN_FILE, source / "unet"):
            if sub.exists():
                return _read_conv_in(sub) if sub.is_file() else read_weights(sub)
        raise CheckpointError(f"{source}: neither {SD_CONV_IN_FILE} nor unet/ in this folder")
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        wanted = {n for pair in _CONV_IN_NAMES for n in pair}
        try:
            with safe_open(str(source), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k in wanted}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{source}: cannot read it as safetensors ({exc})") from None
    data = load_torch_file(source)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) and "weight" not in data:
        data = data["model"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _image_state(
    config: ModelConfig,
    checkpoint: Path,
    clip_vision: str | os.PathLike[str] | None,
    projection_matrix: str | os.PathLike[str] | None,
) -> dict[str, torch.Tensor]:
    vision = Path(clip_vision) if clip_vision is not None else checkpoint.parent / CLIP_VISION_DIR
    proj = (
        Path(projection_matrix)
        if projection_matrix is not None
        else checkpoint.parent / PROJECTION_MATRIX_FILE
    )
    if not vision.is_dir():
        raise CheckpointError(
            f"{checkpoint}: text-image checkpoints do not contain the CLIP image encoder; pass --clip-vision "
            f"FOLDER (clip_vision= in Python; openai/clip-vit-large-patch14) or put it in {CLIP_VISION_DIR}/ "
            "beside the checkpoint"
        )
    if not proj.is_file():
        raise CheckpointError(
            f"{checkpoint}: text-image checkpoints need the GLIGEN repository's '{PROJECTION_MATRIX_FILE}' file; "
            "pass --projection-matrix FILE (projection_matrix= in Python) or put it beside the checkpoint"
        )
    weights = read_weights(vision, TRANSFORMERS_WEIGHTS)
    state = {
        f"image_encoder.{k}": v
        for k, v in weights.items()
        if (k.startswith("vision_model.") or k == "visual_projection.weight")
        and not k.endswith("embeddings.position_ids")
    }
    p = load_torch_file(proj)
    if isinstance(p, Mapping) and len(p) == 1:
        p = next(iter(p.values()))
    if not isinstance(p, torch.Tensor) or p.dim() != 2:
        raise CheckpointError(f"{proj}: expected one 2-D tensor (the projection matrix)")
    state["image_project.weight"] = p.t().contiguous()
    return state


# ---- saving ------------------------------------------------------------------------------------------


def _tmp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def original_sections(model: GLIGENModel) -> dict[str, dict[str, torch.Tensor]]:
    """The ``model`` / ``autoencoder`` / ``text_encoder`` / ``diffusion`` dicts of an original file."""
    config = model.config
    km = key_map(config)
    sections: dict[str, dict[str, torch.Tensor]] = {s: {} for s in SECTIONS}
    for key, t in model.state_dict().items():
        if km.is_sidecar(key):
            continue
        section, name = km.to_original(key).split(".", 1)
        sections[section][name] = km.to_original_tensor(key, t.detach())
    # older transformers (the original's) stored CLIP's position ids as a persistent buffer
    sections["text_encoder"]["transformer.text_model.embeddings.position_ids"] = torch.arange(
        config.text.max_position_embeddings
    ).unsqueeze(0)
    return {**sections, "diffusion": sd_schedule_buffers()}


def save_original(
    model: GLIGENModel,
    path: str | os.PathLike[str],
    *,
    sd_conv_in: bool = True,
    image_encoder: bool = False,
) -> Path:
    """Write ``model`` in the original single-file layout (no config_dict), atomically.

    Beside it, for spatial models (``sd_conv_in``): SD_input_conv_weight_bias.pth with the model's
    SD conv_in; for text-image models when ``image_encoder``: ``clip_vision/`` (transformers
    CLIPVisionModelWithProjection folder) and ``projection_matrix`` (= image_project.weight.T).
    Returns the checkpoint path.
    """
    path = Path(path)
    atomic_torch_save(original_sections(model), path)
    if sd_conv_in and model.sd_conv_in is not None:
        conv = {"weight": model.sd_conv_in.weight.detach(), "bias": model.sd_conv_in.bias.detach()}
        atomic_torch_save(conv, path.parent / SD_CONV_IN_FILE)
    if image_encoder and model.image_encoder is not None and model.image_project is not None:
        atomic_torch_save(
            model.image_project.weight.detach().t().contiguous(), path.parent / PROJECTION_MATRIX_FILE
        )
        folder = path.parent / CLIP_VISION_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in model.image_encoder.state_dict().items()}
        atomic_save_file(tensors, folder / "model.safetensors")
        text = json.dumps(transformers_config_json(model.image_encoder), indent=2, sort_keys=True)
        _atomic_text(folder / "config.json", text)
    return path


def _atomic_text(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
