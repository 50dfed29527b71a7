"""One measurement in a fresh process: ``python -m gligen_rt.benchmarks.worker TASK.json RESULT.json``.

Every configuration runs in its own process so its peak memory, its first run and its library
state (oneDNN caches, thread pools, allocators) are its own. TASK.json (scenario.dump_task):
``{"task": "config" | "machine" | "export", "scenario": {...}, "config": {...}, "workdir": str,
"engine_dir": str | null}``. RESULT.json gets the task's JSON result; failures are written there
too (``status: failed``, or ``unavailable`` for a missing backend library, with the error in one line) and the exit status is non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from gligen_rt.benchmarks.scenario import Config, Scenario

log = logging.getLogger(__name__)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    scenario = Scenario.from_dict(task["scenario"])
    kind = task.get("task", "config")
    if kind == "machine":
        from gligen_rt.benchmarks.machine import matmul_peak, openvino_matmul_peak, unet_flops

        peaks = matmul_peak(scenario.matmul_size, scenario.device)
        if scenario.device == "cpu":
            peaks.update(openvino_matmul_peak(scenario.matmul_size))
        return {
            "matmul_gflops": peaks,
            "flops": unet_flops(scenario),
        }
    config = Config.from_dict(task["config"])
    engine_dir = Path(task["engine_dir"]) if task.get("engine_dir") else None
    if kind == "export":
        from gligen_rt.benchmarks.ours import ensure_engines

        assert engine_dir is not None
        return ensure_engines(scenario, config, engine_dir)
    from gligen_rt.benchmarks.runners import run_config

    return run_config(scenario, config, Path(task["workdir"]), engine_dir, task.get("params_in_use"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m gligen_rt.benchmarks.worker TASK.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    task = json.loads(Path(argv[0]).read_text())
    try:
        result = run_task(task)
        code = 0
    except Exception as e:  # the parent records the failure and goes on with the next configuration
        from gligen_rt.benchmarks.harness import failure

        traceback.print_exc()
        result = failure(e)
        code = 1
    Path(argv[1]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
