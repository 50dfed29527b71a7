"""Two-way key mapping between the original GLIGEN (LDM) single-file layout and GLIGENModel.

Original keys are written flat as ``<section>.<key>``, section one of ``model`` (UNet with fusers,
``position_net``, ``downsample_net``), ``autoencoder`` (LDM AutoencoderKL) and ``text_encoder``
(``transformer.text_model.*``). The mapping is generated from the ModelConfig as a table of module
prefixes (ours <-> original), each with optional renames of the first suffix component:

    conv_in                                    <-> model.input_blocks.0.0
    unet.time_embedding.linear_{1,2}           <-> model.time_embed.{0,2}
    unet.down_blocks.{l}.resnets.{j}           <-> model.input_blocks.{1 + l*(n+1) + j}.0   (ResBlock renames)
    unet.down_blocks.{l}.attentions.{j}        <-> model.input_blocks.{1 + l*(n+1) + j}.1   (verbatim, fuser.* too)
    unet.down_blocks.{l}.downsamplers.0.conv   <-> model.input_blocks.{(l+1)*(n+1)}.0.op
    unet.mid_block.{resnets.0,attentions.0,resnets.1} <-> model.middle_block.{0,1,2}
    unet.up_blocks.{i}.resnets.{j}             <-> model.output_blocks.{i*(n+2) + j}.0
    unet.up_blocks.{i}.attentions.{j}          <-> model.output_blocks.{i*(n+2) + j}.1
    unet.up_blocks.{i}.upsamplers.0.conv       <-> model.output_blocks.{i*(n+2) + n}.{1|2}.conv
    unet.conv_norm_out / unet.conv_out         <-> model.out.0 / model.out.2
    vae.encoder.down_blocks.{i}.resnets.{j}    <-> autoencoder.encoder.down.{i}.block.{j}  (nin_shortcut)
    vae.decoder.up_blocks.{i}...               <-> autoencoder.decoder.up.{L-1-i}...
    vae.*.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
                                               <-> ...mid.attn_1.{norm,q,k,v,proj_out}  ([C,C] <-> [C,C,1,1])
    text_encoder                               <-> text_encoder.transformer.text_model
    position_net / downsample_net              <-> model.position_net / model.downsample_net

(n = layers_per_block, up-block rows have n+1 entries.) SpatialTransformer proj_in / proj_out are
1x1 convs on both sides (diffusers' Transformer2DModel keeps convs when use_linear_projection is off),
so only the VAE attention needs a reshape. ``sd_conv_in``, ``image_encoder`` and ``image_project``
are not in the original file (sidecar files, see original.py).

Note: transformers 5 names CLIPTextModel weights without the ``text_model.`` level, so ours are
``text_encoder.embeddings...``, ``text_encoder.encoder...``, ``text_encoder.final_layer_norm...``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gligen_rt.core.config import PRESETS, ModelConfig
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.modality import Modality

if TYPE_CHECKING:
    from gligen_ref.model import GLIGENModel

SECTIONS = ("model", "autoencoder", "text_encoder")
SIDECAR_PREFIXES = ("sd_conv_in.", "image_encoder.", "image_project.")

_RESBLOCK = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_RESBLOCK = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("conv_shortcut", "nin_shortcut"),
)
_VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


@dataclass(frozen=True)
class Rule:
    """One module: our prefix, the original prefix, and renames of the first suffix component(s).

    No renames: the suffix is copied verbatim. With renames, every suffix must start with one of them.
    ``conv_as_linear``: 2-D ``.weight`` tensors here are [C,C,1,1] 1x1 convs in the original.
    """

    ours: str
    original: str
    renames: tuple[tuple[str, str], ...] = ()
    conv_as_linear: bool = False


def _split(key: str, table: dict[str, Rule]) -> tuple[Rule, str] | None:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        rule = table.get(".".join(parts[:i]))
        if rule is not None:
            return rule, ".".join(parts[i:])
    return None


def _rename(suffix: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    if not pairs:
        return suffix
    for src, dst in pairs:
        if suffix.startswith(src + "."):
            return dst + suffix[len(src) :]
    return None


class KeyMap:
    """The prefix table for one ModelConfig, usable in both directions.

    `to_original(key)` / `from_original(key)` raise KeyError for a key outside the table (sidecar keys
    included: check `is_sidecar` first).
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = tuple(rules)
        self._ours = {r.ours: r for r in rules}
        self._orig = {r.original: r for r in rules}
        if len(self._ours) != len(rules) or len(self._orig) != len(rules):
            raise ValueError("duplicate prefix in the key map")

    @staticmethod
    def is_sidecar(key: str) -> bool:
        """Our keys that the original single file does not hold."""
        return key.startswith(SIDECAR_PREFIXES)

    def to_original(self, key: str) -> str:
        found = _split(key, self._ours)
        renamed = _rename(found[1], found[0].renames) if found else None
        if found is None or renamed is None:
            raise KeyError(key)
        return f"{found[0].original}.{renamed}"

    def from_original(self, key: str) -> str:
        found = _split(key, self._orig)
        inverse = tuple((b, a) for a, b in found[0].renames) if found else ()
        renamed = _rename(found[1], inverse) if found else None
        if found is None or renamed is None:
            raise KeyError(key)
        return f"{found[0].ours}.{renamed}"

    def _reshaped(self, key: str, table: dict[str, Rule]) -> bool:
        found = _split(key, table)
        return found is not None and found[0].conv_as_linear and key.endswith(".weight")

    def original_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The original file's shape for our ``key`` of ``shape``."""
        shape = tuple(shape)
        return shape + (1, 1) if self._reshaped(key, self._ours) and len(shape) == 2 else shape

    def to_original_tensor(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """Our tensor -> the original's (a 1x1-conv view for VAE attention weights)."""
        return t.reshape(*t.shape, 1, 1) if self._reshaped(key, self._ours) and t.dim() == 2 else t

    def from_original_tensor(self, original_key: str, t: torch.Tensor) -> torch.Tensor:
        """The original's tensor -> ours (drops the 1x1 of VAE attention weights)."""
        if self._reshaped(original_key, self._orig) and t.dim() == 4 and t.shape[2:] == (1, 1):
            return t.reshape(t.shape[0], t.shape[1])
        return t


def _unet_rules(config: ModelConfig) -> list[Rule]:
    u = config.unet
    levels, n, att = len(u.block_out_channels), u.layers_per_block, u.attention_levels
    rules = [
        Rule("conv_in", "model.input_blocks.0.0"),
        Rule("unet.time_embedding.linear_1", "model.time_embed.0"),
        Rule("unet.time_embedding.linear_2", "model.time_embed.2"),
        Rule("unet.conv_norm_out", "model.out.0"),
        Rule("unet.conv_out", "model.out.2"),
        Rule("unet.mid_block.resnets.0", "model.middle_block.0", _RESBLOCK),
        Rule("unet.mid_block.attentions.0", "model.middle_block.1"),
        Rule("unet.mid_block.resnets.1", "model.middle_block.2", _RESBLOCK),
    ]
    idx = 1
    for level in range(levels):
        for j in range(n):
            rules.append(
                Rule(f"unet.down_blocks.{level}.resnets.{j}", f"model.input_blocks.{idx}.0", _RESBLOCK)
            )
            if att[level]:
                rules.append(Rule(f"unet.down_blocks.{level}.attentions.{j}", f"model.input_blocks.{idx}.1"))
            idx += 1
        if level < levels - 1:
            rules.append(
                Rule(f"unet.down_blocks.{level}.downsamplers.0.conv", f"model.input_blocks.{idx}.0.op")
            )
            idx += 1
    idx = 0
    for i in range(levels):
        level = levels - 1 - i
        for j in range(n + 1):
            rules.append(Rule(f"unet.up_blocks.{i}.resnets.{j}", f"model.output_blocks.{idx}.0", _RESBLOCK))
            slot = 1
            if att[level]:
                rules.append(Rule(f"unet.up_blocks.{i}.attentions.{j}", f"model.output_blocks.{idx}.1"))
                slot = 2
            if j == n and i < levels - 1:
                rules.append(
                    Rule(f"unet.up_blocks.{i}.upsamplers.0.conv", f"model.output_blocks.{idx}.{slot}.conv")
                )
            idx += 1
    return rules


def _vae_rules(config: ModelConfig) -> list[Rule]:
    v = config.vae
    levels, n = len(v.block_out_channels), v.layers_per_block
    rules = [
        Rule("vae.quant_conv", "autoencoder.quant_conv"),
        Rule("vae.post_quant_conv", "autoencoder.post_quant_conv"),
    ]
    for side in ("encoder", "decoder"):
        ours, orig = f"vae.{side}", f"autoencoder.{side}"
        rules += [
            Rule(f"{ours}.conv_in", f"{orig}.conv_in"),
            Rule(f"{ours}.conv_out", f"{orig}.conv_out"),
            Rule(f"{ours}.conv_norm_out", f"{orig}.norm_out"),
            Rule(f"{ours}.mid_block.resnets.0", f"{orig}.mid.block_1", _VAE_RESBLOCK),
            Rule(f"{ours}.mid_block.resnets.1", f"{orig}.mid.block_2", _VAE_RESBLOCK),
            Rule(f"{ours}.mid_block.attentions.0", f"{orig}.mid.attn_1", _VAE_ATTENTION, conv_as_linear=True),
        ]
    for i in range(levels):
        for j in range(n):
            rules.append(
                Rule(
                    f"vae.encoder.down_blocks.{i}.resnets.{j}",
                    f"autoencoder.encoder.down.{i}.block.{j}",
                    _VAE_RESBLOCK,
                )
            )
        if i < levels - 1:
            rules.append(
                Rule(
                    f"vae.encoder.down_blocks.{i}.downsamplers.0.conv",
                    f"autoencoder.encoder.down.{i}.downsample.conv",
                )
            )
    for i in range(levels):
        up = levels - 1 - i
        for j in range(n + 1):
            rules.append(
                Rule(
                    f"vae.decoder.up_blocks.{i}.resnets.{j}",
                    f"autoencoder.decoder.up.{up}.block.{j}",
                    _VAE_RESBLOCK,
                )
            )
        if i < levels - 1:
            rules.append(
                Rule(
                    f"vae.decoder.up_blocks.{i}.upsamplers.0.conv",
                    f"autoencoder.decoder.up.{up}.upsample.conv",
                )
            )
    return rules


@functools.lru_cache(maxsize=64)
def key_map(config: ModelConfig) -> KeyMap:
    """The original <-> GLIGENModel key map for ``config``."""
    rules = _unet_rules(config) + _vae_rules(config)
    rules.append(Rule("text_encoder", "text_encoder.transformer.text_model"))
    rules.append(Rule("position_net", "model.position_net"))
    if config.modality.is_spatial:
        rules.append(Rule("downsample_net", "model.downsample_net"))
    return KeyMap(rules)


@functools.lru_cache(maxsize=32)
def _skeleton(config: ModelConfig) -> GLIGENModel:
    """GLIGENModel(config) on the meta device (cheap at any size); never handed out, only copied."""
    from gligen_ref.model import GLIGENModel

    with torch.device("meta"):
        return GLIGENModel(config)


@functools.lru_cache(maxsize=64)
def model_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GLIGENModel(config)'s state-dict shapes (from a meta-device model)."""
    return {k: tuple(v.shape) for k, v in _skeleton(config).state_dict().items()}


def original_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape the original single file holds for ``config`` (flat ``section.key``)."""
    km = key_map(config)
    return {
        km.to_original(k): km.original_shape(k, s)
        for k, s in model_shapes(config).items()
        if not km.is_sidecar(k)
    }


# ---- matching a file against the presets, and building the model from a state dict ----------------


def shape_problems(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> list[str]:
    """Human-readable differences (missing, unexpected, mis-shaped keys), in a stable order."""
    problems = [f"missing key '{k}'" for k in expected if k not in found]
    problems += [f"unexpected key '{k}'" for k in found if k not in expected]
    problems += [
        f"key '{k}' has shape {list(s)}, expected {list(expected[k])}"
        for k, s in found.items()
        if k in expected and tuple(expected[k]) != tuple(s)
    ]
    return problems


def pick_preset(
    found: dict[str, tuple[int, ...]],
    modality: Modality,
    inpaint: bool,
    expected_of: Callable[[ModelConfig], dict[str, tuple[int, ...]]],
    source: str,
    conv_in_key: str = "conv_in.weight",
) -> ModelConfig:
    """The first preset (sd14, then tiny) whose every key and shape equals ``found``.

    Presets whose conv_in shape (``found[conv_in_key]``) differs are skipped without building their
    key table, unless none matches. Raises CheckpointError naming the first difference to the
    closest preset.
    """
    configs = [factory(modality, inpaint) for factory in PRESETS.values()]
    quick = [c for c in configs if found.get(conv_in_key) == _conv_in_shape(c)]
    best: tuple[ModelConfig, list[str]] | None = None
    for config in quick or configs:
        problems = shape_problems(expected_of(config), found)
        if not problems:
            return config
        if best is None or len(problems) < len(best[1]):
            best = (config, problems)
    assert best is not None
    config, problems = best
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    raise CheckpointError(
        f"{source}: {problems[0]}{more} for {config.key}; the file matches no known GLIGEN model"
    )


def _conv_in_shape(config: ModelConfig) -> tuple[int, ...]:
    return (config.unet.block_out_channels[0], config.conv_in_channels, 3, 3)


def assemble_model(config: ModelConfig, state: dict[str, torch.Tensor]) -> GLIGENModel:
    """GLIGENModel(config) holding exactly ``state`` (float32, eval), without a random initialisation.

    The module tree is copied from a meta-device skeleton and the tensors are assigned (no copy;
    tensors read with mmap stay file-backed). CLIP's non-persistent ``position_ids`` buffers are
    rebuilt; should any other meta tensor remain, the model is built normally and the state copied in.
    """
    from gligen_ref.model import GLIGENModel

    state = {k: v if v.dtype == torch.float32 else v.float() for k, v in state.items()}
    model = copy.deepcopy(_skeleton(config))
    model.load_state_dict(state, strict=True, assign=True)
    for module in model.modules():
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta and bname == "position_ids":
                fixed = torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape)
                module.register_buffer(bname, fixed, persistent=False)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = GLIGENModel(config)
        model.load_state_dict(state, strict=True)
    return model.float().eval()
