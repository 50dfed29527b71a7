"""`gligen-rt build`: turn an exported engine folder into artifacts for one backend.

    DIR/manifest.json, DIR/<engine>.onnx, DIR/<engine>.json   (written by the exporter)
    -> DIR/<backend>/<engine>.<ext> + DIR/<backend>/<engine>.json

| backend        | artifact                                   | what building does                        |
|----------------|--------------------------------------------|-------------------------------------------|
| tensorrt       | <engine>.plan (+ timing.cache)             | TensorRT 10 builder (needs a GPU)          |
| tensorrt-rtx   | <engine>.plan                              | TensorRT-RTX builder (runs without a GPU)  |
| ort-cpu        | <engine>.<key>.onnx                        | ORT graph optimization, saved once         |
| ort-cuda       | <engine>.<key>.onnx                        | same, for the CUDA provider                |
| ort-trt        | ../<engine>.onnx + TensorRT EP caches      | the EP builds and caches its engines       |
| openvino       | <engine>.xml/.bin (FP32 IR) + cache/       | OpenVINO IR, compiled once into cache/     |
| openvino-bf16  | <engine>.xml/.bin (FP16 IR) + cache/       | same, BF16 inference                      |
| openvino-int8  | <engine>.xml/.bin (INT8 weights) + cache/  | same, NNCF INT8 weight compression         |
| openvino-int8a | <engine>.xml/.bin (UNets W8A8) + cache/    | same, UNets quantized on calibration inputs (runtime/calibrate.py) |

A manifest's `artifact` is relative to the manifest's folder. Every file is written atomically,
so an interrupted build leaves no half-written artifact; re-running it rebuilds what is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gligen_rt.core.backends import BUILD_BACKENDS, GPU_BACKENDS
from gligen_rt.core.errors import EngineError
from gligen_rt.engines.manifest import (
    EngineManifest,
    FolderManifest,
    load_folder_manifest,
    load_manifest,
    manifest_path_for,
    onnx_files,
    runs_fp16,
    verify,
    write_manifest,
)
from gligen_rt.engines.spec import (
    GROUNDING,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    UNET_SHALLOW_GROUNDED,
    VAE_DECODER,
    VAE_ENCODER,
    EngineSpec,
    concrete_shapes,
    fingerprint,
    spec_from_dict,
    spec_to_dict,
)
from gligen_rt.engines.spec import static as make_static

log = logging.getLogger(__name__)

# `--backend openvino --precision P` names the OpenVINO build of that precision.
OPENVINO_PRECISIONS = {
    None: "openvino",
    "fp32": "openvino",
    "bf16": "openvino-bf16",
    "int8-w": "openvino-int8",
    "int8-a": "openvino-int8a",
}
# Engines whose activations openvino-int8a quantizes (the others get its INT8 weights only).
CALIBRATED_ENGINES = (UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED)
# TensorRT builders (also ONNX Runtime's TensorRT provider) that can run an FP32 graph at FP16.
_TRT_FAMILY = ("tensorrt", "tensorrt-rtx", "ort-trt")
# Engines that `static` fixes, and their batch per requested image (the CFG batch is 2x).
# The text and image encoders stay dynamic: box phrases and grounding images vary per request.
STATIC_BATCH_PER_IMAGE = {
    GROUNDING: 2,
    UNET: 2,
    UNET_PLAIN: 2,
    UNET_SHALLOW: 2,
    UNET_SHALLOW_GROUNDED: 2,
    VAE_DECODER: 1,
    VAE_ENCODER: 1,
}
TIMING_CACHE = "timing.cache"


def _static_for(spec: EngineSpec, static: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """(engine batch, height, width) for an engine that `static` (images, height, width) fixes."""
    if static is None or spec.name not in STATIC_BATCH_PER_IMAGE:
        return None
    images, height, width = static
    return (STATIC_BATCH_PER_IMAGE[spec.name] * images, height, width)


def _progress(items: list[str], enabled: bool, desc: str) -> Any:
    from gligen_rt.core.progress import progress

    return progress(items, desc=desc, unit="engine", show=enabled)


def build(
    onnx_dir: str | os.PathLike[str],
    backend: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    precision: str | None = None,
    static: tuple[int, int, int] | None = None,
    progress: bool = True,
    engines: list[str] | None = None,
    workspace: int | None = None,
    threads: int | None = None,
    calibration: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[Path]:
    """Build every engine of the folder `onnx_dir` for `backend`; returns the artifact paths.

    precision: None builds as exported (the export's manifest says: an FP32 export stays FP32
        unless it was exported for the FP16 flag; the built manifest records what was built); "fp16" on an FP32 export uses BuilderFlag.FP16
        (tensorrt) or the EP's FP16 mode (ort-trt); for "openvino", "bf16" and "int8-w" select
        the openvino-bf16 and openvino-int8 builds (engines/openvino.py BUILDS).
    static: (images, height, width) fixes grounding, the UNets (batch 2*images) and the VAE at one
        shape (min = opt = max) for CUDA graphs; the encoders stay dynamic.
    engines: a subset of the folder's engines (default: all of them).
    out_dir: default DIR/<backend>.
    calibration: openvino-int8a: {engine: [{input: array}, ...]} for each UNet it builds (their
        inputs along real trajectories, runtime/calibrate.py ``collect``; at the static shape when
        one is given).
    """
    if backend not in BUILD_BACKENDS:
        raise EngineError(f"unknown backend {backend!r}: choose one of {', '.join(BUILD_BACKENDS)}")
    if backend.startswith("openvino"):
        if precision not in OPENVINO_PRECISIONS:
            raise EngineError(
                f"openvino precision {precision!r} is not one of fp32, bf16, int8-w, int8-a: "
                "or use --backend openvino-bf16 / openvino-int8 / openvino-int8a"
            )
        if backend == "openvino":
            backend = OPENVINO_PRECISIONS[precision]
        elif precision is not None and OPENVINO_PRECISIONS[precision] != backend:
            raise EngineError(
                f"--backend {backend} builds its own precision: drop --precision {precision} "
                f"or use --backend {OPENVINO_PRECISIONS[precision]}"
            )
        precision = None
    src = Path(onnx_dir)
    folder = load_folder_manifest(src)
    out = Path(out_dir) if out_dir is not None else src / backend
    names = list(engines) if engines is not None else list(folder.engines)
    unknown = [n for n in names if n not in folder.engines]
    if unknown:
        raise EngineError(f"{src} has no engines {unknown}: it holds {list(folder.engines)}")
    if backend == "openvino-int8a":
        missing = [n for n in names if n in CALIBRATED_ENGINES and not (calibration or {}).get(n)]
        if missing:
            raise EngineError(
                f"openvino-int8a quantizes {', '.join(missing)} on calibration inputs and has none: "
                "build with `gligen-rt build` (it records them) or pass calibration="
                "gligen_rt.runtime.calibrate.collect(DIR)"
            )
    out.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    bar = _progress(names, progress, f"build {backend}")
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        onnx_path = src / f"{name}.onnx"
        source = load_manifest(manifest_path_for(onnx_path))
        spec = spec_from_dict(source.spec)
        if fingerprint(spec) != source.spec_fingerprint:
            raise EngineError(
                f"corrupt {manifest_path_for(onnx_path)} (its spec does not match its fingerprint): "
                "re-export the engine folder with `gligen-rt export`"
            )
        verify(source, artifact_path=onnx_path)
        engine_precision = precision
        if engine_precision is None and backend in _TRT_FAMILY:
            # As exported, read from the manifest: FP16 graphs and FP32 graphs exported for the FP16
            # flag run FP16; anything else stays FP32 (never switched on silently).
            engine_precision = "fp16" if runs_fp16(source) else source.precision
        built.append(
            _build_one(
                backend,
                onnx_path,
                spec,
                source,
                folder,
                out,
                precision=engine_precision,
                static=_static_for(spec, static),
                workspace=workspace,
                threads=threads,
                calibration=(calibration or {}).get(name) if backend == "openvino-int8a" else None,
            )
        )
    return built


def _build_one(
    backend: str,
    onnx_path: Path,
    spec: EngineSpec,
    source: EngineManifest,
    folder: FolderManifest,
    out: Path,
    *,
    precision: str | None,
    static: tuple[int, int, int] | None,
    workspace: int | None,
    threads: int | None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    if backend in ("tensorrt", "tensorrt-rtx"):
        from gligen_rt.engines.tensorrt import PLAN_SUFFIX, build_engine, choose_flavor

        flavor = choose_flavor(backend, source.precision, precision)
        return build_engine(
            onnx_path,
            spec,
            out / f"{spec.name}{PLAN_SUFFIX}",
            backend=backend,
            precision=precision or source.precision,
            flavor=flavor,
            timing_cache_path=out / TIMING_CACHE,
            static_shape=static,
            workspace=workspace,
            source=source,
        )
    if static is not None:
        spec = make_static(spec, *static)
    if backend.startswith("ort-"):
        return _build_ort(backend, onnx_path, spec, source, out, precision=precision, threads=threads)
    return _build_openvino(backend, onnx_path, spec, source, out, threads=threads, calibration=calibration)


def _flavor(graph_precision: str, precision: str) -> str:
    """The flavor of an artifact that runs a `graph_precision` graph at `precision`."""
    if graph_precision == "fp16":
        return "fp16-strongly-typed"
    return "fp32-fp16-flag" if precision == "fp16" else "fp32"


def _manifest_for(
    source: EngineManifest,
    spec: EngineSpec,
    backend: str,
    artifact: Path,
    out: Path,
    *,
    precision: str,
    builder: dict[str, Any],
    library_versions: dict[str, str],
    gpu_cc: str | None = None,
) -> EngineManifest:
    """A built artifact's manifest; ONNX artifacts are described by their onnx_sha256."""
    from gligen_rt.engines.manifest import onnx_sha256, sha256_file

    if artifact.suffix == ".onnx":
        digest, size = onnx_sha256(artifact), sum(f.stat().st_size for f in onnx_files(artifact))
    else:
        digest, size = sha256_file(artifact), artifact.stat().st_size
    return EngineManifest(
        engine=spec.name,
        backend=backend,
        artifact=os.path.relpath(artifact, out),
        artifact_sha256=digest,
        artifact_size=size,
        spec_fingerprint=fingerprint(spec),
        spec=spec_to_dict(spec),
        onnx_sha256=source.onnx_sha256,
        model_config=dict(source.model_config),
        precision=precision,
        flavor=_flavor(source.precision, precision),
        checkpoint_sha256=source.checkpoint_sha256,
        builder=builder,
        library_versions=library_versions,
        gpu_compute_capability=gpu_cc,
        parity=dict(source.parity),
    )


