"""Checkpoint layouts: original single file (all modalities) and diffusers folder (box modalities).

Every layout is written from a tiny random model and read back bit-exact; the key map is checked
for completeness at tiny and SD-1.4 size and against diffusers' own LDM converters; pickled foreign
objects in ``config_dict`` are never executed; every failure is a one-line CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gligen_ref.checkpoint import (
    detect_layout,
    file_sha256,
    load_checkpoint,
    load_diffusers,
    load_original,
    save_diffusers,
    save_original,
)
from gligen_ref.checkpoint.keys import key_map, model_shapes
from gligen_ref.checkpoint.original import SD_CONV_IN_FILE, original_sections
from gligen_ref.checkpoint.safe_pickle import Placeholder, load_torch_file
from gligen_ref.model import GLIGENModel
from gligen_rt.core.config import sd14, tiny_random
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.modality import Modality
from gligen_rt.core.tokenizer import BOS, END_OF_WORD, EOS, ClipTokenizer, bytes_to_unicode, find_bpe_file

ORIGINAL_VARIANTS = [(m, False) for m in Modality] + [
    (Modality.TEXT_BOX, True),
    (Modality.TEXT_IMAGE_BOX, True),
]
DIFFUSERS_VARIANTS = [
    (m, inpaint) for m in (Modality.TEXT_BOX, Modality.TEXT_IMAGE_BOX) for inpaint in (False, True)
]


def _id(v: tuple[Modality, bool]) -> str:
    return ("inpaint-" if v[1] else "") + v[0].value


# ---- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tok() -> ClipTokenizer:
    """A byte-level CLIP tokenizer without merges: fast to build, save and read."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + [BOS, EOS]
    return ClipTokenizer({t: i for i, t in enumerate(tokens)}, [])


@pytest.fixture(scope="session")
def originals(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[..., GLIGENModel]) -> Callable:
    """``originals(modality, inpaint)`` -> path of the saved original file (own folder, with sidecars)."""
    cache: dict[tuple[Modality, bool], Path] = {}

    def get(modality: Modality, inpaint: bool = False) -> Path:
        if (modality, inpaint) not in cache:
            folder = tmp_path_factory.mktemp(f"orig-{_id((modality, inpaint))}")
            path = folder / f"gligen-{_id((modality, inpaint))}.bin"
            cache[(modality, inpaint)] = save_original(
                tiny_model(modality, inpaint), path, image_encoder=True
            )
        return cache[(modality, inpaint)]

    return get


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def rewrite(src: Path, dst: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """Copy an original file through ``mutate`` (sections as plain dicts)."""
    data = torch.load(src, map_location="cpu", weights_only=True)
    mutate(data)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, dst)
    return dst


