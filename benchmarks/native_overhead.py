"""Per-step runtime overhead of the native runtime beside the Python runtime's, in one run.

    python -m gligen_rt.benchmarks.native_overhead --cli build/native/runtime/native/gligen-rt-native \
        [--engines DIR | tiny-random text-box] [--backend openvino] [--steps 20] [--repeat 5]

Overhead = end-to-end seconds of a request minus the seconds spent inside engine calls, divided by
the number of denoising steps (both runtimes time their engine calls the same way, around the
backend's run). The same engine folder, backend, request and seed for both; the first request of
each is a warm-up and not counted; the median of the rest is reported. Prints one JSON line (with
the machine, versions and git sha) and a table; exits 1 when the native run fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOAL_MS = 0.2  # per-step overhead goal of the native runtime


def _request(steps: int) -> dict[str, Any]:
    return {
        "prompt": "a photo of a cat and a dog",
        "objects": [
            {"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9]},
            {"phrase": "a dog", "box": [0.55, 0.1, 0.95, 0.6]},
        ],
        "seed": 1,
        "steps": steps,
        "sampler": "plms",
    }


def python_runs(folder: Path, backend: str, request_path: Path, repeat: int) -> list[dict[str, float]]:
    from gligen_rt.core.request import request_from_json
    from gligen_rt.runtime.pipeline import GligenPipeline

    req = request_from_json(request_path)
    with GligenPipeline.from_engines(folder, backend) as pipe:
        return [pipe(req).timings for _ in range(repeat + 1)][1:]


def native_runs(
    cli: str, folder: Path, backend: str, request_path: Path, repeat: int, out: Path
) -> list[dict]:
    cmd = [cli, "generate", "--engines", str(folder), "--request", str(request_path), "--out", str(out)]
    cmd += ["--backend", backend, "--repeat", str(repeat + 1), "--print-timings"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: native run failed: {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][1:]


def summarize(runs: list[dict[str, float]], steps: int) -> dict[str, float]:
    per_step = [1e3 * r["overhead"] / steps for r in runs]
    return {
        "overhead_ms_per_step": statistics.median(per_step),
        "overhead_ms_per_step_min": min(per_step),
        "total_s": statistics.median(r["total"] for r in runs),
        "engines_s": statistics.median(r["engines"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cli", required=True, help="the gligen-rt-native executable")
    p.add_argument("--engines", type=Path, help="engine folder (default: the tiny-random text-box folder)")
    p.add_argument("--backend", default="openvino", choices=("openvino", "openvino-bf16", "ort-cpu"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    from gligen_rt.benchmarks.env import environment

    folder = args.engines
    if folder is None:
        from gligen_rt.runtime.tiny import tiny_engines

        folder = tiny_engines("text-box")
    with tempfile.TemporaryDirectory() as tmp:
        request_path = Path(tmp) / "request.json"
        request_path.write_text(json.dumps(_request(args.steps)))
        py = summarize(python_runs(folder, args.backend, request_path, args.repeat), args.steps)
        nat = summarize(
            native_runs(args.cli, folder, args.backend, request_path, args.repeat, Path(tmp) / "o.png"),
            args.steps,
        )
    record = {
        "benchmark": "native_overhead",
        "engines": folder.name,  # the folder name (model key), not a machine path
        "backend": args.backend,
        "steps": args.steps,
        "repeat": args.repeat,
        "python": py,
        "native": nat,
        "goal_ms_per_step": GOAL_MS,
        "native_meets_goal": nat["overhead_ms_per_step"] < GOAL_MS,
        "env": environment(),
    }
    print(json.dumps(record))
    print(f"{'runtime':<8} {'overhead ms/step':>17} {'min':>8} {'total s':>9} {'engines s':>10}")
    for name, r in (("python", py), ("native", nat)):
        print(
            f"{name:<8} {r['overhead_ms_per_step']:>17.3f} {r['overhead_ms_per_step_min']:>8.3f} "
            f"{r['total_s']:>9.3f} {r['engines_s']:>10.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