def _build_ort(
    backend: str,
    onnx_path: Path,
    spec: EngineSpec,
    source: EngineManifest,
    out: Path,
    *,
    precision: str | None,
    threads: int | None,
) -> Path:
    from gligen_rt.engines.ort import import_ort, make_session, optimized_model_path

    provider = backend.removeprefix("ort-")
    if provider == "trt":
        provider = "tensorrt"
    ort = import_ort()
    if provider != "tensorrt" and precision not in (None, source.precision):
        raise EngineError(
            f"ONNX Runtime runs the graph as exported ({source.precision}): "
            f"re-export with `gligen-rt export --precision {precision}`"
        )
    effective = precision or source.precision  # build() resolved ort-trt's from the manifest
    fp16 = effective == "fp16"
    session = make_session(
        onnx_path, provider, optimized_cache_dir=out, threads=threads, spec=spec, fp16=fp16
    )
    del session  # building the session is the build: the optimized model / EP caches are on disk now
    if provider == "tensorrt":
        from gligen_rt.engines.tensorrt import gpu_compute_capability

        artifact, gpu_cc = onnx_path, gpu_compute_capability()
        builder = {"provider": provider, "fp16": fp16, "engine_cache": "."}
    else:
        artifact, gpu_cc = optimized_model_path(onnx_path, provider, out), None
        builder = {"provider": provider, "saved_level": "extended", "session_level": "all"}
    manifest = _manifest_for(
        source,
        spec,
        backend,
        artifact,
        out,
        precision=effective,
        builder=builder,
        library_versions={"onnxruntime": str(ort.__version__)},
        gpu_cc=gpu_cc,
    )
    write_manifest(out / f"{spec.name}.json", manifest)
    return artifact


