"""Fused gated self-attention: every GLIGEN fuser rewritten into one export-friendly attention pattern.

The reference fuser (gligen_ref/fuser.py, notation there) computes

    h = norm1([x; linear(tokens)])                      (B, Nv+Ng, C)
    x = x + gate * tanh(alpha_attn)  * attn(h)[:, :Nv]
    x = x + gate * tanh(alpha_dense) * ff(norm2(x))

`FusedGatedSelfAttention` computes the same values with less work and a graph that attention
fusers recognise:

- queries only for the Nv visual tokens (the original keeps only the first Nv outputs, so the
  queries of the grounding tokens are wasted work: dropping them is exact); LayerNorm is per token,
  so ``norm1([x; g]) = [norm1(x); norm1(g)]`` and no Slice is needed;
- the softmax scale d_head^-0.5 folded into W_q;
- tanh(alpha_attn) folded into ``to_out`` (weight and bias), tanh(alpha_dense) into ``ff.net.2``;
  GEGLU's projection split into its value and gate halves (two MatMuls, no Split/Slice);
  the per-step ``gate`` stays one runtime scalar: ``x + gate * out``;
- attention as ``MatMul(q (B,h,Nv,d), k^T (B,h,d,N)) -> Softmax -> MatMul(v (B,h,N,d))`` with nothing
  between the matmuls (the multi-head attention pattern of TensorRT's MHA fusion and ONNX Runtime's
  attention fusion), or ``F.scaled_dot_product_attention(scale=1.0)`` for the opset-23 ``Attention`` op.

With token downsampling (gligen_ref/token_downsample.py: the fuser's ``kv_factor`` > 1, carried over)
keys and values come from ``[pool(norm1(x)); norm1(g)]`` and the scores get the pooled keys'
``log(kv_factor**2)`` as an Add before the Softmax (``attn_mask`` in the SDPA form).

`fuse_fusers(model)` returns a copy of the model with every fuser replaced; the original is not
touched (the copy shares every other parameter with it, so no memory is duplicated).
"""

from __future__ import annotations

import copy
import logging
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from gligen_ref.fuser import GatedSelfAttention
from gligen_ref.token_downsample import pool_tokens, pooled_key_bias

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

# Attention forms of the fused fuser.
MATMUL = "matmul"  # MatMul -> Softmax -> MatMul (TensorRT MHA / ORT attention fusion pattern)
SDPA = "sdpa"  # F.scaled_dot_product_attention(scale=1): the ONNX Attention op at opset >= 23
ATTENTION_FORMS = (MATMUL, SDPA)


def _linear_like(src: nn.Linear, scale: torch.Tensor | float = 1.0) -> nn.Linear:
    """A new Linear with ``scale * src.weight`` and ``scale * src.bias`` (float32, fresh tensors)."""
    out = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
    with torch.no_grad():
        out.weight.copy_(src.weight.detach() * scale)
        if src.bias is not None:
            out.bias.copy_(src.bias.detach() * scale)
    return out.to(src.weight.dtype)


def _rows(src: nn.Linear, start: int, stop: int) -> nn.Linear:
    """Output rows ``start:stop`` of ``src`` as a new Linear (the two halves of GEGLU's projection)."""
    out = nn.Linear(src.in_features, stop - start, bias=src.bias is not None)
    with torch.no_grad():
        out.weight.copy_(src.weight.detach()[start:stop])
        if src.bias is not None:
            out.bias.copy_(src.bias.detach()[start:stop])
    return out.to(src.weight.dtype)


