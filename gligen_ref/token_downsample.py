"""Token downsampling at the UNet's first level: keys and values from fewer tokens (opt-in).

At SD's native size the first level's attentions dominate a CPU step: at 512 px they run over 64x64 =
4096 tokens with 40-wide heads, so the softmax (4096 x 4096 exponentials per head) costs more than the
matrix products around it. Token downsampling (ToDo, arXiv 2402.13573) keeps every query and takes
the keys and values of a self-attention from the token grid average-pooled ``factor x factor``:
that attention's work drops by ``factor**2``; the blocks below the first level are untouched.

Here it applies to every transformer block of the first level (the first down block and the last up
block, both at the latent's resolution):

- SD's self-attention (``attn1``): ``softmax(q(x) k(pool(x))^T / sqrt(d)) v(pool(x))``;
- GLIGEN's fuser, when it runs: keys and values from ``[pool(norm1(x)); norm1(g)]``, each pooled
  visual key's logit raised by ``log(factor**2)`` (proportional attention: a pooled key stands for
  ``factor**2`` tokens, so the grounding tokens keep their share of the softmax as without pooling).

It is an approximation, like the feature cache: off by default, chosen at export (``export
--token-downsample 2``), recorded in the engine folder's manifest, measured by the benchmark (PSNR
against the FP32 reference without it, grounding accuracy by ``gligen-rt eval``).

`token_downsampled(model, factor)` installs it on a `GLIGENModel` (or anything with ``.unet``) for the
duration of a ``with``; the fusers read it from their ``kv_factor`` / ``grid`` attributes, which the
first level's Transformer2DModels set on every call (a forward pre-hook reading the grid from their
input), so a copy of the model (export/fuse.py ``fuse_fusers``) carries it along.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gligen_rt.core.config import TOKEN_DOWNSAMPLE_FACTORS as FACTORS
from gligen_rt.core.config import check_token_downsample as check_factor


def pool_tokens(x: torch.Tensor, grid: tuple[Any, Any], factor: int) -> torch.Tensor:
    """x (B, h*w, C) on the grid (h, w) -> (B, (h/factor)*(w/factor), C), each ``factor x factor``
    patch averaged (an AveragePool in the exported graph). ValueError without a grid (the hook that
    sets it runs only when the block is called as a whole)."""
    if grid is None:
        raise ValueError("token downsampling needs the token grid: run the attention inside its block")
    b, _, c = x.shape
    h, w = grid
    t = x.transpose(1, 2).reshape(b, c, h, w)
    return F.avg_pool2d(t, factor).flatten(2).transpose(1, 2)


def pooled_key_bias(pooled: torch.Tensor, others: torch.Tensor, factor: int) -> torch.Tensor:
    """Additive logits (B, 1, 1, Np + No): ``log(factor**2)`` for the Np pooled keys, 0 for the No
    others; built from the tensors (no shape arithmetic in the graph)."""
    ones = torch.ones_like(pooled[:, :, :1]) * math.log(factor * factor)
    zeros = torch.zeros_like(others[:, :, :1])
    return torch.cat([ones, zeros], dim=1).transpose(1, 2).unsqueeze(1)


class DownsampledSelfAttnProcessor:
    """diffusers attention processor for a self-attention (``attn1``) with pooled keys and values.

    ``grid`` (h, w) is set before each call by the owning Transformer2DModel's pre-hook. Supports
    the attention layout of SD 1.x (no group / spatial / q-k norms, no residual inside, no mask).
    """

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.grid: tuple[Any, Any] | None = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("token downsampling applies to an unmasked self-attention")
        b = hidden_states.shape[0]
        kv = pool_tokens(hidden_states, self.grid, self.factor)
        q = attn.to_q(hidden_states)
        k = attn.to_k(kv)
        v = attn.to_v(kv)
        d = q.shape[-1] // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, attn.heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * d)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def first_level_transformers(unet: nn.Module) -> list[nn.Module]:
    """The Transformer2DModels at the latent's resolution: the first down block's and the last up
    block's (empty when those levels have no attention)."""
    found: list[nn.Module] = []
    for block in (unet.down_blocks[0], unet.up_blocks[-1]):
        found.extend(getattr(block, "attentions", None) or [])
    return found


def _set_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a first-level Transformer2DModel: hand its input's grid (h, w) to its
    blocks' downsampling self-attention and fuser (whichever the model holds at call time)."""
    x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    grid = (x.shape[-2], x.shape[-1])
    for block in module.transformer_blocks:
        processor = block.attn1.processor
        if isinstance(processor, DownsampledSelfAttnProcessor):
            processor.grid = grid
        fuser = getattr(block, "fuser", None)
        if fuser is not None and getattr(fuser, "kv_factor", 1) > 1:
            fuser.grid = grid


@contextlib.contextmanager
def token_downsampled(model: nn.Module, factor: int) -> Iterator[nn.Module]:
    """Within the ``with``: ``model.unet``'s first level attends to keys and values pooled
    ``factor x factor`` (module docstring); ``factor`` 1 changes nothing. Restores the model after.

    Raises ValueError for a factor outside FACTORS.
    """
    check_factor(factor)
    if factor == 1:
        yield model
        return
    transformers = first_level_transformers(model.unet)
    saved: list[tuple[nn.Module, Any]] = []
    hooks = []
    fusers: list[nn.Module] = []
    try:
        for t in transformers:
            hooks.append(t.register_forward_pre_hook(_set_grid, with_kwargs=True))
            for block in t.transformer_blocks:
                saved.append((block.attn1, block.attn1.processor))
                block.attn1.set_processor(DownsampledSelfAttnProcessor(factor))
                fuser = getattr(block, "fuser", None)
                if fuser is not None:
                    fuser.kv_factor = factor
                    fusers.append(fuser)
        yield model
    finally:
        for h in hooks:
            h.remove()
        for attn, processor in saved:
            attn.set_processor(processor)
        for fuser in fusers:
            fuser.kv_factor = 1
            fuser.grid = None


__all__ = [
    "FACTORS",
    "DownsampledSelfAttnProcessor",
    "check_factor",
    "first_level_transformers",
    "pool_tokens",
    "pooled_key_bias",
    "token_downsampled",
]
