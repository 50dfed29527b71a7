"""The runtime's part of the command line: `generate` on engines, and `inspect DIR`.

`run_generate(args, request)` is called by gligen_rt/cli.py's cmd_generate for every backend but
the in-process torch reference; it returns the GenerationResult that cmd_generate saves.
`register_inspect(subparsers)` adds `gligen-rt inspect DIR`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import EngineError, RequestError
from gligen_rt.core.request import GenerationRequest

log = logging.getLogger("gligen_rt")


def model_guidance(args: argparse.Namespace) -> float | None:
    """The guidance scale of a request that names none, where the model has its own (`--model tiny`,
    without --engines: the shipped model's card value); None keeps the request's default."""
    if getattr(args, "engines", None) is not None or getattr(args, "model", None) != "tiny":
        return None
    from .tiny import TRAINED_TINY_GUIDANCE

    return TRAINED_TINY_GUIDANCE


def open_pipeline(args: argparse.Namespace) -> Any:
    """The GligenPipeline that `--engines DIR | --model NAME [--modality M] [--inpaint]
    [--backend B] [--single-unet] [--cache-dir DIR]` name (shared by `generate` and `serve`).

    Raises one-line GligenErrors (engine folder, backend missing, a model without engines).
    """
    from .pipeline import GligenPipeline

    backend = args.backend if args.backend else "ort-cpu"
    if getattr(args, "checkpoint", None) is not None and args.engines is None:
        raise RequestError(
            f"--backend {backend} runs exported engines: export the checkpoint first "
            "(`gligen-rt export --checkpoint ... --out DIR`), then pass --engines DIR"
        )
    single = bool(getattr(args, "single_unet", False))
    options = {
        "device_id": int(getattr(args, "device", 0) or 0),
        "low_memory": bool(getattr(args, "low_memory", False)),
    }
    if args.engines is not None:
        return GligenPipeline.from_engines(args.engines, backend, single_unet=single, **options)
    if args.model == "tiny":
        from gligen_rt.cli import check_trained_tiny

        from .tiny import trained_tiny_dir

        check_trained_tiny(args)
        return GligenPipeline.from_engines(
            trained_tiny_dir() / "engines", backend, single_unet=single, **options
        )
    if args.model != "tiny-random":
        raise RequestError(f"--model {args.model} has no embedded engines: export it and pass --engines DIR")
    return GligenPipeline.tiny_random(
        args.modality or "text-box",
        bool(getattr(args, "inpaint", False)),
        backend,
        single_unet=single,
        feature_cache=max(
            getattr(args, "feature_cache", None) or 0, getattr(args, "feature_cache_grounded", None) or 0
        )
        >= 2,
        cache_dir=getattr(args, "cache_dir", None),
        **options,
    )


def run_generate(args: argparse.Namespace, request: GenerationRequest) -> tuple[Any, str]:
    """`gligen-rt generate --engines DIR | --model tiny-random [--backend B]` -> (GenerationResult,
    the model's modality).

    Raises one-line GligenErrors (bad request, engine folder, backend missing, NaN); nothing is
    written here. Flags were checked against each other by the caller (gligen_rt/cli.py).
    """
    from gligen_rt.core.progress import progress

    with open_pipeline(args) as pipe:
        pipe.check_request(request)
        bar = progress(total=request.steps, desc="denoising", unit="step")
        try:
            return pipe(request, on_step=lambda i, n: bar.update(1)), pipe.modality.value
        finally:
            bar.close()


# ---------------------------------------------------------------------------------------------
# inspect


def _dims(dims: list[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _envelope(env: dict[str, Any]) -> str:
    parts = [
        f"{k} {v[0]}..{v[2]} (opt {v[1]})" for k, v in env.items() if k in ("batch", "height", "width") and v
    ]
    return ", ".join(parts) or "-"


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file())
    return f"{total / 1e6:.1f} MB"


def inspect_lines(path: str | Path) -> list[str]:
    """What an engine folder holds, as printable lines (no engines are loaded)."""
    from gligen_rt.engines.manifest import FOLDER_MANIFEST, load_folder_manifest, load_manifest

    path = Path(path)
    if not path.is_dir():
        raise EngineError(f"engine folder {path} does not exist")
    if not (path / FOLDER_MANIFEST).is_file() and (path.parent / FOLDER_MANIFEST).is_file():
        return _build_folder_lines(path)
    fm = load_folder_manifest(path)
    mc = fm.model_config
    lines = [
        f"engine folder {path}",
        f"  model      {mc.get('name')} {'inpaint ' if mc.get('inpaint') else ''}{mc.get('modality')}"
        f" (default size {mc.get('default_size')})",
        f"  precision  {fm.precision}",
        f"  envelope   {_envelope(fm.envelope)}",
        f"  tokenizer  {fm.tokenizer}/ ({'present' if (path / fm.tokenizer).is_dir() else 'MISSING'})",
        f"  created    {fm.created}",
        f"  source     {fm.extra.get('source', '-')}",
        f"  versions   {json.dumps({**fm.extra.get('exporter', {}), **fm.library_versions}, sort_keys=True)}",
    ]
    layout = [
        name
        for name, on in (
            ("gate skip", fm.extra.get("gate_skip")),
            ("feature cache", fm.extra.get("feature_cache")),
        )
        if on
    ]
    factor = int(fm.extra.get("token_downsample", 1) or 1)
    if factor > 1:
        layout.append(f"token downsampling {factor}x{factor} at the first level (an approximation)")
    lines.append(f"  layout     {', '.join(layout) or '-'}")
    if fm.checkpoint_sha256:
        lines.append(f"  checkpoint sha256 {fm.checkpoint_sha256[:16]}")
    for name in fm.engines:
        onnx = path / f"{name}.onnx"
        lines.append(f"  {name}: {onnx.name} {_size(onnx) if onnx.is_file() else 'MISSING'}")
        mpath = path / f"{name}.json"
        if not mpath.is_file():
            lines.append("    manifest MISSING")
            continue
        m = load_manifest(mpath)
        for t in m.spec.get("inputs", []):
            lines.append(f"    in  {t['name']:<18} {t['dtype']:<8} {_dims(t['dims'])}")
        for t in m.spec.get("outputs", []):
            lines.append(f"    out {t['name']:<18} {t['dtype']:<8} {_dims(t['dims'])}")
        lines.append(
            f"    envelope {_envelope(m.spec.get('envelope', {}))}; precision {m.precision} ({m.flavor})"
        )
        parity = m.parity or fm.parity.get(name, {})
        if parity:
            lines.append("    parity   " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(parity.items())))
    lines += _memory_lines(path, tuple(fm.engines))
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and p.name != fm.tokenizer):
        built = _built_lines(sub)
        if built:
            lines.append(f"  built for {sub.name}:")
            lines.extend(built)
    return lines


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _memory_lines(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Per-engine weights and scratch, and the peak a request needs (all engines loaded, and with
    --low-memory: the resident UNets and grounding plus the largest staged engine), for the ONNX
    graphs and for every TensorRT build. TensorRT engines share one scratch buffer, the largest
    engine's (recorded at build where a GPU was there); elsewhere activations are not known before
    running and are left out of the sum."""
    from gligen_rt.engines.manifest import load_manifest
    from gligen_rt.runtime.pipeline import STAGED_ENGINES

    sets = [("ONNX graphs (ort-*, openvino)", {n: _bytes(folder / f"{n}.onnx") for n in names}, {})]
    for sub in sorted(folder.glob("tensorrt*")):
        weights: dict[str, int] = {}
        scratch: dict[str, int] = {}
        for mp in sorted(sub.glob("*.json")):
            try:
                m = load_manifest(mp)
            except EngineError:
                continue  # reported by the build lines
            weights[m.engine] = m.artifact_size
            if isinstance(m.builder.get("device_memory"), int):
                scratch[m.engine] = m.builder["device_memory"]
        if weights:
            sets.append((f"{sub.name} plans", weights, scratch))
    lines = []
    for what, weights, scratch in sets:
        lines.append(f"  memory, {what}:")
        for name, w in weights.items():
            s = scratch.get(name)
            lines.append(
                f"    {name:<14} weights {_mb(w):>10}   scratch {_mb(s) if s is not None else '?':>10}"
            )
        shared = max(scratch.values(), default=0)
        resident = sum(w for n, w in weights.items() if n not in STAGED_ENGINES)
        staged = max((w for n, w in weights.items() if n in STAGED_ENGINES), default=0)
        known = "" if len(scratch) == len(weights) else " (+ activations not recorded)"
        lines.append(f"    peak: {_mb(sum(weights.values()) + shared)}{known}")
        lines.append(f"    peak with --low-memory: {_mb(resident + staged + shared)}{known}")
    return lines


def _built_lines(folder: Path) -> list[str]:
    """One line per built artifact's manifest in `folder` (a DIR/<backend> build folder)."""
    from gligen_rt.engines.manifest import load_manifest

    lines = []
    for mp in sorted(folder.glob("*.json")):
        try:
            m = load_manifest(mp)
        except EngineError as e:
            lines.append(f"    {mp.stem}: {e}")
            continue
        cc = f", GPU {m.gpu_compute_capability}" if m.gpu_compute_capability else ""
        lines.append(
            f"    {m.engine}: {m.artifact} {m.precision} ({m.flavor}), envelope "
            f"{_envelope(m.spec.get('envelope', {}))}, {json.dumps(m.library_versions, sort_keys=True)}{cc}"
        )
    return lines


def _build_folder_lines(path: Path) -> list[str]:
    """`inspect DIR/<backend>`: what a build folder holds, under the engine folder it was built from."""
    from gligen_rt.engines.manifest import load_folder_manifest

    fm = load_folder_manifest(path.parent)
    mc = fm.model_config
    built = _built_lines(path)
    if not built:
        raise EngineError(
            f"{path} holds no built engines: build them with `gligen-rt build --onnx {path.parent} "
            f"--backend {path.name}`"
        )
    return [
        f"build folder {path} (built from engine folder {path.parent})",
        f"  model      {mc.get('name')} {'inpaint ' if mc.get('inpaint') else ''}{mc.get('modality')}",
        f"  exported   {fm.precision}, envelope {_envelope(fm.envelope)}",
        f"  built for {path.name}:",
        *built,
    ]


def cmd_inspect(args: argparse.Namespace) -> int:
    for line in inspect_lines(args.dir):
        print(line)
    return 0


def register_inspect(subparsers: Any) -> None:
    """Add `gligen-rt inspect DIR` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "inspect", help="show what an engine folder holds (engines, I/O, precision, parity)"
    )
    p.add_argument("dir", type=Path, help="engine folder (from `gligen-rt export`)")
    p.set_defaults(func=cmd_inspect)
