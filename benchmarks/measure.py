"""Timing, memory and image-quality measurements shared by every configuration (no torch at import).

- ``CallTimer`` wraps the engine calls of one configuration and records each call's wall time
  (``sync`` is called before the clock stops: ``torch.cuda.synchronize`` for eager CUDA runs).
- ``MemoryMonitor`` samples this process's resident memory (and GPU memory, where there is one)
  in a thread; ``peak_rss_bytes`` is the kernel's high-water mark (ru_maxrss).
- ``stats`` gives median / p90 / min / mean / n of a list of seconds.
- ``psnr`` compares two uint8 images.
"""

from __future__ import annotations

import functools
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.imageio import psnr  # noqa: F401  (one PSNR: core's; re-exported here)

# Canonical stage names (one per engine) and what the report calls them.
STAGES = {
    "text_encoder": "text encoding",
    "image_encoder": "image encoding",
    "grounding": "grounding tokens",
    "unet_grounded": "UNet step, grounded",
    "unet_plain": "UNet step, plain",
    "unet_shallow": "UNet step, shallow (feature cache)",
    "unet_shallow_grounded": "UNet step, shallow grounded (feature cache)",
    "vae_encoder": "VAE encode",
    "vae_decoder": "VAE decode",
}
PER_CALL_STAGES = (
    "unet_grounded",
    "unet_plain",
    "unet_shallow",
    "unet_shallow_grounded",
)  # reported per call; the others per run (summed)


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """median, p90 (linear interpolation), min, mean and n of ``values`` (seconds); {} when empty."""
    if len(values) == 0:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


class CallTimer:
    """Wall time of every call of the wrapped functions, grouped by stage name."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.calls: dict[str, list[float]] = defaultdict(list)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed under ``stage`` (same signature and result)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            tic = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.sync is not None:
                self.sync()
            self.calls[stage].append(time.perf_counter() - tic)
            return out

        return timed

    def add(self, stage: str, seconds: float) -> None:
        self.calls[stage].append(seconds)

    def take(self) -> dict[str, list[float]]:
        """The calls recorded since the last take (and forget them)."""
        calls, self.calls = dict(self.calls), defaultdict(list)
        return calls


def run_record(e2e: float, calls: dict[str, list[float]], nested: Sequence[str] = ()) -> dict[str, Any]:
    """One timed run: end to end, every engine call, their sum and the runtime overhead (seconds).

    ``nested``: stages timed inside another stage's calls (diffusers' position net runs inside every
    UNet call), left out of the sum.
    """
    engine = sum(sum(v) for k, v in calls.items() if k not in nested)
    return {
        "e2e": e2e,
        "calls": calls,
        "engine_sum": engine,
        "overhead": e2e - engine,
        "nested": list(nested),
    }


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state statistics over timed runs.

    Per-call stages (UNet steps) pool every call of every run; the other stages sum the calls of
    one run (text encoding may be several calls) and take statistics over runs.
    """
    out: dict[str, Any] = {k: stats([r[k] for r in runs]) for k in ("e2e", "engine_sum", "overhead")}
    stages: dict[str, Any] = {}
    names = sorted({s for r in runs for s in r["calls"]})
    for s in names:
        if s in PER_CALL_STAGES:
            stages[s] = stats([t for r in runs for t in r["calls"].get(s, [])])
        else:
            stages[s] = stats([sum(r["calls"].get(s, [])) for r in runs])
        stages[s]["calls_per_run"] = len(runs[0]["calls"].get(s, []))
    out["stages"] = stages
    return out


def first_run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The first run after loading: end to end and each stage (per-call stages: the first call)."""
    stages = {}
    for s, v in run["calls"].items():
        stages[s] = v[0] if s in PER_CALL_STAGES and v else sum(v)
    return {"e2e": run["e2e"], "overhead": run["overhead"], "stages": stages}


def rss_bytes() -> int:
    """This process's resident set size now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark since it started (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def gpu_memory_used_bytes(pid: int | None = None) -> int | None:
    """GPU memory held by process ``pid`` (all processes if None) per nvidia-smi, or None without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-compute-apps=pid,used_memory" if pid is not None else "--query-gpu=memory.used"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            if pid is None:
                total += int(parts[0]) * 2**20
            elif int(parts[0]) == pid:
                total += int(parts[1]) * 2**20
        except (ValueError, IndexError):
            continue
    return total


class MemoryMonitor:
    """Samples resident memory (and GPU memory with ``gpu=True``) every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.05, gpu: bool = False, gpu_interval: float = 0.5) -> None:
        self.interval = interval
        self.gpu = gpu
        self.gpu_interval = gpu_interval
        self.peak_rss = 0
        self.peak_gpu: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import os

        import psutil

        proc = psutil.Process()
        last_gpu = 0.0
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, int(proc.memory_info().rss))
            now = time.monotonic()
            if self.gpu and now - last_gpu >= self.gpu_interval:
                used = gpu_memory_used_bytes(os.getpid())
                if used is not None:
                    self.peak_gpu = max(self.peak_gpu or 0, used)
                last_gpu = now
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
