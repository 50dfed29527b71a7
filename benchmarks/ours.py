"""Our runtime as a benchmark configuration: engines exported once, GligenPipeline on one backend.

- ``ensure_engines``: the engine folder of the scenario's random-weight model (same weights as the
  reference: ``build_model(preset, model_seed)``) at the configuration's engine precision, with a
  shape envelope fixed at the scenario's size; exported once into the cache folder, and built for
  backends that need artifacts (TensorRT plans).
- ``OursRunner``: ``GligenPipeline.from_engines(folder, backend)``; each engine call is timed by
  wrapping the backend's ``run`` (the loop is untouched). ``unet`` calls with gate 0 count as plain
  steps (a folder without ``unet_plain`` runs the plain phase on ``unet``).
- the plain SD UNet control: diffusers' SD UNet (no fusers) with the same weights, exported to
  ONNX once at the same size and run through the same backend class and options.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.benchmarks.measure import CallTimer, run_record
from gligen_rt.benchmarks.runners import Runner
from gligen_rt.benchmarks.scenario import Config, Scenario

log = logging.getLogger(__name__)

FOLDER_MANIFEST = "manifest.json"
NEEDS_BUILD = ("tensorrt", "tensorrt-rtx")  # backends that cannot run a folder before `build`
# built before they run: OpenVINO IR, static at the scenario's shape, with its compiled-model cache
BUILT = NEEDS_BUILD + ("openvino", "openvino-bf16", "openvino-int8", "openvino-int8a")


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (its library or provider is missing), or None.

    Checked before anything is exported, without importing the heavy libraries where possible.
    """
    import importlib.util

    if backend.startswith("ort-"):
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        import onnxruntime

        provider = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}.get(
            backend, "TensorrtExecutionProvider"
        )
        if provider not in onnxruntime.get_available_providers():
            return f"onnxruntime has no {provider} here"
        return None
    module = {"openvino": "openvino", "tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}.get(backend)
    if module is None:
        return f"unknown backend {backend}"
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if backend.startswith("tensorrt") and importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    return None


def engine_precision(config: Config) -> str:
    """The precision the engines are exported at (bf16 is a backend hint over fp32 graphs)."""
    return "fp16" if config.precision == "fp16" else "fp32"


def runtime_backend(config: Config) -> str:
    """The runtime's backend name (runtime/backend.py BACKENDS) for a configuration."""
    if config.backend == "openvino" and config.precision in ("bf16", "int8", "int8a"):
        return f"openvino-{config.precision}"
    return config.backend


def envelope(scenario: Scenario) -> Any:
    """A shape envelope fixed at the scenario's size and one image per request."""
    from gligen_rt.engines.spec import ShapeEnvelope

    s = scenario.size
    return ShapeEnvelope(batch=(1, 1, 1), height=(s, s, s), width=(s, s, s))


def engine_keys(folder: Path) -> list[str]:
    """``<engine>:<spec fingerprint[:12]>`` per engine of a folder (what the run used)."""
    from gligen_rt.engines.manifest import load_folder_manifest, load_manifest, manifest_path_for

    fm = load_folder_manifest(folder)
    keys = []
    for name in fm.engines:
        m = load_manifest(manifest_path_for(folder / f"{name}.onnx"))
        keys.append(f"{name}:{m.spec_fingerprint[:12]}")
    return keys


def ensure_engines(scenario: Scenario, config: Config, folder: Path) -> dict[str, Any]:
    """Export (once) the engines ``config`` runs on and the plain SD UNet control; build backend
    artifacts where the backend needs them."""
    from gligen_rt.benchmarks.sd_control import CONTROL_BACKENDS, control_path, export_control

    info: dict[str, Any] = {"status": "ok", "precision": engine_precision(config)}
    control = control_path(folder.parent, scenario, engine_precision(config))
    want_control = config.backend in CONTROL_BACKENDS and not control.is_file()
    if not (folder / FOLDER_MANIFEST).is_file() or want_control:
        from gligen_rt.export.api import export_engines, load_source

        source = load_source(scenario.model, scenario.modality, seed=scenario.model_seed)
        if want_control:  # first: the export below may rewrite the model's fusers
            try:  # with our engines' token downsampling: plain SD on the same attention
                export_control(
                    source.model,
                    control,
                    scenario.size,
                    engine_precision(config),
                    token_downsample=scenario.token_downsample,
                )
            except Exception as e:  # the control is optional: its target then reads n/a
                log.warning("plain SD UNet control not exported: %s", e)
        if not (folder / FOLDER_MANIFEST).is_file():
            tic = time.perf_counter()
            folder.parent.mkdir(parents=True, exist_ok=True)
            export_engines(
                scenario.model,
                folder,
                engine_precision(config),
                envelope(scenario),
                modality=scenario.modality,
                seed=scenario.model_seed,
                progress=False,
                source=source,
                gate_skip=scenario.gate_skip,
                feature_cache=config.feature_cache >= 2 or config.feature_cache_grounded >= 2,
                token_downsample=scenario.token_downsample,
            )
            info["export_s"] = time.perf_counter() - tic
        del source
    backend = runtime_backend(config)
    if backend in BUILT and not _built(folder, backend):
        from gligen_rt.engines.build import build

        tic = time.perf_counter()
        s = scenario.size
        calibration = None
        if backend == "openvino-int8a":  # the default calibration scenes, not the measured request
            from gligen_rt.runtime.calibrate import for_build

            calibration = for_build(folder, None, 16, (1, s, s), scenario.threads)
        build(folder, backend, static=(1, s, s), progress=False, calibration=calibration)
        info[f"build_{backend}_s"] = time.perf_counter() - tic
    info["keys"] = engine_keys(folder)
    return info


def _built(folder: Path, backend: str) -> bool:
    """Whether every engine of the folder has a manifest in DIR/<backend> (written last per engine)."""
    from gligen_rt.engines.manifest import load_folder_manifest

    return all((folder / backend / f"{e}.json").is_file() for e in load_folder_manifest(folder).engines)


def _weights_bytes(folder: Path, engines: list[str]) -> int:
    """Bytes of the ONNX graphs (with external data) of the loaded engines."""
    from gligen_rt.engines.manifest import onnx_files

    return sum(p.stat().st_size for e in engines for p in onnx_files(folder / f"{e}.onnx"))


def _built_weight_share(folder: Path, backend: str, engines: list[str]) -> float:
    """Weight bytes of the built artifacts the backend runs (OpenVINO IR: FP16-stored for bf16,
    INT8 for int8) over those of the graphs they were built from: 1.0 where it runs the graphs."""
    from gligen_rt.engines.manifest import load_manifest

    built = graphs = 0
    for e in engines:
        m = folder / backend / f"{e}.json"
        size = load_manifest(m).builder.get("weights_size") if m.is_file() else None
        if not size:
            return 1.0
        built += int(size)
        graphs += _weights_bytes(folder, [e])
    return built / graphs if graphs else 1.0


class OursRunner(Runner):
    """GligenPipeline over an engine folder on one backend, every engine call timed."""

    STAGE_OF = {
        "text_encoder": "text_encoder",
        "image_encoder": "image_encoder",
        "grounding": "grounding",
        "unet": "unet_grounded",
        "unet_plain": "unet_plain",
        "unet_shallow": "unet_shallow",
        "unet_shallow_grounded": "unet_shallow_grounded",
        "vae_encoder": "vae_encoder",
        "vae_decoder": "vae_decoder",
    }

    def __init__(self, scenario: Scenario, config: Config, folder: Path, params: int | None = None) -> None:
        from gligen_rt.runtime.pipeline import GligenPipeline

        self.scenario, self.config, self.folder = scenario, config, folder
        options: dict[str, Any] = {}
        if scenario.threads is not None and config.backend in ("ort-cpu", "openvino"):
            options["threads"] = scenario.threads
        self.pipe = GligenPipeline.from_engines(
            folder, runtime_backend(config), low_memory=config.low_memory, **options
        )
        backend = self.pipe.backend
        arrays = backend.arrays
        self.timer = CallTimer(arrays.synchronize)
        inner_run = backend.run

        zero_gate: dict[int, tuple[Any, bool]] = {}  # id(gate array) -> (array, is 0): read once

        def run(engine: str, inputs: Any) -> Any:
            stage = self.STAGE_OF.get(engine, engine)
            if engine == "unet" and "gate" in inputs:
                gate = inputs["gate"]
                if id(gate) not in zero_gate:
                    zero_gate[id(gate)] = (gate, float(np.asarray(arrays.to_host(gate)).ravel()[0]) == 0.0)
                if zero_gate[id(gate)][1]:
                    stage = "unet_plain"  # a folder without unet_plain runs the plain phase on unet
            tic = time.perf_counter()
            out = inner_run(engine, inputs)
            arrays.synchronize()
            self.timer.add(stage, time.perf_counter() - tic)
            return out

        backend.run = run  # this instance only: the pipeline's loop is untouched
        self.graph_bytes = _weights_bytes(folder, list(self.pipe.engines))
        # the weights counted once, at the precision the backend holds them in: FP16 engines 2
        # bytes; a built OpenVINO IR its own weight bytes per graph byte (bf16 ~2, int8 ~1)
        share = _built_weight_share(folder, runtime_backend(config), list(self.pipe.engines))
        self.weights_bytes = round(
            (params * (2 if engine_precision(config) == "fp16" else 4) if params else self.graph_bytes)
            * share
        )
        self.engine_keys = [k for k in engine_keys(folder) if k.split(":")[0] in self.pipe.engines]

    def generate(self, request: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self.timer.take()
        tic = time.perf_counter()
        result = self.pipe(request)
        return result.images, run_record(time.perf_counter() - tic, self.timer.take())

    def release(self) -> None:
        self.pipe.close()

    def sd_unet_step_times(self, calls: int) -> list[float] | None:
        """The plain SD UNet control on this backend (sd_control.py); None when it is not there."""
        from gligen_rt.benchmarks.sd_control import control_path, sd_unet_times

        path = control_path(self.folder.parent, self.scenario, engine_precision(self.config))
        try:
            return sd_unet_times(self.scenario, self.config, path, self.scenario.threads, calls)
        except Exception as e:  # a missing control is reported as such, not as a failed configuration
            log.warning("plain SD UNet control not measured on %s: %s", self.config.label, e)
            return None
