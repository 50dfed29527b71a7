"""The machine's limits and the work per UNet step: matmul peak and FLOPs (torch).

- ``matmul_peak``: GFLOP/s of square ``torch.matmul`` per dtype (the best of a few timed products
  after one warm-up, at n/4, n/2 and n), the ceiling every achieved GFLOP/s is compared with.
- ``openvino_matmul_peak``: the same for OpenVINO's CPU MatMul (f32 and bf16 inference hints, a
  constant right-hand side as in a FullyConnected layer): on a CPU without AMX OpenVINO's BF16
  kernels beat torch's, so the peak a configuration is measured against is the best of both.
- ``unet_flops``: FLOPs of one grounded and one plain UNet call (classifier-free-guidance batch 2 at
  the scenario's latent size) counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  reference model built on the meta device (shapes only: no weights, no time). Attention runs
  through SDPA's math backend while counting, so its two matmuls are counted too. Matrix FLOPs
  only (conv, mm, bmm, attention), 2 per multiply-add; norms and activations are not counted.
"""

from __future__ import annotations

import logging
import time

import torch

from gligen_rt.benchmarks.scenario import Scenario

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether the CPU has BF16 arithmetic (AVX512_BF16 or AMX-BF16)."""
    from gligen_rt.benchmarks.env import cpu_flags

    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_peak(
    n: int, device: str = "cpu", min_seconds: float = 1.0, max_reps: int = 10
) -> dict[str, float]:
    """GFLOP/s of square ``torch.matmul`` per precision available on ``device``: the best product at
    sizes n/4, n/2 and n (matrix units such as AMX can peak below the largest size)."""
    names = ["fp32"]
    if device == "cuda":
        names += ["fp16", "bf16"]
    elif cpu_has_bf16():
        names.append("bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict[str, float] = {}
    for name in names:
        best_rate = 0.0
        for size in sorted({max(n // 4, 64), max(n // 2, 64), n}):
            a = torch.randn(size, size, device=device).to(_DTYPES[name])
            b = torch.randn(size, size, device=device).to(_DTYPES[name])
            torch.matmul(a, b)
            sync()
            best, spent, reps = float("inf"), 0.0, 0
            while reps < 3 or (spent < min_seconds and reps < max_reps):
                tic = time.perf_counter()
                torch.matmul(a, b)
                sync()
                dt = time.perf_counter() - tic
                best, spent, reps = min(best, dt), spent + dt, reps + 1
            best_rate = max(best_rate, 2.0 * size**3 / best / 1e9)
            del a, b
        out[name] = best_rate
        log.info("matmul peak up to %d^3 %s: %.0f GFLOP/s", n, name, out[name])
    return out


def openvino_matmul_peak(n: int, min_seconds: float = 1.0, max_reps: int = 10) -> dict[str, float]:
    """GFLOP/s of an n x n @ n x n OpenVINO MatMul on the CPU, keyed ``fp32-openvino`` /
    ``bf16-openvino`` / ``int8-openvino`` (best of n/4, n/2, n); {} when openvino is not installed.

    int8: the pattern NNCF writes (FakeQuantize on the activation, INT8 weights times a per-channel
    scale), which the CPU plugin runs as an INT8 matrix product (VNNI / AMX-INT8): the peak of
    ``openvino-int8a``'s quantized layers, in GOP/s."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("openvino") is None:
        return {}
    import openvino as ov
    import openvino.opset13 as ops

    hints = {"fp32-openvino": "f32"}
    if cpu_has_bf16():
        hints["bf16-openvino"] = "bf16"
        hints["int8-openvino"] = "bf16"
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for name, hint in hints.items():
        best_rate = 0.0
        for size in sorted({max(n // 4, 64), max(n // 2, 64), n}):
            a = ops.parameter([size, size], np.float32, name="a")
            if name == "int8-openvino":
                lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
                x8 = ops.fake_quantize(a, lo, hi, lo, hi, 256)
                w8 = rng.integers(-127, 128, (size, size), dtype=np.int8)
                scale = ops.constant(np.full((1, size), 0.01, dtype=np.float32))
                b = ops.multiply(ops.convert(ops.constant(w8), np.float32), scale)
                model = ov.Model([ops.matmul(x8, b, False, False)], [a])
            else:
                b = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
                model = ov.Model([ops.matmul(a, b, False, False)], [a])
            compiled = ov.Core().compile_model(
                model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
            )
            request = compiled.create_infer_request()
            x = rng.standard_normal((size, size), dtype=np.float32)
            request.infer({0: x})
            best, spent, reps = float("inf"), 0.0, 0
            while reps < 3 or (spent < min_seconds and reps < max_reps):
                tic = time.perf_counter()
                request.infer({0: x})
                dt = time.perf_counter() - tic
                best, spent, reps = min(best, dt), spent + dt, reps + 1
            best_rate = max(best_rate, 2.0 * size**3 / best / 1e9)
            del request, compiled, model
        out[name] = best_rate
        log.info("OpenVINO matmul peak up to %d^3 %s: %.0f GFLOP/s", n, name, best_rate)
    return out


def unet_flops(scenario: Scenario) -> dict[str, int]:
    """FLOPs of one UNet call of each kind at the scenario's shapes (CFG batch 2).

    Keys: ``unet_grounded``, ``unet_plain`` (our model's two engines), ``sd_unet`` (diffusers' plain
    SD UNet of the same size, the control of the plain-phase target), ``fusers`` = grounded - plain;
    with the scenario's token downsampling, the same four counted with it as ``ours_<key>`` (what our
    engines and the control compute); and ``params_in_use`` (not FLOPs: the parameter count of the parts a generation uses).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from gligen_ref.model import GLIGENModel
    from gligen_rt.core.config import preset

    config = preset(scenario.model, scenario.modality)
    with torch.device("meta"):
        model = GLIGENModel(config).eval()
        sd_unet = sd_unet_like(config)
    lat = scenario.size // config.vae.downscale
    b, d = 2, config.context_dim
    with torch.device("meta"):
        x = torch.empty(b, config.unet.latent_channels, lat, lat)
        t = torch.empty(1)
        ctx = torch.empty(b, 77, d)
        tokens = torch.empty(b, config.num_tokens, d)
        gate = torch.ones(1)
        extra = torch.empty(b, config.extra_channels, lat, lat) if config.extra_channels else None

    def count(fn) -> int:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
        return int(fc.get_total_flops())

    out = {
        "unet_grounded": count(lambda: model.unet_grounded(x, t, ctx, tokens, gate, extra)),
        "unet_plain": count(lambda: model.unet_plain(x, t, ctx, extra)),
        "sd_unet": count(lambda: sd_unet(x, t, encoder_hidden_states=ctx)),
    }
    out["fusers"] = out["unet_grounded"] - out["unet_plain"]
    if scenario.token_downsample > 1:  # our engines (and the control) do less: count theirs too
        import types

        from gligen_ref.token_downsample import token_downsampled

        f = scenario.token_downsample
        with token_downsampled(model, f), token_downsampled(types.SimpleNamespace(unet=sd_unet), f):
            out["ours_unet_grounded"] = count(lambda: model.unet_grounded(x, t, ctx, tokens, gate, extra))
            out["ours_unet_plain"] = count(lambda: model.unet_plain(x, t, ctx, extra))
            out["ours_sd_unet"] = count(lambda: sd_unet(x, t, encoder_hidden_states=ctx))
        out["ours_fusers"] = out["ours_unet_grounded"] - out["ours_unet_plain"]
    out["params_in_use"] = params_in_use(model)
    log.info("FLOPs per UNet call: %s", {k: f"{v / 1e9:.1f} G" for k, v in out.items()})
    return out


def params_in_use(model: torch.nn.Module) -> int:
    """Parameters a generation uses (every part but the VAE encoder, which only inpainting needs):
    the weights in use, counted once (a runtime that holds two UNet graphs holds more)."""
    skip = () if model.config.inpaint else ("vae.encoder.", "vae.quant_conv.")
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def sd_unet_like(config) -> torch.nn.Module:
    """diffusers' plain SD UNet2DConditionModel (no fusers, no position net) of ``config``'s size."""
    from diffusers import UNet2DConditionModel

    u = config.unet
    return UNet2DConditionModel(
        sample_size=config.default_size // config.vae.downscale,
        in_channels=u.latent_channels,
        out_channels=u.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels)
        ),
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.heads,
        cross_attention_dim=u.cross_attention_dim,
        norm_num_groups=u.norm_num_groups,
    ).eval()
