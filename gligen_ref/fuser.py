"""GLIGEN's gated self-attention fuser (the original GatedSelfAttentionDense), with a per-step gate.

Notation (one transformer block of the UNet):
    x       (B, Nv, C)  visual tokens after SD's self-attention
    tokens  (B, Ng, D)  grounding tokens from the position net
    gate    ()|(1,)     the original's per-step ``scale`` (scheduled sampling), 0 turns the fuser off

    g = linear(tokens)                                              (B, Ng, C)
    x = x + gate * tanh(alpha_attn)  * attn(norm1([x; g]))[:, :Nv]   token selection: visual tokens only
    x = x + gate * tanh(alpha_dense) * ff(norm2(x))

With token downsampling (gligen_ref/token_downsample.py; ``kv_factor`` > 1, ``grid`` set by the
block's Transformer2DModel) the keys and values come from ``[pool(norm1(x)); norm1(g)]``, the pooled
keys' logits raised by ``log(kv_factor**2)``; the queries stay the Nv visual tokens.

Parameter names equal diffusers' GatedSelfAttentionDense and the original checkpoints
(``...transformer_blocks.0.fuser.*``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gligen_ref.token_downsample import pool_tokens, pooled_key_bias


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v without bias, output projection with bias, no mask.

    Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (diffusers' Attention layout).
    """

    def __init__(self, dim: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.n_heads = n_heads
        self.d_head = d_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim), softmax(q k^T / sqrt(d_head) + bias) v per head, keys and
        values from ``kv`` (B, M, dim) when given (else x), ``bias`` broadcast to (B, h, N, M)."""
        b = x.shape[0]
        kv = x if kv is None else kv

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, self.n_heads, self.d_head).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(kv)), heads(self.to_v(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.d_head**-0.5)
        out = out.transpose(1, 2).reshape(b, -1, self.n_heads * self.d_head)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """``proj(x)`` split in halves (value, gate) -> value * gelu(gate), exact erf GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim_in) -> (..., dim_out)."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, inner width ``mult * dim``. Keys ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        return self.net(x)


class GatedSelfAttention(nn.Module):
    """The GLIGEN fuser (see the module docstring for the math).

    Args:
        query_dim: C, width of the visual tokens.
        context_dim: D, width of the grounding tokens.
        n_heads, d_head: attention heads (SD: 8 heads of C/8).
    """

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = SelfAttention(query_dim, n_heads, d_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        self.kv_factor = 1  # token downsampling (gligen_ref/token_downsample.py): 1 = off
        self.grid: tuple[Any, Any] | None = None

    def forward(self, x: torch.Tensor, objs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: (B, Nv, C) float; objs = (tokens (B, Ng, D), gate () or (1,)) -> (B, Nv, C)."""
        tokens, gate = objs
        gate = gate.to(x.dtype)
        n_visual = x.shape[1]
        g = self.linear(tokens.to(x.dtype))
        h = self.norm1(torch.cat([x, g], dim=1))
        if self.kv_factor > 1:
            hv, hg = h[:, :n_visual, :], h[:, n_visual:, :]
            pooled = pool_tokens(hv, self.grid, self.kv_factor)
            kv = torch.cat([pooled, hg], dim=1)
            a = self.attn(hv, kv, pooled_key_bias(pooled, hg, self.kv_factor))
        else:
            a = self.attn(h)[:, :n_visual, :]
        x = x + gate * self.alpha_attn.tanh() * a
        x = x + gate * self.alpha_dense.tanh() * self.ff(self.norm2(x))
        return x
