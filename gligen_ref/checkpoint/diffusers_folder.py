"""The diffusers pipeline-folder layout (masterful/gligen-1-4-*, anhnct/Gligen_*; box modalities only).

    model_index.json
    unet/config.json + diffusion_pytorch_model[.fp16].{safetensors,bin}   attention_type "gated" |
                                                                            "gated-text-image", in_channels 4 | 9
    vae/config.json + diffusion_pytorch_model[.fp16].{safetensors,bin}
    text_encoder/config.json + model[.fp16].safetensors | pytorch_model[.fp16].bin
    tokenizer/ (vocab.json + merges.txt), scheduler/scheduler_config.json
    text-image only: image_encoder/ (CLIPVisionModelWithProjection), image_project/ (CLIPImageProjection,
    key ``project.weight``), processor/ (CLIPProcessor)

Our ``unet.*`` names equal diffusers', except ``conv_in.*`` and ``position_net.*`` (top level in
GLIGENModel, same suffixes). ``.bin`` files are read with ``weights_only=True``; fp16 files are cast
to float32.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gligen_ref.checkpoint.keys import assemble_model, model_shapes, pick_preset
from gligen_ref.checkpoint.safe_pickle import load_torch_file
from gligen_rt.core.config import ModelConfig
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.modality import Modality

if TYPE_CHECKING:
    from gligen_ref.model import GLIGENModel
    from gligen_rt.core.tokenizer import ClipTokenizer

DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
)

PIPELINE_CLASS = {
    Modality.TEXT_BOX: "StableDiffusionGLIGENPipeline",
    Modality.TEXT_IMAGE_BOX: "StableDiffusionGLIGENTextImagePipeline",
}
ATTENTION_TYPE = {Modality.TEXT_BOX: "gated", Modality.TEXT_IMAGE_BOX: "gated-text-image"}

# The scheduler the diffusers conversion script writes (original PLMS/DDIM timesteps).
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- reading ------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_one(path: Path, *, untrusted_globals: bool = False) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure is one CheckpointError line
            raise CheckpointError(
                f"{path}: cannot read it as safetensors ({' '.join(str(exc).split())})"
            ) from None
    else:
        data = load_torch_file(path, untrusted_globals=untrusted_globals)
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors)")
    return dict(data)


def read_weights(folder: Path, names: Iterable[str] = DIFFUSERS_WEIGHTS) -> dict[str, torch.Tensor]:
    """The first of ``names`` present in ``folder`` (or its ``.index.json`` shards) as a state dict."""
    names = tuple(names)
    for name in names:
        single, index = folder / name, folder / f"{name}.index.json"
        if single.is_file():
            return _read_one(single)
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_read_one(folder / shard))
            return state
    raise CheckpointError(f"{folder}: no weights file (expected one of {', '.join(names)})")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _clip_state(
    state: Mapping[str, torch.Tensor], ours: str, drop_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """transformers CLIP weights under ``ours.``: drops a legacy prefix and position_ids buffers."""
    return {
        f"{ours}.{k}": v
        for k, v in _strip(state, drop_prefix).items()
        if not k.endswith("embeddings.position_ids")
    }


def _gligen_unet_modality(
    config: dict[str, Any], state: Mapping[str, torch.Tensor], source: Path
) -> Modality:
    attention = config.get("attention_type")
    legacy = bool(config.get("use_gated_attention") or config.get("enable_gligen"))
    if attention not in ATTENTION_TYPE.values() and not legacy:
        raise CheckpointError(
            f"{source}: unet/config.json has attention_type={attention!r}: not a GLIGEN UNet "
            "(expected 'gated' or 'gated-text-image')"
        )
    text_image = any(k.startswith("position_net.linears_text.") for k in state)
    found = Modality.TEXT_IMAGE_BOX if text_image else Modality.TEXT_BOX
    if attention in ATTENTION_TYPE.values() and attention != ATTENTION_TYPE[found]:
        raise CheckpointError(
            f"{source}: unet/config.json says attention_type={attention!r} but the weights are {found.value}"
        )
    return found


def load_diffusers(folder: str | os.PathLike[str]) -> tuple[GLIGENModel, ModelConfig]:
    """A diffusers GLIGEN pipeline folder -> (GLIGENModel float32 eval, its ModelConfig).

    Raises CheckpointError (one line naming the file and key) for a missing component, a non-GLIGEN
    UNet, missing / unexpected / mis-shaped keys, or a config the presets do not describe.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder")
    unet_config = read_json(root / "unet" / "config.json")
    unet = read_weights(root / "unet")
    modality = _gligen_unet_modality(unet_config, unet, root)
    in_channels = unet_config.get("in_channels", 4)
    if in_channels not in (4, 9):
        raise CheckpointError(f"{root}: unet in_channels={in_channels} (expected 4, or 9 for inpainting)")
    state = {k if k.startswith(("conv_in.", "position_net.")) else f"unet.{k}": v for k, v in unet.items()}
    state.update({f"vae.{k}": v for k, v in read_weights(root / "vae").items()})
    text = read_weights(root / "text_encoder", TRANSFORMERS_WEIGHTS)
    state.update(_clip_state(text, "text_encoder", drop_prefix="text_model."))
    if modality is Modality.TEXT_IMAGE_BOX:
        for sub in ("image_encoder", "image_project"):
            if not (root / sub).is_dir():
                raise CheckpointError(
                    f"{root}: text-image pipelines need {sub}/ (anhnct/Gligen_Text_Image layout)"
                )
        state.update(_clip_state(read_weights(root / "image_encoder", TRANSFORMERS_WEIGHTS), "image_encoder"))
        project = read_weights(root / "image_project")
        state.update(
            {
                f"image_project.{k[len('project.') :]}": v
                for k, v in project.items()
                if k.startswith("project.")
            }
        )
        state.update({f"image_project.{k}": v for k, v in project.items() if not k.startswith("project.")})
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = pick_preset(shapes, modality, in_channels == 9, model_shapes, str(root))
    heads = unet_config.get("num_attention_heads") or unet_config.get("attention_head_dim")
    heads_list = heads if isinstance(heads, list) else [heads]
    if heads is not None and any(h != config.unet.heads for h in heads_list):
        raise CheckpointError(
            f"{root / 'unet' / 'config.json'}: attention_head_dim={heads} (heads), {config.key} has {config.unet.heads}"
        )
    return assemble_model(config, state), config