def one_line_error(fn: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


class RunsShell:
    """Pickles as ``os.system(f"touch {marker}")``: loading it must not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class FakeDictConfig:
    """Stands for omegaconf's DictConfig: a class the loader must not import."""

    def __init__(self) -> None:
        self._content = {"model": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel"}}
        self._metadata = [1, 2]


# ---- key map ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [tiny_random(m, i) for m, i in ORIGINAL_VARIANTS]
    + [sd14(Modality.TEXT_BOX), sd14(Modality.TEXT_IMAGE_BOX, True), sd14(Modality.HED), sd14(Modality.SEM)],
    ids=lambda c: c.key,
)
def test_key_map_is_a_bijection(config) -> None:
    km = key_map(config)
    originals: dict[str, str] = {}
    for key in model_shapes(config):
        if km.is_sidecar(key):
            continue
        original = km.to_original(key)
        assert original not in originals, (key, originals.get(original))
        originals[original] = key
        assert km.from_original(original) == key
    sidecars = {k.split(".")[0] for k in model_shapes(config) if km.is_sidecar(k)}
    assert sidecars <= {"sd_conv_in", "image_encoder", "image_project"}
    if config.name == "sd14":  # SD-1.4: 686 UNet keys + 16 fusers x 17, 248 VAE keys, 196 CLIP-L keys
        grounding = ("model.position_net.", "model.downsample_net.")
        unet = [k for k in originals if k.startswith("model.") and not k.startswith(grounding)]
        assert len(unet) == 686 + 16 * 17
        assert sum(k.startswith("autoencoder.") for k in originals) == 248
        assert sum(k.startswith("text_encoder.") for k in originals) == 196
        assert km.original_shape("vae.encoder.mid_block.attentions.0.to_q.weight", (512, 512)) == (
            512,
            512,
            1,
            1,
        )


def test_key_map_agrees_with_diffusers_converters(tiny_model) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    model = tiny_model(Modality.TEXT_BOX)
    sections = original_sections(model)
    sd = model.state_dict()
    ldm_unet = {
        f"model.diffusion_model.{k}": v
        for k, v in sections["model"].items()
        if not k.startswith("position_net.")
    }
    unet = convert_ldm_unet_checkpoint(ldm_unet, {"layers_per_block": model.config.unet.layers_per_block})
    ours = {k.removeprefix("unet."): v for k, v in sd.items() if k.startswith(("unet.", "conv_in."))}
    assert unet.keys() == ours.keys() and all(torch.equal(unet[k], ours[k]) for k in ours)
    n = len(model.config.vae.block_out_channels)
    vae = convert_ldm_vae_checkpoint(
        {f"first_stage_model.{k}": v for k, v in sections["autoencoder"].items()},
        {"down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n},
    )
    ours = {k.removeprefix("vae."): v for k, v in sd.items() if k.startswith("vae.")}
    assert vae.keys() == ours.keys() and all(torch.equal(vae[k], ours[k]) for k in ours)
    text = convert_ldm_clip_checkpoint(
        {f"cond_stage_model.{k}": v for k, v in sections["text_encoder"].items()}
    )
    text.pop("text_model.embeddings.position_ids")
    assert text.keys() == {
        f"text_model.{k.removeprefix('text_encoder.')}" for k in sd if k.startswith("text_encoder.")
    }


# ---- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ORIGINAL_VARIANTS, ids=_id)
def test_original_round_trip(variant, originals, tiny_model, tok) -> None:
    modality, inpaint = variant
    model = tiny_model(modality, inpaint)
    path = originals(modality, inpaint)
    assert detect_layout(path) == "original"
    loaded = load_checkpoint(path, tokenizer=tok)
    assert loaded.layout == "original" and loaded.path == path and loaded.tokenizer is tok
    assert loaded.config == model.config
    assert (loaded.config.modality, loaded.config.inpaint) == (modality, inpaint)
    assert_same_state(model, loaded.model)
    assert not loaded.model.training
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"model", "autoencoder", "text_encoder", "diffusion"}
    assert data["model"]["input_blocks.0.0.weight"].shape[1] == model.config.conv_in_channels
    assert (path.parent / SD_CONV_IN_FILE).is_file() == modality.is_spatial


def test_original_default_tokenizer(originals) -> None:
    if find_bpe_file() is None and not os.environ.get("GLIGEN_RT_CLIP_VOCAB"):
        pytest.skip("no CLIP BPE vocabulary installed")
    loaded = load_checkpoint(originals(Modality.TEXT_BOX))
    assert len(loaded.tokenizer) == 49408


@pytest.mark.parametrize("variant", DIFFUSERS_VARIANTS, ids=_id)
def test_diffusers_round_trip(variant, tmp_path, tiny_model, tok) -> None:
    modality, inpaint = variant
    model = tiny_model(modality, inpaint)
    folder = save_diffusers(model, tmp_path / "pipe", tokenizer=tok)
    assert not [p for p in tmp_path.iterdir() if p.name != "pipe"], "temporary folders left behind"
    assert detect_layout(folder) == "diffusers"
    loaded = load_checkpoint(folder)
    assert loaded.layout == "diffusers" and loaded.config == model.config
    assert loaded.tokenizer.vocab == tok.vocab
    assert_same_state(model, loaded.model)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_config["in_channels"] == (9 if inpaint else 4)
    assert unet_config["attention_type"] == (
        "gated-text-image" if modality is Modality.TEXT_IMAGE_BOX else "gated"
    )
    index = json.loads((folder / "model_index.json").read_text())
    text_image = modality is Modality.TEXT_IMAGE_BOX
    assert index["_class_name"] == (
        "StableDiffusionGLIGENTextImagePipeline" if text_image else "StableDiffusionGLIGENPipeline"
    )
    save_diffusers(model, folder, tokenizer=tok)  # overwriting an existing folder is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_diffusers_folder_loads_in_the_libraries(tmp_path, tiny_model, tok) -> None:
    """The written configs and weights are what diffusers / transformers themselves read."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.clip_image_project_model import CLIPImageProjection
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    model = tiny_model(Modality.TEXT_IMAGE_BOX)
    sd = model.state_dict()
    folder = save_diffusers(model, tmp_path / "pipe", tokenizer=tok)
    for sub, cls in (("text_encoder", CLIPTextModel), ("image_encoder", CLIPVisionModelWithProjection)):
        lib = cls.from_pretrained(folder / sub)
        assert all(torch.equal(v, sd[f"{sub}.{k}"]) for k, v in lib.state_dict().items()), sub
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), strict=True)
    project = CLIPImageProjection.from_config(CLIPImageProjection.load_config(folder / "image_project"))
    project.load_state_dict(load_file(folder / "image_project" / "diffusion_pytorch_model.safetensors"))
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert unet.state_dict().keys() == weights.keys()
    # tiny's grounding MLP is narrower than diffusers' fixed 512; everything else has diffusers' shapes
    mismatched = {k for k, v in unet.state_dict().items() if v.shape != weights[k].shape}
    assert mismatched and all(k.startswith("position_net.") for k in mismatched)


def test_diffusers_fp16_bin_variants_and_legacy_flag(tmp_path, tiny_model, tok) -> None:
    model = tiny_model(Modality.TEXT_BOX, True)
    folder = save_diffusers(model, tmp_path / "pipe", tokenizer=tok)
    from safetensors.torch import load_file, save_file

    for sub, src, dst in (
        ("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.bin"),
        ("vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
        ("text_encoder", "model.safetensors", "pytorch_model.bin"),
    ):
        state = load_file(folder / sub / src)
        half = {k: v.half() if v.is_floating_point() and "fp16" in dst else v for k, v in state.items()}
        (folder / sub / src).unlink()
        if dst.endswith(".bin"):
            torch.save(half, folder / sub / dst)
        else:
            save_file(half, folder / sub / dst)
    config = json.loads((folder / "unet" / "config.json").read_text())
    del config["attention_type"]
    config["use_gated_attention"] = True  # the authors' fork flag
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    loaded, cfg = load_diffusers(folder)
    assert cfg == model.config
    expected = {
        k: v.half().float() if k.startswith(("unet.", "conv_in.", "position_net.", "vae.")) else v
        for k, v in model.state_dict().items()
    }
    got = loaded.state_dict()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], expected[k]) for k in expected)


# ---- detection and sidecars -------------------------------------------------------------------------


def test_canny_and_depth_need_a_name_or_modality(originals, tmp_path, tok) -> None:
    anonymous = tmp_path / "checkpoint.bin"
    shutil.copy(originals(Modality.CANNY), anonymous)
    shutil.copy(originals(Modality.CANNY).parent / SD_CONV_IN_FILE, tmp_path / SD_CONV_IN_FILE)
    one_line_error(lambda: load_original(anonymous), str(anonymous), "--modality")
    _, config = load_original(anonymous, modality="depth")  # same shapes: the caller decides
    assert config.modality is Modality.DEPTH
    one_line_error(lambda: load_original(anonymous, modality="hed"), "--modality")
    one_line_error(lambda: load_original(originals(Modality.HED), modality="sem"), "hed", "not sem")


def test_spatial_needs_sd_conv_in(originals, tmp_path, tiny_model) -> None:
    lonely = tmp_path / "hed" / "gligen-hed.bin"
    lonely.parent.mkdir()
    shutil.copy(originals(Modality.HED), lonely)
    one_line_error(lambda: load_original(lonely), str(lonely), SD_CONV_IN_FILE, "--sd-conv-in")
    model = tiny_model(Modality.HED)
    w, b = model.sd_conv_in.weight.detach(), model.sd_conv_in.bias.detach()
    # an SD training checkpoint (with a foreign object, as Lightning writes) and a safetensors file
    sd_ckpt = tmp_path / "sd-v1-4.ckpt"
    torch.save(
        {
            "state_dict": {
                "model.diffusion_model.input_blocks.0.0.weight": w,
                "model.diffusion_model.input_blocks.0.0.bias": b,
            },
            "callbacks": FakeDictConfig(),
        },
        sd_ckpt,
    )
    from safetensors.torch import save_file

    sd_st = tmp_path / "unet.safetensors"
    save_file(
        {"conv_in.weight": w.contiguous(), "conv_in.bias": b.contiguous(), "other": torch.zeros(1)}, sd_st
    )
    for source in (sd_ckpt, sd_st):
        loaded, _ = load_original(lonely, sd_conv_in=source)
        assert_same_state(model, loaded)
    bad = tmp_path / "bad_conv.pth"
    torch.save({"weight": w[:, :2], "bias": b}, bad)
    one_line_error(lambda: load_original(lonely, sd_conv_in=bad), str(bad), "'weight'")


def test_text_image_needs_clip_vision_and_projection(originals, tmp_path, tiny_model) -> None:
    src = originals(Modality.TEXT_IMAGE_BOX)
    lonely = tmp_path / "gligen-text-image.bin"
    shutil.copy(src, lonely)
    one_line_error(lambda: load_original(lonely), str(lonely), "--clip-vision")
    one_line_error(lambda: load_original(lonely, clip_vision=src.parent / "clip_vision"), "projection_matrix")
    loaded, _ = load_original(
        lonely, clip_vision=src.parent / "clip_vision", projection_matrix=src.parent / "projection_matrix"
    )
    assert_same_state(tiny_model(Modality.TEXT_IMAGE_BOX), loaded)


# ---- untrusted pickles ------------------------------------------------------------------------------


def test_config_dict_objects_are_never_executed(originals, tmp_path, tiny_model) -> None:
    marker = tmp_path / "marker"
    config_dict = {"_content": {"a": FakeDictConfig(), "b": RunsShell(marker)}, "_flags": RunsShell(marker)}
    path = rewrite(
        originals(Modality.TEXT_BOX),
        tmp_path / "with-config.bin",
        lambda d: d.update(config_dict=config_dict),
    )
    with pytest.raises(pickle.UnpicklingError):  # the weights-only loader refuses it: the fallback is used
        torch.load(path, weights_only=True)
    loaded, config = load_original(path)
    assert not marker.exists()
    assert config == tiny_model(Modality.TEXT_BOX).config
    assert_same_state(tiny_model(Modality.TEXT_BOX), loaded)
    data = load_torch_file(path)
    assert not marker.exists()
    shell = data["config_dict"]["_flags"]
    assert (
        isinstance(shell, Placeholder) and shell.qualname == "system" and shell.args == (f"touch {marker}",)
    )
    fake = data["config_dict"]["_content"]["a"]
    assert (
        isinstance(fake, Placeholder)
        and fake.qualname == "FakeDictConfig"
        and fake.state["_metadata"] == [1, 2]
    )
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0), "x": RunsShell(marker)}, legacy, _use_new_zipfile_serialization=False)
    data = load_torch_file(legacy)
    assert torch.equal(data["w"], torch.arange(3.0)) and isinstance(data["x"], Placeholder)
    assert not marker.exists()


# ---- errors -----------------------------------------------------------------------------------------


def _drop(section: str, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section].pop(key)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            _drop("model", "input_blocks.1.0.in_layers.0.weight"),
            "missing key 'model.input_blocks.1.0.in_layers.0.weight'",
        ),
        (
            lambda d: d["model"].update({"extra.weight": torch.zeros(2)}),
            "unexpected key 'model.extra.weight'",
        ),
        (
            lambda d: d["autoencoder"].update({"quant_conv.bias": torch.zeros(3)}),
            "key 'autoencoder.quant_conv.bias' has shape [3]",
        ),
        (
            _drop("text_encoder", "transformer.text_model.final_layer_norm.weight"),
            "text_model.final_layer_norm.weight",
        ),
        (lambda d: d.pop("autoencoder"), "missing section 'autoencoder'"),
        (lambda d: d["model"].update({"out.2.bias": "nope"}), "'model.out.2.bias' is a str"),
    ],
    ids=["missing", "unexpected", "shape", "missing-text", "section", "not-a-tensor"],
)
def test_bad_original_files(originals, tmp_path, mutate, needle) -> None:
    path = rewrite(originals(Modality.TEXT_BOX), tmp_path / "bad.bin", mutate)
    one_line_error(lambda: load_checkpoint(path), str(path), needle)


def test_unreadable_and_unknown(originals, tmp_path) -> None:
    good = originals(Modality.TEXT_BOX)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(lambda: load_checkpoint(truncated), str(truncated))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    one_line_error(lambda: detect_layout(notes), str(notes), "unknown checkpoint layout")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: load_checkpoint(empty), str(empty), "unknown checkpoint layout")
    one_line_error(lambda: load_checkpoint(tmp_path / "nothing.bin"), "nothing.bin")
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    one_line_error(lambda: load_checkpoint(plain), str(plain), "no 'model' section")


def test_bad_diffusers_folders(tmp_path, tiny_model, tok) -> None:
    one_line_error(
        lambda: save_diffusers(tiny_model(Modality.HED), tmp_path / "hed", tokenizer=tok),
        "hed",
        "original layout",
    )
    assert not any(tmp_path.iterdir())
    folder = save_diffusers(tiny_model(Modality.TEXT_BOX), tmp_path / "pipe", tokenizer=tok)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "attention_type": "default"}))
    one_line_error(lambda: load_checkpoint(folder), "attention_type='default'", "not a GLIGEN UNet")
    config_path.write_text(json.dumps({**config, "attention_head_dim": 4}))
    one_line_error(lambda: load_checkpoint(folder), "attention_head_dim=4")
    config_path.write_text(json.dumps(config))
    (folder / "text_encoder" / "model.safetensors").unlink()
    one_line_error(lambda: load_checkpoint(folder), "text_encoder", "no weights file")


def test_diffusion_betas_are_checked(originals, tmp_path, caplog) -> None:
    def scale(d: dict[str, Any]) -> None:
        d["diffusion"]["betas"] = d["diffusion"]["betas"] * 2

    path = rewrite(originals(Modality.TEXT_BOX), tmp_path / "other-schedule.bin", scale)
    with caplog.at_level(logging.WARNING, logger="gligen_ref.checkpoint.original"):
        load_original(path)
    assert "SD-1.x schedule" in caplog.text


# ---- hashing ----------------------------------------------------------------------------------------


def test_file_sha256(originals, tmp_path, tiny_model, tok) -> None:
    path = originals(Modality.TEXT_BOX)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    folder = save_diffusers(tiny_model(Modality.TEXT_BOX), tmp_path / "pipe", tokenizer=tok)
    digest = file_sha256(folder)
    (folder / "model_index.json").write_text("{}")  # not a weight file
    assert file_sha256(folder) == digest
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-1] + b"\0")
    assert file_sha256(folder) != digest
    one_line_error(lambda: file_sha256(tmp_path / "missing"), "missing")
