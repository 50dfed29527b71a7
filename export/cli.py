"""`gligen-rt export`: write an engine folder (every engine's ONNX + tokenizer + manifests).

    gligen-rt export --model tiny --out engines/tiny
    gligen-rt export --checkpoint gligen-generation-text-box.bin --out engines/tb --precision fp16 \\
        --height 512 --width 512 --min-size 256 --max-size 768

`register(subparsers)` adds the subcommand to gligen_rt/cli.py's parser; run it as `gligen-rt export`
(or `python -m gligen_rt.cli export`): this module has no entry of its own, so the CLI never
imports back into itself through here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from gligen_rt.cli_parser import checkpoint_path
from gligen_rt.core.config import TOKEN_DOWNSAMPLE_FACTORS
from gligen_rt.engines.spec import ENGINE_NAMES

log = logging.getLogger(__name__)

MODALITIES = ["text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `export` to the CLI's subparsers (``parser.add_subparsers()``); returns its parser."""
    p = subparsers.add_parser(
        "export",
        help="export every engine to ONNX (checked against the reference) with manifests",
        description="Export a GLIGEN model's engines to ONNX. Every graph is checked against the PyTorch "
        "reference on ONNX Runtime CPU before it is kept; the folder is replaced only after success.",
    )
    src = p.add_argument_group("model")
    which = src.add_mutually_exclusive_group()
    which.add_argument(
        "--model", choices=["tiny-random", "sd14"], default="tiny-random", help="preset with random weights"
    )
    which.add_argument(
        "--checkpoint",
        type=checkpoint_path,
        help="original .bin/.pth file or diffusers folder (a file or folder, never a model name)",
    )
    src.add_argument("--modality", choices=MODALITIES, default=None, help="preset modality / checkpoint hint")
    src.add_argument("--inpaint", action="store_true", help="inpainting preset (with --model)")
    src.add_argument("--model-seed", type=int, default=0, help="seed of the preset's random weights")
    src.add_argument("--sd-conv-in", type=Path, default=None, help="SD-1.4 conv_in for spatial checkpoints")
    src.add_argument("--clip-vision", type=Path, default=None, help="CLIP vision folder for text-image files")
    src.add_argument(
        "--projection-matrix", type=Path, default=None, help="projection_matrix for text-image files"
    )

    out = p.add_argument_group("export")
    out.add_argument("--out", type=Path, required=True, help="engine folder to write (replaced on success)")
    out.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    out.add_argument(
        "--fp16-flavor",
        choices=["strongly-typed", "fp16-flag"],
        default="strongly-typed",
        help="fp16: FP16 in the graph (TensorRT strongly typed / RTX / 11), or FP32 graphs for a TensorRT-10 "
        "FP16-flag build (JetPack 6)",
    )
    out.add_argument("--height", type=int, default=None, help="optimal image height (px, multiple of 64)")
    out.add_argument("--width", type=int, default=None, help="optimal image width (px, multiple of 64)")
    out.add_argument("--min-size", type=int, default=None, help="smallest height/width the engines accept")
    out.add_argument("--max-size", type=int, default=None, help="largest height/width the engines accept")
    out.add_argument("--max-batch", type=int, default=None, help="most images per request (default 4)")
    out.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 23: standard Attention op)")
    out.add_argument(
        "--no-fuse", action="store_true", help="export the fusers as they are (no fused attention)"
    )
    out.add_argument(
        "--engines", nargs="+", choices=list(ENGINE_NAMES), default=None, help="only these engines"
    )
    out.add_argument(
        "--gate-skip",
        action="store_true",
        help="one UNet for both phases (fusers skipped at gate 0 by an ONNX If): half the UNet memory",
    )
    out.add_argument(
        "--feature-cache",
        action="store_true",
        help="also export unet_shallow, for requests that reuse the deep UNet features (--feature-cache K)",
    )
    out.add_argument(
        "--token-downsample",
        type=int,
        choices=TOKEN_DOWNSAMPLE_FACTORS,
        default=1,
        metavar="F",
        help="first-level attentions take keys/values pooled FxF (2 or 4; 1 = off): faster at 512 px, "
        "an approximation recorded in the manifest",
    )
    out.add_argument("--count-unfused", action="store_true", help="also record the UNet's node count unfused")
    out.add_argument("--threads", type=int, default=None, help="CPU threads for export and checks")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (none shows off a terminal)")
    p.set_defaults(func=cmd_export)
    return p


def envelope_from_args(args: argparse.Namespace, config: Any) -> Any:
    """The request envelope from --height/--width/--min-size/--max-size/--max-batch around the
    model's default size; ExportError (one line) when the numbers do not form valid ranges."""
    from gligen_rt.engines.spec import ShapeEnvelope
    from gligen_rt.export.parity import ExportError

    base = ShapeEnvelope.for_config(config)

    def rng(opt: int | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
        o = opt if opt is not None else default[1]
        lo = args.min_size if args.min_size is not None else min(default[0], o)
        hi = args.max_size if args.max_size is not None else max(default[2], o)
        return (lo, o, hi)

    batch = (1, 1, args.max_batch) if args.max_batch is not None else None
    try:
        return ShapeEnvelope.for_config(
            config, batch=batch, height=rng(args.height, base.height), width=rng(args.width, base.width)
        )
    except ValueError as e:
        raise ExportError(f"invalid size range: {e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    """Run the export; prints the folder path (the command's output)."""
    from gligen_rt.export.api import export_engines, load_source

    options = {
        k: v
        for k, v in (
            ("sd_conv_in", args.sd_conv_in),
            ("clip_vision", args.clip_vision),
            ("projection_matrix", args.projection_matrix),
        )
        if v is not None
    }
    checkpoint = args.checkpoint if args.checkpoint is not None else args.model
    source = load_source(checkpoint, args.modality, args.inpaint, args.model_seed, **options)
    envelope = envelope_from_args(args, source.config)
    log.info(
        "export %s (%s) -> %s: %s%s, opset %d, %s, envelope %s",
        source.config.key,
        source.description,
        args.out,
        args.precision,
        f" ({args.fp16_flavor})" if args.precision == "fp16" else "",
        args.opset,
        "unfused" if args.no_fuse else "fused attention",
        envelope.to_dict(),
    )
    path = export_engines(
        checkpoint,
        args.out,
        precision=args.precision,
        envelope=envelope,
        opset=args.opset,
        fuse=not args.no_fuse,
        progress=not args.no_progress,
        fp16_flavor=args.fp16_flavor,
        engines=args.engines,
        count_unfused=args.count_unfused,
        seed=args.model_seed,
        source=source,
        threads=args.threads,
        gate_skip=args.gate_skip,
        feature_cache=args.feature_cache,
        token_downsample=args.token_downsample,
    )
    print(path)
    return 0
