"""`gligen-rt` command line: generate, export, build, inspect, bench.

Every user error (GligenError, or a flag argparse rejects) ends as one line on stderr and exit
status 2, with nothing written. The request, the output names and contradictory flags are checked
before anything heavy is imported; torch and the backends are imported inside the subcommand that
needs them. Parser and request flags: cli_parser.py, cli_request.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from gligen_rt.cli_parser import MODEL_NAMES, Parser, add_verbose, checkpoint_path
from gligen_rt.cli_request import add_request_args, planned_outputs, request_from_args, summary
from gligen_rt.core.backends import BACKENDS
from gligen_rt.core.errors import GligenError, RequestError

log = logging.getLogger("gligen_rt")


# -- subcommands ------------------------------------------------------------------------------


# Backends that run on an NVIDIA GPU: the driver is asked first (runtime/gpu.py).
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt", "tensorrt-rtx")


def check_sources(args: argparse.Namespace) -> None:
    """Refuse flags that contradict the model source in one line; default the source to --model tiny."""
    given = [f for f, v in (("--model", args.model), ("--checkpoint", args.checkpoint)) if v is not None]
    if args.engines is not None:
        if given:
            raise RequestError(
                f"{given[0]} and --engines both name the model: the engine folder {str(args.engines)!r} "
                f"holds its own; drop {given[0]}"
            )
        for flag, value in (
            ("--modality", args.modality),
            ("--inpaint", args.inpaint or None),
            ("--model-seed", args.model_seed),
        ):
            if value is not None:
                raise RequestError(
                    f"{flag} does not apply to --engines: the folder's model is fixed (see "
                    f"`gligen-rt inspect {args.engines}`); drop {flag}"
                )
    if args.checkpoint is not None:
        for flag, value in (("--inpaint", args.inpaint or None), ("--model-seed", args.model_seed)):
            if value is not None:
                raise RequestError(
                    f"{flag} applies to --model presets; the checkpoint decides its own model: drop {flag}"
                )
    else:
        for flag in ("sd_conv_in", "clip_vision", "projection_matrix"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                raise RequestError(
                    f"{name} completes an original --checkpoint file: drop it or give --checkpoint"
                )
    if args.engines is None and args.checkpoint is None and args.model is None:
        args.model = "tiny"
    check_trained_tiny(args)
    if args.model_seed is None:
        args.model_seed = 0


def _precheck(args: argparse.Namespace, request) -> list[str]:
    """Everything that can be checked before a model is loaded; returns the output paths."""
    from gligen_rt.core.request import validate, validate_fields

    if args.model is not None and args.engines is None:  # a preset: its modality is known now
        validate(request, args.modality or "text-box", bool(args.inpaint), multiple=64)
    else:
        validate_fields(request, multiple=64)
    paths = planned_outputs(args.out, request, args.overlay, args.request)
    if args.backend in GPU_BACKENDS:
        from gligen_rt.engines.gpu import require_gpu

        require_gpu(f"--backend {args.backend}")
    return paths


def cmd_generate(args: argparse.Namespace) -> int:
    check_sources(args)
    from gligen_rt.runtime.cli import model_guidance

    request = request_from_args(args, guidance=model_guidance(args))
    if args.backend is None:  # ONNX Runtime where engines exist (a folder, the shipped tiny), else torch
        args.backend = "ort-cpu" if args.engines is not None or args.model == "tiny" else "torch"
    _precheck(args, request)
    source = args.engines or args.checkpoint or f"--model {args.model}"
    log.info("generate (%s, backend %s): %s", source, args.backend, summary(request))
    log.debug("request: %r", request)
    if args.backend == "torch" and args.engines is None:
        from gligen_rt.core.progress import progress

        pipe = _reference_pipeline(args)
        config = pipe.config
        from gligen_rt.core.request import validate

        validate(request, config.modality, config.inpaint, multiple=64)
        bar = progress(total=request.steps, desc="denoising", unit="step")
        try:
            result = pipe(request, on_step=lambda i, n: bar.update(1))
        finally:
            bar.close()
        modality = config.modality
    else:
        from gligen_rt.runtime.cli import run_generate

        result, modality = run_generate(args, request)
    _save(args, request, result.images, modality)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items())
    log.info("timings: %s", timings)
    return 0


def _save(args: argparse.Namespace, request, images, modality) -> None:
    """Write the images (and overlays) under the planned names; prints each path (the output)."""
    from gligen_rt.core.imageio import (
        condition_preview,
        draw_overlay,
        output_paths,
        overlay_path,
        save_image,
    )

    paths = output_paths(args.out, len(images))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    condition = None
    if args.overlay and request.condition is not None and modality is not None:
        h, w = images[0].shape[:2]
        condition = condition_preview(request.condition, str(getattr(modality, "value", modality)), h, w)
    for path, image in zip(paths, images):
        save_image(path, image)
        print(path)
        if args.overlay:
            ov = overlay_path(path)
            save_image(ov, draw_overlay(image, request.objects, persons=request.persons, condition=condition))
            print(ov)


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
    if args.model == "tiny":
        from gligen_rt.runtime.tiny import trained_tiny_dir

        return ReferencePipeline.from_checkpoint(trained_tiny_dir() / "model")
    return ReferencePipeline.from_preset(
        args.model, args.modality or "text-box", args.inpaint, seed=args.model_seed
    )


def check_trained_tiny(args: argparse.Namespace) -> None:
    """`--model tiny` is the shipped trained text-box model: refuse what only a random preset has."""
    if getattr(args, "model", None) != "tiny":
        return
    from gligen_rt.runtime.tiny import TRAINED_TINY_MODALITY

    modality = getattr(args, "modality", None)
    if modality not in (None, TRAINED_TINY_MODALITY.value):
        raise RequestError(
            f"--model tiny is trained for {TRAINED_TINY_MODALITY.value} only: use --model tiny-random "
            f"for --modality {modality} (random weights)"
        )
    if getattr(args, "inpaint", False):
        raise RequestError(
            "--model tiny has no inpainting model: use --model tiny-random --inpaint (random weights)"
        )
    if getattr(args, "model_seed", None) not in (None, 0):
        raise RequestError("--model-seed seeds random weights; --model tiny is trained: drop --model-seed")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of --model, --checkpoint, --engines; default --model tiny)")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        default=None,
        choices=list(MODEL_NAMES),
        help="tiny: the embedded default, a trained tiny text-box model (gligen_rt/models/tiny/README.md); "
        "tiny-random: random weights of the tiny size, every modality and --inpaint (tests, trying "
        "flags); sd14: random weights at SD-1.4 size",
    )
    src.add_argument(
        "--checkpoint",
        type=checkpoint_path,
        help="original .bin/.pth file or diffusers folder (a file or folder, never a model name)",
    )
    g.add_argument(
        "--modality",
        default=None,
        choices=["text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem"],
        help="the preset's modality with --model (default: text-box), or canny/depth for a checkpoint",
    )
    g.add_argument("--inpaint", action="store_true", help="the preset's inpainting model (with --model)")
    g.add_argument(
        "--model-seed", type=int, default=None, help="seed of the preset's random weights (default: 0)"
    )
    g.add_argument("--sd-conv-in", type=Path, default=None, help="SD-1.4 conv_in for spatial checkpoints")
    g.add_argument(
        "--clip-vision", type=Path, default=None, help="CLIP vision folder for original text-image files"
    )
    g.add_argument(
        "--projection-matrix", type=Path, default=None, help="projection_matrix for text-image files"
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where --model tiny-random's engines are exported once for engine backends (default: "
        "$GLIGEN_RT_CACHE, else ~/.cache/gligen-rt)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gligen-rt", description="Fast, trustworthy GLIGEN inference.")
    add_verbose(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate images from a grounded request",
        description="Generate images from a grounded request. With --model or --checkpoint the PyTorch "
        "reference runs (backend torch); with --engines, or another --backend, the engine runtime.",
    )
    add_model_args(gen)
    add_request_args(gen)
    run = gen.add_argument_group("run and output")
    run.add_argument("--engines", type=Path, default=None, help="engine folder (from `gligen-rt export`)")
    run.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="torch: the PyTorch reference (default with --checkpoint, --model tiny-random/sd14); an "
        "engine backend (default ort-cpu with --engines and --model tiny, whose engines ship with the "
        "package; with --model tiny-random its engines are exported once into --cache-dir)",
    )
    run.add_argument(
        "--device",
        type=int,
        default=0,
        metavar="N",
        help="CUDA device of the GPU backends (ort-cuda, ort-trt, tensorrt, tensorrt-rtx; default 0)",
    )
    run.add_argument(
        "--low-memory",
        action="store_true",
        help="load the text/image encoders and the VAE per stage and decode in tiles; the UNet stays (Jetsons)",
    )
    run.add_argument(
        "--single-unet",
        action="store_true",
        help="run plain steps on the grounded UNet with gate 0 (one UNet in memory, for Jetsons)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("out.png"),
        help="output image; .png, .jpg or .webp sets the format; with --num-images N: OUT_0.png .. OUT_{N-1}.png",
    )
    run.add_argument(
        "--overlay",
        action="store_true",
        help="also write OUT_overlay.png: boxes with their phrases, keypoint skeletons, or the "
        "condition map blended over the image",
    )
    gen.set_defaults(func=cmd_generate)

    from gligen_rt.benchmarks.cli import register as register_bench
    from gligen_rt.benchmarks.grounding import register as register_eval
    from gligen_rt.engines.build import register as register_build
    from gligen_rt.export.cli import register as register_export
    from gligen_rt.runtime.cli import register_inspect
    from gligen_rt.serve.cli import register as register_serve

    try:  # the training stages need the reference package (absent in a runtime-only install)
        from gligen_ref.train.cli import register as register_train
    except ImportError:
        register_train = None

    register_export(sub)
    register_build(sub, calibrate=_calibrate)
    register_bench(sub)
    register_inspect(sub)
    register_serve(sub)
    register_eval(sub)
    if register_train is not None:
        register_train(sub)
    for command in sub.choices.values():  # -v also after the subcommand
        if "-v" not in command._option_string_actions:
            add_verbose(command)
    return parser


def _calibrate(*args: Any) -> Any:
    """`build --backend openvino-int8a`'s calibration inputs (runtime/calibrate.py, imported when used)."""
    from gligen_rt.runtime.calibrate import for_build

    return for_build(*args)


def _configure_logging(verbose: bool) -> None:
    """Our messages on stderr (INFO, DEBUG with -v); other libraries' only from WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("gligen_rt", "gligen_ref"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what ran, for records such as the benchmark's command line
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except GligenError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
