"""Run one configuration in this process: load, warm up, time repeated runs, measure memory.

Each ``Runner`` loads its pipeline (timed), then ``generate(request)`` returns the image and one run
record (end to end plus every engine call, measure.run_record). ``run_config`` drives a runner
through the scenario's warm-up and repeats and returns the configuration's result (JSON-ready);
the image goes to ``workdir/<label>.npy`` for the PSNR against the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.benchmarks.measure import (
    MemoryMonitor,
    first_run_summary,
    peak_rss_bytes,
    rss_bytes,
    run_record,
    stats,
    summarize_runs,
)
from gligen_rt.benchmarks.scenario import Config, Scenario, make_request

log = logging.getLogger(__name__)


class Runner:
    """One configuration's pipeline."""

    weights_bytes: int = 0  # bytes of the weights in use, counted once (the memory target's denominator)
    graph_bytes: int | None = None  # our runtime: bytes of the engine graphs it loaded
    engine_keys: list[str] | None = None  # what the run used (manifest keys / fingerprints)

    def generate(self, request: Any) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def release(self) -> None:
        """Free what the timed runs held (before the control is measured); optional."""

    def sd_unet_step_times(self, calls: int) -> list[float] | None:
        """Seconds per call of a plain SD UNet on the same backend and precision (None: not measured).

        Called after ``release`` and after the memory was read, so it never counts in the peak.
        """
        return None


def _set_threads(scenario: Scenario) -> int:
    import torch

    threads = scenario.threads
    if threads is None:
        import psutil

        threads = psutil.cpu_count(logical=False) or torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def _torch_model(scenario: Scenario):
    from gligen_ref.model import build_model
    from gligen_rt.core.config import preset

    return build_model(preset(scenario.model, scenario.modality), scenario.model_seed)


def _sync(device: str):
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return None


class ReferenceRunner(Runner):
    """gligen_ref's ReferencePipeline (FP32); engine calls timed by wrapping the model's methods."""

    STAGE_OF = {
        "encode_text": "text_encoder",
        "encode_images": "image_encoder",
        "grounding_tokens": "grounding",
        "unet_grounded": "unet_grounded",
        "unet_plain": "unet_plain",
        "vae_encode": "vae_encoder",
        "vae_decode": "vae_decoder",
    }

    def __init__(self, scenario: Scenario) -> None:
        from gligen_ref.pipeline import ReferencePipeline
        from gligen_rt.benchmarks.measure import CallTimer
        from gligen_rt.core.tokenizer import ClipTokenizer

        model = _torch_model(scenario)
        self.pipe = ReferencePipeline(model, ClipTokenizer.default(), device=scenario.device)
        self.timer = CallTimer(_sync(scenario.device))
        m = self.pipe.model
        for method, stage in self.STAGE_OF.items():
            setattr(m, method, self.timer.wrap(stage, getattr(m, method)))
        self.weights_bytes = _reference_weight_bytes(m)

    def generate(self, request: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self.timer.take()
        tic = time.perf_counter()
        result = self.pipe(request)
        return result.images, run_record(time.perf_counter() - tic, self.timer.take())


def _reference_weight_bytes(model: Any) -> int:
    """Bytes of the parameters the reference pipeline uses (machine.params_in_use, FP32)."""
    from gligen_rt.benchmarks.machine import params_in_use

    return params_in_use(model) * 4


class EagerRunner(Runner):
    """diffusers' eager modules (benchmarks/eager.py) in one precision."""

    def __init__(self, scenario: Scenario, precision: str) -> None:
        from gligen_rt.benchmarks.eager import EagerGLIGEN
        from gligen_rt.core.tokenizer import ClipTokenizer

        self.scenario = scenario
        self.eager = EagerGLIGEN(_torch_model(scenario), ClipTokenizer.default(), precision, scenario.device)
        self.weights_bytes = self.eager.weight_bytes()

    def generate(self, request: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return self.eager.generate(request)

    def sd_unet_step_times(self, calls: int) -> list[float] | None:
        from gligen_rt.benchmarks.eager import sd_unet_step_times

        return sd_unet_step_times(self.eager, self.scenario.size, calls)


def make_runner(
    scenario: Scenario, config: Config, engine_dir: Path | None, params: int | None = None
) -> Runner:
    if config.kind == "reference":
        return ReferenceRunner(scenario)
    if config.kind == "eager":
        return EagerRunner(scenario, config.precision)
    from gligen_rt.benchmarks.ours import OursRunner

    if engine_dir is None:
        raise ValueError("our runtime needs an engine folder")
    return OursRunner(scenario, config, engine_dir, params)


def run_config(
    scenario: Scenario,
    config: Config,
    workdir: Path,
    engine_dir: Path | None = None,
    params: int | None = None,
) -> dict[str, Any]:
    """Load, warm up, time ``scenario.repeats`` runs; the configuration's result (JSON-ready).

    ``params``: the model's parameter count in use (machine.params_in_use), for our runtime's
    weights-in-use figure (its process never imports torch to count them).
    """
    is_torch = config.kind != "ours"
    threads = _set_threads(scenario) if is_torch else scenario.threads
    request = make_request(scenario, workdir / "inputs")
    if config.feature_cache >= 2 or config.feature_cache_grounded >= 2:  # ours only: the baselines
        request = dataclasses.replace(  # run every UNet whole
            request, feature_cache=config.feature_cache, feature_cache_grounded=config.feature_cache_grounded
        )
    base = rss_bytes()
    gpu = scenario.device == "cuda"
    if gpu and is_torch:
        import torch

        torch.cuda.reset_peak_memory_stats()
    with MemoryMonitor(gpu=gpu) as mon:
        tic = time.perf_counter()
        runner = make_runner(scenario, config, engine_dir, params)
        load_s = time.perf_counter() - tic
        after_load = rss_bytes()
        log.info("%s: loaded in %.1f s", config.label, load_s)
        warm, runs = [], []
        image = None
        for i in range(scenario.warmup + scenario.repeats):
            image, record = runner.generate(request)
            (warm if i < scenario.warmup else runs).append(record)
            phase = "warm-up" if i < scenario.warmup else "run"
            log.info("%s: %s %d: %.2f s end to end", config.label, phase, i + 1, record["e2e"])
    memory: dict[str, Any] = {
        "base_rss": base,
        "after_load_rss": after_load,
        "peak_rss": max(peak_rss_bytes(), mon.peak_rss),
        "weights_bytes": runner.weights_bytes,
        "torch_imported": "torch" in sys.modules,
    }
    if runner.graph_bytes is not None:
        memory["graph_bytes"] = runner.graph_bytes
    if gpu:
        memory["gpu_peak_nvidia_smi"] = mon.peak_gpu
        if is_torch:
            import torch

            memory["gpu_peak_allocated"] = int(torch.cuda.max_memory_allocated())
    runner.release()
    control = runner.sd_unet_step_times(max(2, scenario.repeats))
    assert image is not None
    np.save(workdir / f"{config.label.replace(' ', '_')}.npy", image)
    first = (warm or runs)[0]
    return {
        **config.to_dict(),
        "label": config.label,
        "status": "ok",
        "threads": threads,
        "load_s": load_s,
        "first_run": first_run_summary(first),
        "steady": summarize_runs(runs),
        "runs": [{k: r[k] for k in ("e2e", "engine_sum", "overhead", "calls")} for r in runs],
        "sd_unet_step": stats(control) if control else None,
        "memory": memory,
        "engine_keys": runner.engine_keys,
    }
