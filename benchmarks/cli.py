"""``gligen-rt bench``: the command line of the benchmarks.

The main CLI adds it with ``register(subparsers)``: run it as ``gligen-rt bench`` (or
``python -m gligen_rt.cli bench``). Exit status: 0 when every configuration ran or was unavailable here (a missing
backend library), 1 when one failed (the results are written either way), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from gligen_rt.benchmarks.scenario import BACKEND_PRECISIONS, CPU_BACKENDS, GPU_BACKENDS, MODELS, PRECISIONS

log = logging.getLogger("gligen_rt")

MODALITIES = ("text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=MODELS,
        default="tiny-random",
        help="random-weight model: tiny-random (seconds, a first try) or sd14 (SD-1.4 size: minutes "
        "and ~10 GB on a small CPU, the committed results)",
    )
    p.add_argument("--modality", choices=MODALITIES, default="text-box", help="the model's modality")
    p.add_argument("--size", type=int, default=256, help="image height = width in px (multiple of 64)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps")
    p.add_argument("--beta", type=float, default=0.3, help="fraction of grounded steps")
    p.add_argument("--sampler", default="plms", choices=["plms", "ddim", "dpmpp_2m", "euler"], help="sampler")
    p.add_argument(
        "--backends",
        type=_csv,
        default=None,
        help=f"our runtime's backends, comma-separated, from {', '.join(BACKEND_PRECISIONS)} "
        f"(default: {','.join(CPU_BACKENDS)} on CPU, {','.join(GPU_BACKENDS)} on GPU; 'none' for none)",
    )
    p.add_argument(
        "--precisions",
        type=_csv,
        default=None,
        help=f"our runtime's precisions from {', '.join(PRECISIONS)}; each backend runs those it supports "
        "(default: fp32,bf16,fp16 on CPU, fp16 on GPU)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs first (the first is reported as first run)"
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when a GPU is there"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the physical cores)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n^3 matmul peak")
    p.add_argument("--seed", type=int, default=1, help="noise seed of the request")
    p.add_argument("--model-seed", type=int, default=0, help="seed of the random weights")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("benchmarks/results"),
        help="where bench.jsonl, the tables and the plots go (relative to the current folder)",
    )
    p.add_argument(
        "--engine-dir",
        type=Path,
        default=None,
        help="cache of the exported engines, reused across runs (default: bench-engines/ in "
        "$GLIGEN_RT_CACHE, else ~/.cache/gligen-rt; sd14 needs ~8 GB there)",
    )
    p.add_argument(
        "--gate-skip",
        action="store_true",
        help="our engines: one UNet, fusers skipped at gate 0 (no unet_plain)",
    )
    p.add_argument(
        "--feature-cache",
        type=int,
        default=0,
        metavar="K",
        help="also run each of our configurations with the feature cache K (the whole UNet every K-th "
        "plain step; engines exported with --feature-cache), beside it without, in the same run",
    )
    p.add_argument(
        "--feature-cache-grounded",
        type=int,
        default=0,
        metavar="K",
        help="with --feature-cache: each of our configurations runs once more with the grounded steps "
        "cached too (the whole grounded UNet every K-th grounded step, unet_shallow_grounded between)",
    )
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="with --feature-cache: leave out our configurations without the cache (they need a "
        "second engine folder, exported and built without it)",
    )
    p.add_argument(
        "--token-downsample",
        type=int,
        default=1,
        metavar="F",
        help="our engines (and the plain SD control) exported with export --token-downsample F: the "
        "first level's attentions take keys/values pooled FxF (2 or 4; 1 = off); eager PyTorch and "
        "the reference stay whole",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="each of our configurations runs once more with the runtime's --low-memory (encoders and "
        "VAE loaded per stage, the UNets' buffers freed before the VAE decodes)",
    )
    p.add_argument("--no-eager", action="store_true", help="leave out diffusers' eager PyTorch baseline")
    p.add_argument(
        "--eager-precisions",
        type=_csv,
        default=None,
        help="eager PyTorch precisions (default: fp32,bf16,bf16-autocast on CPU; fp32,fp16,bf16 on GPU)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="leave out the reference pipeline (no PSNR then)"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (quick, less isolated)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="re-render the tables and plots from OUT/bench.jsonl"
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark our runtime against the reference and diffusers' eager PyTorch",
        description="Time every stage of every configuration side by side; append one JSON line to "
        "OUT/bench.jsonl and render OUT/<scenario>.md and .png.",
    )
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)
    return p


def default_engine_dir() -> Path:
    """bench-engines/ in the same cache root as the tiny model's engines (one place: runtime/tiny.py)."""
    from gligen_rt.runtime.tiny import default_cache_dir

    return default_cache_dir() / "bench-engines"


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    import shutil

    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def cmd_bench(args: argparse.Namespace) -> int:
    from gligen_rt.benchmarks.harness import JSONL_NAME, Options, run_benchmark
    from gligen_rt.benchmarks.report import latest_by_key, load_records, markdown, render
    from gligen_rt.benchmarks.scenario import Scenario

    if args.report_only:
        path = args.out_dir / JSONL_NAME
        if not path.exists():
            print(f"error: no {JSONL_NAME} in {args.out_dir}: run `gligen-rt bench` first", file=sys.stderr)
            return 2
        for record in latest_by_key(load_records(path)).values():
            md, png = render(record, args.out_dir)
            print(md)
            print(png)
        return 0
    if args.cached_only and args.feature_cache < 2:
        print("error: --cached-only needs --feature-cache K (K >= 2)", file=sys.stderr)
        return 2
    device = _device(args.device)
    try:
        scenario = Scenario(
            model=args.model,
            modality=args.modality,
            size=args.size,
            steps=args.steps,
            beta=args.beta,
            sampler=args.sampler,
            seed=args.seed,
            model_seed=args.model_seed,
            warmup=args.warmup,
            repeats=args.repeats,
            device=device,
            threads=args.threads,
            matmul_size=args.matmul_size,
            gate_skip=args.gate_skip,
            feature_cache=args.feature_cache,
            feature_cache_grounded=args.feature_cache_grounded,
            token_downsample=args.token_downsample,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backends = (
        args.backends
        if args.backends is not None
        else list(GPU_BACKENDS if device == "cuda" else CPU_BACKENDS)
    )
    backends = [b for b in backends if b != "none"]
    precisions = args.precisions or (["fp16"] if device == "cuda" else ["fp32", "bf16", "fp16"])
    options = Options(
        backends=backends,
        precisions=precisions,
        eager=not args.no_eager,
        eager_precisions=args.eager_precisions,
        cached_only=args.cached_only,
        low_memory=args.low_memory,
        reference=not args.no_reference,
        out_dir=args.out_dir,
        engine_dir=args.engine_dir if args.engine_dir is not None else default_engine_dir(),
        isolate=not args.in_process,
        command="gligen-rt " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:])),
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # our log lines print above the progress bar, not through it
            record = run_benchmark(scenario, options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(record))
    print(args.out_dir / f"{record['key']}.md")
    print(args.out_dir / f"{record['key']}.png")
    failed = [c["label"] for c in record["configs"] if c.get("status") == "failed"]
    if failed:
        print(f"error: {len(failed)} configuration(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
