"""One benchmark run: every configuration side by side, one JSON line, the table and the plot.

Order: the machine's matmul peak and the FLOPs per UNet step (while nothing else of ours runs),
the engines our runtime needs (exported once, cached in the engine folder), then each
configuration in its own process (worker.py), the reference first. The images are compared with
the reference's (PSNR), the record is appended to ``OUT/bench.jsonl`` and the report renders
``OUT/<scenario key>.md`` and ``.png`` from that line.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.benchmarks.env import environment
from gligen_rt.benchmarks.measure import psnr
from gligen_rt.benchmarks.scenario import Config, Scenario, plan_configs

log = logging.getLogger(__name__)

SCHEMA = 1
JSONL_NAME = "bench.jsonl"


@dataclass
class Options:
    """What to run beside the scenario, and where results go."""

    backends: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    eager: bool = True
    eager_precisions: list[str] | None = None  # default: every one the device has
    cached_only: bool = False  # with a feature cache: none of our configurations without it
    low_memory: bool = False  # each of our configurations once more with the runtime's low_memory
    reference: bool = True
    out_dir: Path = Path("benchmarks/results")
    engine_dir: Path = Path(".cache/bench-engines")
    isolate: bool = True  # one process per configuration (False: in this process, for quick tests)
    command: str | None = None  # the command line, recorded with the results


def failure(e: BaseException) -> dict[str, str]:
    """A task's result when it raised: ``unavailable`` for a missing backend library, else ``failed``."""
    from gligen_rt.core.errors import BackendUnavailable

    status = "unavailable" if isinstance(e, BackendUnavailable) else "failed"
    return {
        "status": status,
        "reason": f"{type(e).__name__}: {' '.join(str(e).splitlines()) or type(e).__name__}",
    }


def execute(task: dict[str, Any], scratch: Path, isolate: bool = True) -> dict[str, Any]:
    """Run a worker task in a fresh process (or here); its JSON result, ``status: failed`` on error."""
    if not isolate:
        import torch

        from gligen_rt.benchmarks.worker import run_task

        # A task sets torch's thread count for its measurement; in this process that must not
        # outlive the task (it changes the rounding of every later torch computation here).
        threads = torch.get_num_threads()
        try:
            return run_task(task)
        except Exception as e:  # recorded, the run goes on with the next configuration
            log.exception("task failed")
            return failure(e)
        finally:
            torch.set_num_threads(threads)
    scratch.mkdir(parents=True, exist_ok=True)
    n = len(list(scratch.glob("task*.json")))
    task_path, result_path = scratch / f"task{n}.json", scratch / f"result{n}.json"
    task_path.write_text(json.dumps(task))
    proc = subprocess.run(
        [sys.executable, "-m", "gligen_rt.benchmarks.worker", str(task_path), str(result_path)]
    )
    if result_path.exists():
        return json.loads(result_path.read_text())
    return {"status": "failed", "reason": f"worker exited with status {proc.returncode} and no result"}


def _task(
    kind: str, scenario: Scenario, config: Config | None, workdir: Path, engine_dir: Path | None
) -> dict:
    return {
        "task": kind,
        "scenario": scenario.to_dict(),
        "config": (config or Config("reference")).to_dict(),
        "workdir": str(workdir),
        "engine_dir": str(engine_dir) if engine_dir is not None else None,
    }


def engine_folder(root: Path, scenario: Scenario, config: Config) -> Path:
    """Where the engines of ``config`` live: one folder per model, seed, engine precision and size."""
    from gligen_rt.benchmarks.ours import engine_precision

    skip = "-gateskip" if scenario.gate_skip else ""
    skip += "-featurecache" if config.feature_cache >= 2 or config.feature_cache_grounded >= 2 else ""
    skip += f"-td{scenario.token_downsample}" if scenario.token_downsample > 1 else ""
    name = f"{scenario.model}-{scenario.modality}-seed{scenario.model_seed}-{engine_precision(config)}-{scenario.size}px{skip}"
    return root / name


def run_benchmark(scenario: Scenario, options: Options) -> dict[str, Any]:
    """Run every configuration; append the record to ``options.out_dir/bench.jsonl``; render the report.

    Returns the record (see report.py for its fields).
    """
    from gligen_rt.benchmarks.machine import cpu_has_bf16
    from gligen_rt.benchmarks.report import render

    env = environment()
    configs, skipped = plan_configs(
        scenario,
        options.backends,
        options.precisions,
        eager=options.eager,
        reference=options.reference,
        cpu_bf16=cpu_has_bf16(),
        eager_precisions=options.eager_precisions,
        cached_only=options.cached_only,
        low_memory=options.low_memory,
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    log.info("scenario %s: %s", scenario.key, ", ".join(c.label for c in configs))
    with tempfile.TemporaryDirectory(prefix="gligen-bench-") as tmp:
        work = Path(tmp)
        machine = execute(_task("machine", scenario, None, work, None), work / "tasks", options.isolate)
        results: list[dict[str, Any]] = []
        # (engine folder, runtime backend) -> its export + build: configurations sharing a folder
        # (OpenVINO bf16 and int8 both run the FP32 graphs) still get their own backend's build
        exported: dict[tuple[Path, str], dict[str, Any]] = {}
        from gligen_rt.core.progress import progress

        for config in progress(configs, desc="bench", unit="config"):
            engine_dir = None
            if config.kind == "ours":
                from gligen_rt.benchmarks.ours import runtime_backend, unavailable_reason

                why = unavailable_reason(config.backend)
                if why is not None:
                    log.info("%s: unavailable: %s", config.label, why)
                    results.append(
                        {**config.to_dict(), "label": config.label, "status": "unavailable", "reason": why}
                    )
                    continue
                engine_dir = engine_folder(options.engine_dir, scenario, config)
                key = (engine_dir, runtime_backend(config))
                if key not in exported:
                    log.info("engines for %s in %s", config.label, engine_dir.name)
                    exported[key] = execute(
                        _task("export", scenario, config, work, engine_dir), work / "tasks", options.isolate
                    )
                if exported[key].get("status") in ("failed", "unavailable"):
                    results.append({**config.to_dict(), "label": config.label, **exported[key]})
                    continue
            log.info("running %s", config.label)
            task = _task("config", scenario, config, work, engine_dir)
            task["params_in_use"] = (machine.get("flops") or {}).get("params_in_use")
            result = execute(task, work / "tasks", options.isolate)
            results.append({**config.to_dict(), "label": config.label, **result})
        _add_psnr(results, work)
    record = {
        "schema": SCHEMA,
        "time": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "command": options.command,
        "key": scenario.key,
        "scenario": scenario.to_dict(),
        "env": env,
        "machine": machine,
        "configs": results,
        "skipped": skipped,
        "engines": {
            f"{folder.name}/{backend}": {k: v for k, v in info.items() if k != "dir"}
            for (folder, backend), info in exported.items()
        },
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with open(options.out_dir / JSONL_NAME, "a") as f:
        f.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
    render(record, options.out_dir)
    return record


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _add_psnr(results: list[dict[str, Any]], work: Path) -> None:
    """PSNR (dB) of every configuration's image against the FP32 reference's (capped at 99 when equal)."""
    ref_path = work / "reference_fp32.npy"
    if not ref_path.exists():
        return
    ref = np.load(ref_path)
    for r in results:
        path = work / f"{r['label'].replace(' ', '_')}.npy"
        if r.get("status") == "ok" and path.exists():
            value = psnr(np.load(path), ref)
            r["psnr_db"] = min(value, 99.0)