def _build_openvino(
    backend: str,
    onnx_path: Path,
    spec: EngineSpec,
    source: EngineManifest,
    out: Path,
    *,
    threads: int | None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """OpenVINO IR (weights as the build asks) and its compiled blob in out/cache.

    openvino-int8a: the UNets (``calibration`` given) are quantized W8A8, every other engine gets
    INT8 weights (int8-w)."""
    from gligen_rt.engines.manifest import sha256_file
    from gligen_rt.engines.openvino import BUILDS, IR_SUFFIX, compile_model, import_openvino, save_ir

    ov = import_openvino()
    hint, weights = BUILDS[backend]
    if weights == "int8-a" and not calibration:
        weights = "int8-w"  # engines without calibration inputs: INT8 weights only
    shapes = None
    if spec.envelope.is_static:
        env = spec.envelope
        point = [r[0] if r else 1 for r in (env.batch, env.height, env.width)]
        all_shapes = concrete_shapes(spec, *point)
        shapes = {n: all_shapes[n] for n in spec.input_names}
    calibration_info = None
    if weights == "int8-a":
        assert calibration is not None
        _check_calibration(spec, calibration, shapes)
        calibration_info = {
            "samples": len(calibration),
            "shapes": {k: list(v.shape) for k, v in calibration[0].items()},
        }
    xml = save_ir(
        onnx_path,
        out / f"{spec.name}{IR_SUFFIX}",
        weights,
        shapes=shapes,
        calibration=calibration if weights == "int8-a" else None,
    )
    bin_path = xml.with_suffix(".bin")
    compiled = compile_model(xml, "CPU", hint, out / "cache", threads=threads)
    del compiled  # compiling is the build: the blob is in out/cache now
    manifest = _manifest_for(
        source,
        spec,
        backend,
        xml,
        out,
        precision=source.precision,
        builder={
            "device": "CPU",
            "precision_hint": hint,
            "weights": weights,
            "weights_file": bin_path.name,
            "weights_size": bin_path.stat().st_size,
            "weights_sha256": sha256_file(bin_path),
            "cache_dir": "cache",
            "shapes": {k: list(v) for k, v in shapes.items()} if shapes else None,
            "calibration": calibration_info,
        },
        library_versions={"openvino": str(ov.__version__)},
    )
    write_manifest(out / f"{spec.name}.json", manifest)
    return xml


def _check_calibration(
    spec: EngineSpec,
    calibration: Sequence[Mapping[str, Any]],
    shapes: Mapping[str, tuple[int, ...]] | None,
) -> None:
    """EngineError (one line) unless every calibration input names the engine's inputs, with one
    shape throughout (the static shape, for a static build)."""
    want = set(spec.input_names)
    for feed in calibration:
        if set(feed) != want:
            raise EngineError(
                f"calibration inputs of {spec.name} name {sorted(feed)}, the engine takes {sorted(want)}"
            )
    first = {k: tuple(v.shape) for k, v in calibration[0].items()}
    if any({k: tuple(v.shape) for k, v in feed.items()} != first for feed in calibration):
        raise EngineError(f"calibration inputs of {spec.name} come in several shapes: give one size")
    if shapes and any(tuple(shapes[k]) != first[k] for k in first):
        raise EngineError(
            f"calibration inputs of {spec.name} have shapes {first}, its static build {dict(shapes)}: "
            "calibrate at the static size and image count"
        )


# Backends whose build needs an NVIDIA GPU (TensorRT-RTX builds without one).
GPU_BUILD_BACKENDS = tuple(b for b in GPU_BACKENDS if b != "tensorrt-rtx")


# (onnx_dir, request files or None for the defaults, samples per engine, (images, height, width) or
# None, threads) -> {engine: calibration inputs}: runtime/calibrate.py, handed in by the CLI (the
# runtime sits above engines/).
Calibrate = Callable[[Path, Sequence[Path] | None, int, tuple[int, int, int] | None, int | None], Any]


def register(subparsers: argparse._SubParsersAction, calibrate: Calibrate | None = None) -> None:
    """Add `gligen-rt build --onnx DIR --backend B` to the main parser; ``calibrate`` records the
    calibration inputs of an openvino-int8a build."""
    p = subparsers.add_parser(
        "build",
        help="build an exported engine folder for a backend",
        description="Build the engines of an exported folder for one backend into DIR/<backend> "
        "(see `gligen-rt inspect DIR/<backend>`). Nothing is left behind when the build is refused.",
    )
    p.add_argument("--onnx", type=Path, required=True, help="engine folder written by `gligen-rt export`")
    p.add_argument("--backend", required=True, choices=BUILD_BACKENDS, help="what to build for")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/<backend>)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16", "int8-w", "int8-a"],
        default=None,
        help="default: as exported (openvino: bf16 / int8-w / int8-a select openvino-bf16 / "
        "openvino-int8 / openvino-int8a)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        nargs="+",
        default=None,
        metavar="REQUEST.json",
        help="openvino-int8a: requests whose trajectories calibrate the UNets' INT8 activations, "
        "like the ones you will run (default: four built-in text-box scenes)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=16,
        help="openvino-int8a: UNet inputs kept per engine, spread over the trajectories",
    )
    p.add_argument("--static", default=None, help="images,height,width: one fixed shape (CUDA graphs)")
    p.add_argument("--engines", default=None, help="comma-separated subset of the folder's engines")
    p.add_argument("--workspace", type=int, default=None, help="TensorRT workspace in MiB")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's)")
    p.set_defaults(func=_cmd_build, calibrate=calibrate)