# ---- writing ------------------------------------------------------------------------------------------


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors save_file to a temporary name beside ``path``, then os.replace."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def transformers_config_json(module: torch.nn.Module) -> dict[str, Any]:
    """config.json content of a transformers model, as its save_pretrained writes it."""
    config = module.config  # type: ignore[attr-defined]
    data = json.loads(config.to_json_string(use_diff=True))
    data["architectures"] = [type(module).__name__]
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _with_version(data: dict[str, Any]) -> dict[str, Any]:
    import diffusers

    return {**data, "_diffusers_version": diffusers.__version__}


def _clip_image_processor(size: int) -> dict[str, Any]:
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def _write_components(model: GLIGENModel, root: Path, tokenizer: ClipTokenizer) -> None:
    config = model.config
    sd = model.state_dict()

    unet_config = json.loads(model.unet.to_json_string())
    unet_config.update(attention_type=ATTENTION_TYPE[config.modality], in_channels=config.conv_in_channels)
    _write_json(root / "unet" / "config.json", unet_config)
    unet = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
    unet.update({k: v for k, v in sd.items() if k.startswith(("conv_in.", "position_net."))})
    atomic_save_file(unet, root / "unet" / DIFFUSERS_WEIGHTS[0])

    _write_json(root / "vae" / "config.json", json.loads(model.vae.to_json_string()))
    atomic_save_file(
        {k[len("vae.") :]: v for k, v in sd.items() if k.startswith("vae.")},
        root / "vae" / DIFFUSERS_WEIGHTS[0],
    )

    _write_json(root / "text_encoder" / "config.json", transformers_config_json(model.text_encoder))
    text = {
        f"text_model.{k[len('text_encoder.') :]}": v for k, v in sd.items() if k.startswith("text_encoder.")
    }
    atomic_save_file(text, root / "text_encoder" / TRANSFORMERS_WEIGHTS[0])

    tokenizer.save(root / "tokenizer")
    _write_json(root / "scheduler" / "scheduler_config.json", _with_version(SCHEDULER_CONFIG))

    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS[config.modality],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if config.modality is Modality.TEXT_IMAGE_BOX:
        assert model.image_encoder is not None and config.image is not None
        _write_json(root / "image_encoder" / "config.json", transformers_config_json(model.image_encoder))
        image = {k[len("image_encoder.") :]: v for k, v in sd.items() if k.startswith("image_encoder.")}
        atomic_save_file(image, root / "image_encoder" / TRANSFORMERS_WEIGHTS[0])
        project_config = {"_class_name": "CLIPImageProjection", "hidden_size": config.context_dim}
        _write_json(root / "image_project" / "config.json", _with_version(project_config))
        atomic_save_file(
            {"project.weight": sd["image_project.weight"]}, root / "image_project" / DIFFUSERS_WEIGHTS[0]
        )
        tokenizer.save(root / "processor")
        _write_json(
            root / "processor" / "preprocessor_config.json", _clip_image_processor(config.image.image_size)
        )
        index.update(
            image_encoder=["transformers", "CLIPVisionModelWithProjection"],
            image_project=["stable_diffusion", "CLIPImageProjection"],
            processor=["transformers", "CLIPProcessor"],
        )
    _write_json(root / "model_index.json", _with_version(index))


def save_diffusers(
    model: GLIGENModel, folder: str | os.PathLike[str], *, tokenizer: ClipTokenizer | None = None
) -> Path:
    """Write ``model`` as a diffusers GLIGEN pipeline folder (safetensors), atomically.

    Everything is written to ``<folder>.tmp-XXXX`` beside the target, which then replaces ``folder``.
    ``tokenizer`` defaults to ClipTokenizer.default(). Only box modalities exist in this layout.
    """
    config = model.config
    if not config.modality.is_box:
        raise CheckpointError(
            f"{config.modality.value} models have no diffusers layout (box modalities only); save the original layout"
        )
    if tokenizer is None:
        from gligen_rt.core.tokenizer import ClipTokenizer

        tokenizer = ClipTokenizer.default()
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        _write_components(model, tmp, tokenizer)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / target.name).exists():
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target