class FusedGatedSelfAttention(nn.Module):
    """The GLIGEN fuser with folded constants (see the module docstring). Same call as the original.

    Built from a `GatedSelfAttention` (its weights are copied, the source is not modified).
    """

    def __init__(self, fuser: GatedSelfAttention, form: str = MATMUL) -> None:
        super().__init__()
        if form not in ATTENTION_FORMS:
            raise ValueError(f"attention form {form!r} is not one of {ATTENTION_FORMS}")
        attn = fuser.attn
        self.form = form
        self.n_heads = attn.n_heads
        self.d_head = attn.d_head
        self.linear = copy.deepcopy(fuser.linear)
        self.norm1 = copy.deepcopy(fuser.norm1)
        self.norm2 = copy.deepcopy(fuser.norm2)
        with torch.no_grad():
            gate_attn = fuser.alpha_attn.detach().tanh()
            gate_dense = fuser.alpha_dense.detach().tanh()
        self.to_q = _linear_like(attn.to_q, attn.d_head**-0.5)
        self.to_k = _linear_like(attn.to_k)
        self.to_v = _linear_like(attn.to_v)
        self.to_out = _linear_like(attn.to_out[0], gate_attn)
        proj = fuser.ff.net[0].proj  # GEGLU: first half value, second half gate
        inner = proj.out_features // 2
        self.ff_value = _linear_like(_rows(proj, 0, inner))
        self.ff_gate = _linear_like(_rows(proj, inner, 2 * inner))
        self.ff_out = _linear_like(fuser.ff.net[2], gate_dense)
        self.kv_factor = fuser.kv_factor  # token downsampling; ``grid`` set by the block's pre-hook
        self.grid = None

    def _attention(self, xn: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """xn (B, Nv, C) queries' input, h (B, N, C) keys'/values' input, ``bias`` (B, 1, 1, N) added
        to the scores -> (B, Nv, C) before to_out."""
        b = xn.shape[0]
        heads, d = self.n_heads, self.d_head
        q = self.to_q(xn).reshape(b, -1, heads, d).transpose(1, 2)  # (B, h, Nv, d), pre-scaled
        if self.form == SDPA:
            k = self.to_k(h).reshape(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
            v = self.to_v(h).reshape(b, -1, heads, d).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            k_t = self.to_k(h).reshape(b, -1, heads, d).permute(0, 2, 3, 1)  # (B, h, d, N)
            v = self.to_v(h).reshape(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
            scores = torch.matmul(q, k_t)
            if bias is not None:
                scores = scores + bias
            out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, h, Nv, d)
        return out.transpose(1, 2).reshape(b, -1, heads * d)

    def forward(self, x: torch.Tensor, objs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: (B, Nv, C) float; objs = (tokens (B, Ng, D), gate () or (1,)) -> (B, Nv, C)."""
        tokens, gate = objs
        if gate.dtype != x.dtype:  # no Cast node in the graph when the dtypes agree
            gate = gate.to(x.dtype)
        if tokens.dtype != x.dtype:
            tokens = tokens.to(x.dtype)
        g = self.linear(tokens)
        xn = self.norm1(x)
        gn = self.norm1(g)
        if self.kv_factor > 1:
            pooled = pool_tokens(xn, self.grid, self.kv_factor)
            a = self._attention(
                xn, torch.cat([pooled, gn], dim=1), pooled_key_bias(pooled, gn, self.kv_factor)
            )
        else:
            a = self._attention(xn, torch.cat([xn, gn], dim=1))  # = norm1([x; g]): LayerNorm is per token
        x = x + gate * self.to_out(a)
        hn = self.norm2(x)
        return x + gate * self.ff_out(self.ff_value(hn) * F.gelu(self.ff_gate(hn)))


def fuse_fusers(model: M, form: str = MATMUL) -> M:
    """A copy of ``model`` with every `GatedSelfAttention` replaced by a `FusedGatedSelfAttention`.

    The original is not modified. The copy shares every parameter and buffer outside the fusers with
    the original (no memory duplicated); the fused fusers own new, folded tensors.

    Raises ValueError when the model has no fuser.
    """
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    fusers = [(name, m) for name, m in model.named_modules() if isinstance(m, GatedSelfAttention)]
    if not fusers:
        raise ValueError(f"{type(model).__name__} has no GatedSelfAttention to fuse")
    for _, m in fusers:  # the fusers themselves are rebuilt, never deep-copied
        shared[id(m)] = None
    fused = copy.deepcopy(model, memo=shared)
    for name, old in fusers:
        parent_name, _, child = name.rpartition(".")
        parent = fused.get_submodule(parent_name) if parent_name else fused
        setattr(parent, child, FusedGatedSelfAttention(old, form).to(next(old.parameters()).device))
    log.debug("fused %d gated self-attention blocks (%s form)", len(fusers), form)
    return fused


def count_fusers(model: nn.Module) -> tuple[int, int]:
    """(reference fusers, fused fusers) in ``model``."""
    mods = list(model.modules())
    return (
        sum(isinstance(m, GatedSelfAttention) for m in mods),
        sum(isinstance(m, FusedGatedSelfAttention) for m in mods),
    )