def _cmd_build(args: argparse.Namespace) -> int:
    static = None
    if args.static is not None:
        try:
            static = tuple(int(v) for v in args.static.split(","))
        except ValueError:
            static = ()
        if len(static) != 3:
            raise EngineError(f"--static {args.static!r}: give images,height,width, e.g. 1,512,512")
    if args.backend in GPU_BUILD_BACKENDS:
        from gligen_rt.engines.gpu import require_gpu

        require_gpu(f"build --backend {args.backend}")
    resolved = args.backend
    if args.backend == "openvino" and args.precision in OPENVINO_PRECISIONS:
        resolved = OPENVINO_PRECISIONS[args.precision]
    if args.calibration is not None and resolved != "openvino-int8a":
        raise EngineError("--calibration calibrates INT8 activations: it belongs to --backend openvino-int8a")
    if args.calibration_samples < 1:
        raise EngineError(f"--calibration-samples {args.calibration_samples}: give at least 1")
    out = Path(args.out) if args.out is not None else Path(args.onnx) / resolved
    existed = out.exists()
    calibration = None
    if resolved == "openvino-int8a":
        if args.calibrate is None:
            raise EngineError("this command line cannot record calibration inputs: run `gligen-rt build`")
        load_folder_manifest(Path(args.onnx))  # a missing or broken folder: its own one line first
        calibration = args.calibrate(
            Path(args.onnx), args.calibration, args.calibration_samples, static, args.threads
        )
    try:
        paths = build(
            args.onnx,
            args.backend,
            args.out,
            precision=args.precision,
            static=static,
            engines=args.engines.split(",") if args.engines else None,
            workspace=args.workspace << 20 if args.workspace else None,
            threads=args.threads,
            calibration=calibration,
        )
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused build leaves no empty folder behind
        raise
    for path in paths:
        print(path)
    return 0
