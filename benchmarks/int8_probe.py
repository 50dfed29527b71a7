"""INT8 activations on the CPU, measured before any build ships them: is a UNet step faster than
BF16, and does the image hold 40 dB against FP32?

    python -m gligen_rt.benchmarks.int8_probe --engines DIR --out-dir benchmarks/results/int8_activations

DIR is an engine folder holding ``unet_plain`` and ``vae_decoder`` exported at one size, e.g.
``gligen-rt export --model sd14 --engines unet_plain vae_decoder --height 256 --width 256
--min-size 256 --max-size 256 --max-batch 1 --out DIR``. The probe runs the plain-phase path of our
pipeline (CFG batch 2, PLMS, guidance 7.5, the VAE decode in FP32) with the UNet compiled five ways,
each with our backend's compile properties (engines/openvino.compile_config):

| variant | weights | activations | how |
|---|---|---|---|
| fp32   | FP32 | FP32 | the reference every other variant is compared with |
| bf16   | BF16 | BF16 | our ``openvino-bf16`` |
| int8-w | INT8 | BF16 | our ``openvino-int8`` (NNCF weight compression) |
| w8a8   | INT8 | INT8 | ``nncf.quantize`` (TRANSFORMER preset): every MatMul and convolution |
| w8a8-sdpa | INT8 | INT8, but BF16 in the attention products (Q K^T, P V) | the same, attention left to the fused kernel |
| w8a8-split | INT8 | as w8a8-sdpa, and BF16 into the up blocks' shortcut convolutions, conv_in, conv_out | engines/openvino.py ``split_convolutions``: what ``openvino-int8a`` builds |
| hybrid | INT8 | INT8 in convolutions, BF16 in MatMuls | NNCF's Stable Diffusion recipe |

Calibration inputs are the UNet's own inputs along FP32 trajectories from other noise seeds and
other text contexts than the measured one (random weights: the contexts are N(0, 1) like a final
layer norm's output, at the text encoder's shape). Reported per variant: quantization time, UNet step time (median of 5), eps
relative L2 error against FP32 on held-out inputs, and the image's PSNR against the FP32 image after
the whole trajectory. One JSON line per run goes to OUT/int8_probe.jsonl, a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("fp32", "bf16", "int8-w", "w8a8", "w8a8-sdpa", "w8a8-split", "hybrid")


def _inputs(model: Any) -> dict[str, Any]:
    return {p.get_any_name(): p for p in model.inputs}


def _trajectory(unet: Any, noise: np.ndarray, contexts: np.ndarray, steps: int, guidance: float, record=None):
    """PLMS with CFG on an OpenVINO compiled UNet; returns the final latents (1, 4, h, w)."""
    from gligen_rt.core.schedulers import make_scheduler

    request = unet.create_infer_request()
    sched = make_scheduler("plms", steps)
    t_type = unet.input("timestep").get_element_type().to_dtype()

    def eps_fn(x: np.ndarray, t: float) -> np.ndarray:
        feed = {
            "sample": np.concatenate([x, x]).astype(np.float32),
            "timestep": np.array([t], dtype=t_type),
            "context": contexts,
        }
        if record is not None:
            record.append({k: v.copy() for k, v in feed.items()})
        out = request.infer(feed)[0]
        uncond, cond = out[:1], out[1:]
        return uncond + guidance * (cond - uncond)

    x = noise * sched.init_noise_sigma
    for i in range(len(sched)):
        x = sched.step(x, i, eps_fn)
    return x


def _image(vae: Any, latents: np.ndarray) -> np.ndarray:
    img = vae.create_infer_request().infer({0: latents.astype(np.float32)})[0]
    return np.clip((img[0].transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _quantize(variant: str, model: Any, calibration: list[dict[str, np.ndarray]]) -> Any:
    import nncf

    from gligen_rt.engines.openvino import attention_products, quantize_int8

    if variant == "int8-w":
        from gligen_rt.engines.openvino import compress_weights_int8

        return compress_weights_int8(model)
    dataset = nncf.Dataset(calibration)
    if variant == "w8a8":
        return nncf.quantize(
            model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration)
        )
    if variant == "w8a8-split":  # what openvino-int8a builds
        return quantize_int8(model, calibration)
    if variant == "w8a8-sdpa":
        ignored = nncf.IgnoredScope(names=attention_products(model))
        return nncf.quantize(
            model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=ignored,
        )
    if variant == "hybrid":
        compressed = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            ignored_scope=nncf.IgnoredScope(types=["Convolution"]),
        )
        return nncf.quantize(
            compressed,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(types=["MatMul"]),
            advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1),
        )
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--engines", type=Path, required=True, help="folder with unet_plain.onnx and vae_decoder.onnx"
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--size", type=int, default=None, help="image size in px (default: the UNet's static size)"
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument(
        "--calibration-runs", type=int, default=2, help="FP32 trajectories recorded for calibration"
    )
    p.add_argument(
        "--calibration-samples", type=int, default=12, help="UNet calls kept from them (evenly spread)"
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variants {unknown}: choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    for name in ("unet_plain", "vae_decoder"):
        if not (args.engines / f"{name}.onnx").is_file():
            print(f"error: {args.engines / name}.onnx is missing: export it (see --help)", file=sys.stderr)
            return 2

    import openvino as ov

    from gligen_rt.benchmarks.env import cpu_model
    from gligen_rt.core.imageio import psnr
    from gligen_rt.engines.openvino import compile_config, int8_kernels

    core = ov.Core()
    source = core.read_model(str(args.engines / "unet_plain.onnx"))
    shapes = {n: p.get_partial_shape() for n, p in _inputs(source).items()}
    if args.size is not None:
        h = w = args.size // 8
    elif shapes["sample"][2].is_static and shapes["sample"][3].is_static:
        h, w = shapes["sample"][2].get_length(), shapes["sample"][3].get_length()
    else:
        print("error: the UNet's size is dynamic: give --size PX", file=sys.stderr)
        return 2
    tokens, dim = shapes["context"][1].get_length(), shapes["context"][2].get_length()
    source.reshape({"sample": [2, 4, h, w], "timestep": [1], "context": [2, tokens, dim]})
    vae = core.compile_model(
        str(args.engines / "vae_decoder.onnx"), "CPU", compile_config("f32", threads=args.threads)
    )

    def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((1, 4, h, w), dtype=np.float32)
        return noise, rng.standard_normal((2, tokens, dim), dtype=np.float32)

    fp32 = core.compile_model(source, "CPU", compile_config("f32", threads=args.threads))
    recorded: list[dict[str, np.ndarray]] = []
    for seed in range(1, 1 + args.calibration_runs):
        _trajectory(fp32, *draw(seed), args.steps, args.guidance, record=recorded)
    pick = np.linspace(0, len(recorded) - 1, min(args.calibration_samples, len(recorded))).round().astype(int)
    calibration = [recorded[i] for i in sorted(set(pick))]
    held_out: list[dict[str, np.ndarray]] = []
    noise, contexts = draw(1000)
    want = _trajectory(fp32, noise, contexts, args.steps, args.guidance, record=held_out)
    held_out = held_out[:: max(1, len(held_out) // 4)][:4]
    want_eps = [fp32.create_infer_request().infer(x)[0].copy() for x in held_out]
    want_image = _image(vae, want)
    del fp32

    rows = []
    for variant in variants:
        tic = time.perf_counter()
        model = _quantize(variant, source.clone(), calibration)
        quantize_s = time.perf_counter() - tic
        hint = "f32" if variant == "fp32" else "bf16"
        compiled = core.compile_model(model, "CPU", compile_config(hint, threads=args.threads))
        request = compiled.create_infer_request()
        errors = []
        for x, e in zip(held_out, want_eps):
            got = request.infer(x)[0]
            errors.append(float(np.linalg.norm(got - e) / np.linalg.norm(e)))
        times = []
        for x in (held_out * 2)[:6]:
            t0 = time.perf_counter()
            request.infer(x)
            times.append(time.perf_counter() - t0)
        image = _image(vae, _trajectory(compiled, noise, contexts, args.steps, args.guidance))
        value = psnr(image[None], want_image[None])
        rows.append(
            {
                "variant": variant,
                "quantize_s": round(quantize_s, 1),
                "step_s": round(statistics.median(times[1:]), 4),
                "eps_rel_l2": round(max(errors), 5),
                "psnr_db": None if not np.isfinite(value) else round(float(value), 2),
                "int8_kernels": int8_kernels(compiled),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del compiled, request, model
    base = next((r["step_s"] for r in rows if r["variant"] == "bf16"), None)
    record = {
        "cpu": cpu_model(),
        "size": [8 * h, 8 * w],
        "steps": args.steps,
        "guidance": args.guidance,
        "calibration_samples": len(calibration),
        "openvino": ov.__version__,
        "command": "python -m gligen_rt.benchmarks.int8_probe "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "variants": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "int8_probe.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\n{record['cpu']}, {8 * h}x{8 * w} px, {args.steps} PLMS steps, CFG {args.guidance}")
    print(
        "| variant | quantize | UNet step | vs bf16 | eps rel. L2 vs FP32 | image PSNR vs FP32 | INT8 kernels |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{base / r['step_s']:.2f}x" if base else "-"
        ps = "identical" if r["psnr_db"] is None else f"{r['psnr_db']:.1f} dB"
        print(
            f"| {r['variant']} | {r['quantize_s']:.0f} s | {r['step_s'] * 1000:.0f} ms | {speed} | "
            f"{r['eps_rel_l2']:.4f} | {ps} | {r['int8_kernels']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
