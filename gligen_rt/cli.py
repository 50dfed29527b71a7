"""`gligen-rt` command line: generate, export, build, inspect, bench.

Every user error (GligenError) ends as one line on stderr and a non-zero exit, with nothing
written. Heavy imports (torch, backends) happen inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from gligen_rt.core.errors import GligenError, RequestError

log = logging.getLogger("gligen_rt")


# -- argument parsing helpers -------------------------------------------------------------------


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RequestError(
            f"{what} {text!r} is not {n} comma-separated numbers, e.g. 0.1,0.2,0.5,0.6"
        ) from None
    if len(values) != n:
        raise RequestError(f"{what} {text!r} has {len(values)} numbers, expected {n}")
    if not all(math.isfinite(v) for v in values):
        raise RequestError(f"{what} {text!r} contains NaN or Inf: give finite numbers")
    return values


def add_request_args(p: argparse.ArgumentParser) -> None:
    """The request flags shared by every backend's `generate`."""
    g = p.add_argument_group("request")
    g.add_argument("--request", type=Path, help="JSON request file (any modality; flags below override it)")
    g.add_argument("--prompt", help="the caption")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--phrase", action="append", default=[], help="grounded phrase (repeat; pairs with --box)")
    g.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in [0,1] (repeat)")
    g.add_argument("--image", action="append", default=[], help="reference image per box (text-image models)")
    g.add_argument("--style-image", default=None, help="style reference image (text-image models)")
    g.add_argument(
        "--condition", default=None, help="condition map (hed/canny/depth/normal image, sem label map)"
    )
    g.add_argument("--inpaint-image", default=None, help="image to inpaint (inpainting models)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--sampler", choices=["plms", "ddim", "dpmpp_2m", "euler"], default=None)
    sched = g.add_mutually_exclusive_group()
    sched.add_argument(
        "--beta", type=float, default=None, help="fraction of steps with grounding (diffusers)"
    )
    sched.add_argument(
        "--alpha-type", default=None, help="a,b,c: grounded, decaying, plain fractions (original)"
    )
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--num-images", type=int, default=None)


def request_from_args(args: argparse.Namespace):
    """Flags (and an optional JSON file) -> one validated-later GenerationRequest."""
    import dataclasses

    from gligen_rt.core.request import GenerationRequest, GroundedObject, request_from_json

    base = request_from_json(args.request) if args.request else None
    if base is None and args.prompt is None:
        raise RequestError('give --prompt "..." or --request FILE.json')
    changes: dict = {}
    for name in (
        "prompt",
        "negative_prompt",
        "seed",
        "steps",
        "guidance",
        "sampler",
        "beta",
        "height",
        "width",
        "num_images",
        "condition",
        "inpaint_image",
        "style_image",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.alpha_type is not None:
        changes["alpha_type"] = _floats(args.alpha_type, 3, "--alpha-type")
    if args.box or args.phrase or args.image:
        n = len(args.box)
        if args.phrase and len(args.phrase) != n:
            raise RequestError(f"{len(args.phrase)} --phrase for {n} --box: give one phrase per box")
        if args.image and len(args.image) != n:
            raise RequestError(f"{len(args.image)} --image for {n} --box: give one image per box")
        if n == 0:
            raise RequestError("--phrase/--image given without --box: give one --box x0,y0,x1,y1 per object")
        changes["objects"] = tuple(
            GroundedObject(
                box=_floats(b, 4, "--box"),
                phrase=args.phrase[i] if args.phrase else None,
                image=args.image[i] if args.image else None,
            )
            for i, b in enumerate(args.box)
        )
    if base is None:
        return GenerationRequest(**changes)
    return dataclasses.replace(base, **changes)


# -- subcommands ------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from gligen_rt.core.imageio import draw_overlay, output_paths, save_png

    request = request_from_args(args)
    if args.backend is None:  # the reference for a model or checkpoint; ONNX Runtime for engines
        args.backend = "torch" if args.engines is None else "ort-cpu"
    if args.backend == "torch" and args.engines is None:
        pipe = _reference_pipeline(args)
        config = pipe.config
        from gligen_rt.core.request import validate

        validate(request, config.modality, config.inpaint, multiple=64)
        log.info("request: %s", request)
        bar = _progress(request.steps if request.steps else 50)
        result = pipe(request, on_step=lambda i, n: bar.update(1))
        bar.close()
    else:
        from gligen_rt.runtime.cli import run_generate

        result = run_generate(args, request)
    paths = output_paths(args.out, len(result.images))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, result.images):
        save_png(path, image)
        print(path)
        if args.overlay:
            ov = Path(path).with_name(Path(path).stem + "_overlay.png")
            save_png(ov, draw_overlay(image, request.objects, request.persons))
            print(ov)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items())
    log.info("timings: %s", timings)
    return 0


