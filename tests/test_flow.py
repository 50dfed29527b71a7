"""gligen_rt.core.flow: the request flow the reference and the runtime share, on torch and numpy."""

from __future__ import annotations

import numpy as np
import torch

from gligen_rt.core import flow as F


def _np_concat(xs):
    return np.concatenate(list(xs))


def test_same_arithmetic_on_torch_and_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    w = rng.standard_normal((4, 4)).astype(np.float32)

    def unet_np(sample, t):  # a stand-in UNet that tells the two CFG halves apart
        return (
            np.einsum("bchw,cd->bdhw", sample, w)
            * np.arange(1, sample.shape[0] + 1, dtype=np.float32)[:, None, None, None]
        )

    def unet_torch(sample, t):
        return torch.from_numpy(unet_np(sample.numpy(), t))

    for guidance in (7.5, 1.0):
        a = F.make_eps_fn(unet_np, guidance, _np_concat)(x, 10.0)
        b = F.make_eps_fn(unet_torch, guidance, torch.cat)(torch.from_numpy(x), 10.0).numpy()
        assert a.shape == x.shape and np.array_equal(a, b)
    e = unet_np(np.concatenate([x, x]), 0.0)
    assert np.array_equal(F.make_eps_fn(unet_np, 3.0, _np_concat)(x, 0.0), e[:2] + 3.0 * (e[2:] - e[:2]))

    context = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1)
    ctx = F.cfg_context(context, 2, _np_concat)
    assert np.array_equal(ctx[:, 0, 0], [0, 0, 3, 3])  # [uncond x n; cond x n]
    assert np.array_equal(ctx, F.cfg_context(torch.from_numpy(context), 2, torch.cat).numpy())
    c, t, ex = F.conditional_half(ctx, ctx, None, 2)
    assert np.array_equal(c[:, 0, 0], [3, 3]) and ex is None
    mask = np.array([1.0, 0.0], np.float32)
    assert np.array_equal(F.inpaint_blend(np.zeros(2, np.float32), np.ones(2, np.float32), mask), [1.0, 0.0])