def _reference_pipeline(args: argparse.Namespace):
    from gligen_ref.pipeline import ReferencePipeline

    if args.checkpoint is not None:
        return ReferencePipeline.from_checkpoint(
            args.checkpoint,
            sd_conv_in=args.sd_conv_in,
            clip_vision=args.clip_vision,
            projection_matrix=args.projection_matrix,
            modality=args.modality,
        )
    return ReferencePipeline.from_preset(
        resolve_model(args.model), args.modality or "text-box", args.inpaint, seed=args.model_seed
    )


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="denoising", unit="step", leave=False, disable=not sys.stderr.isatty())


def resolve_model(name: str) -> str:
    """The preset a --model name stands for: `tiny` is the embedded default (for now tiny-random)."""
    return "tiny-random" if name == "tiny" else name


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        default="tiny",
        choices=["tiny", "tiny-random", "sd14"],
        help="tiny: the embedded default model; tiny-random: random weights of the tiny size, every "
        "modality (tests); sd14: random weights at SD-1.4 size (default: %(default)s)",
    )
    src.add_argument("--checkpoint", type=Path, help="original .bin/.pth file or diffusers folder")
    g.add_argument(
        "--modality",
        default=None,
        choices=["text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem"],
        help="preset modality (with --model), or canny/depth disambiguation for a checkpoint",
    )
    g.add_argument("--inpaint", action="store_true", help="preset inpainting model (with --model)")
    g.add_argument("--model-seed", type=int, default=0, help="seed of the preset's random weights")
    g.add_argument("--sd-conv-in", type=Path, default=None, help="SD-1.4 conv_in for spatial checkpoints")
    g.add_argument(
        "--clip-vision", type=Path, default=None, help="CLIP vision folder for original text-image files"
    )
    g.add_argument(
        "--projection-matrix", type=Path, default=None, help="projection_matrix for text-image files"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gligen-rt", description="Fast, trustworthy GLIGEN inference.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a grounded request")
    add_model_args(gen)
    add_request_args(gen)
    gen.add_argument("--engines", type=Path, default=None, help="engine folder (from `gligen-rt export`)")
    gen.add_argument(
        "--backend",
        default=None,
        choices=[
            "torch",
            "ort-cpu",
            "ort-cuda",
            "ort-trt",
            "tensorrt",
            "tensorrt-rtx",
            "openvino",
            "openvino-bf16",
        ],
        help="torch (the PyTorch reference; default without --engines) or an engine backend (default ort-cpu)",
    )
    gen.add_argument(
        "--single-unet",
        action="store_true",
        help="run plain steps on the grounded UNet with gate 0 (one UNet in memory, for Jetsons)",
    )
    gen.add_argument("--out", type=Path, default=Path("out.png"))
    gen.add_argument(
        "--overlay", action="store_true", help="also write the boxes and labels drawn on the image"
    )
    gen.set_defaults(func=cmd_generate)

    from gligen_rt.benchmarks.cli import register as register_bench
    from gligen_rt.engines.build import register as register_build
    from gligen_rt.export.cli import register as register_export
    from gligen_rt.runtime.cli import register_inspect
    from gligen_rt.serve.cli import register as register_serve

    try:  # the training stages need the reference package (absent in a runtime-only install)
        from gligen_ref.train.cli import register as register_train
    except ImportError:
        register_train = None

    register_export(sub)
    register_build(sub)
    register_bench(sub)
    register_inspect(sub)
    register_serve(sub)
    if register_train is not None:
        register_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what ran, for records such as the benchmark's command line
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except GligenError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
