"""Export every engine of the SD-1.4-size GLIGEN (random weights) and report what the exporter did.

Per engine: node counts before/after the fused gated attention, file sizes FP32 / FP16, the parity
numbers measured on ONNX Runtime CPU at export, export time and peak memory; optionally the
TensorRT-RTX builds of the two UNets (build time, plan size, peak memory). One JSON line per run
goes to ``--results`` with the environment it ran in.

    python -m gligen_rt.benchmarks.export_sd14                      # sd14: ~10+ GB, many minutes
    python -m gligen_rt.benchmarks.export_sd14 --model tiny --build-rtx   # the same on the tiny model

Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "export_sd14.jsonl"
RTX_ENGINES = ("unet", "unet_plain")


@dataclass
class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every ``interval`` s)."""

    interval: float = 0.05
    baseline: int = 0
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        try:
            import psutil
        except ImportError:  # the process's lifetime peak (Linux: KiB) is all there is then
            import resource

            yield self
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return
        proc = psutil.Process()
        self.baseline = self.peak = proc.memory_info().rss
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, proc.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, proc.memory_info().rss)

    @property
    def peak_gb(self) -> float:
        return round(self.peak / 2**30, 2)


def _engine_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """{engine: {nodes, nodes_unfused, size, parity, precision, flavor}} from a folder's manifests."""
    from gligen_rt.engines import manifest as M

    rows: dict[str, dict[str, Any]] = {}
    for name in M.load_folder_manifest(folder).engines:
        m = M.load_manifest(folder / f"{name}.json")
        rows[name] = {
            "precision": m.precision,
            "flavor": m.flavor,
            "nodes": m.builder.get("nodes"),
            "nodes_fp32_graph": m.builder.get("nodes_fp32_graph"),
            "nodes_unfused": m.builder.get("nodes_unfused"),
            "size_bytes": m.artifact_size,
            "external_data": m.builder.get("external_data"),
            "max_rel_err": m.parity.get("max_rel_err"),
            "tolerance": m.parity.get("tolerance"),
        }
    return rows


def export_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Export the folders (one per precision) and collect their numbers."""
    from gligen_rt.export.api import export_engines, load_source

    t0 = time.perf_counter()
    source = load_source(args.model, args.modality, args.inpaint, args.seed)
    log.info("model %s built in %.0f s", source.config.key, time.perf_counter() - t0)
    out: dict[str, Any] = {"model": source.config.key, "precisions": {}}
    for precision in args.precisions:
        folder = work / f"{source.config.key}-{precision}"
        mem = PeakMemory()
        tic = time.perf_counter()
        with mem.measure():
            export_engines(
                args.model,
                folder,
                precision,
                opset=args.opset,
                progress=sys.stderr.isatty(),
                count_unfused=precision == "fp32",
                source=source,
                threads=args.threads,
                seed=args.seed,
            )
        out["precisions"][precision] = {
            "folder": str(folder),
            "export_s": round(time.perf_counter() - tic, 1),
            "peak_rss_gb": mem.peak_gb,
            "engines": _engine_rows(folder),
        }
    return out


def build_rtx(folder: Path, engines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Build ``engines`` of ``folder`` with TensorRT-RTX, one at a time: time, plan size, peak RSS."""
    from gligen_rt.engines.build import build

    rows: dict[str, dict[str, Any]] = {}
    for name in engines:
        mem = PeakMemory()
        tic = time.perf_counter()
        with mem.measure():
            (plan,) = build(folder, "tensorrt-rtx", engines=[name], progress=False)
        rows[name] = {
            "build_s": round(time.perf_counter() - tic, 1),
            "plan_bytes": plan.stat().st_size,
            "peak_rss_gb": mem.peak_gb,
        }
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def report(result: dict[str, Any]) -> str:
    """The table printed at the end."""
    precisions = result["precisions"]
    first = next(iter(precisions.values()))["engines"]
    head = ["engine", "nodes unfused", "nodes fused"]
    for p in precisions:
        head += [f"{p} MB", f"{p} max rel err"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for name in first:
        row = first[name]
        fused = row["nodes_fp32_graph"] if row["nodes_unfused"] is not None else row["nodes"]
        cells = [name, str(row["nodes_unfused"] or "-"), str(fused)]
        for p in precisions:
            r = precisions[p]["engines"].get(name, {})
            err = r.get("max_rel_err")
            cells += [_mb(r.get("size_bytes")), "-" if err is None else f"{err:.2e} ({r.get('flavor')})"]
        lines.append(" | ".join(cells))
    for p, v in precisions.items():
        lines.append(f"{p}: export {v['export_s']} s, peak RSS {v['peak_rss_gb']} GB")
    for name, r in result.get("rtx", {}).items():
        lines.append(
            f"tensorrt-rtx {name}: build {r['build_s']} s, plan {_mb(r['plan_bytes'])} MB, "
            f"peak RSS {r['peak_rss_gb']} GB"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export_sd14", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", choices=["sd14", "tiny-random"], default="sd14", help="architecture (random weights)"
    )
    p.add_argument("--modality", default="text-box")
    p.add_argument("--inpaint", action="store_true")
    p.add_argument("--precisions", default="fp32,fp16", help="comma-separated: fp32,fp16")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for export and parity")
    p.add_argument(
        "--build-rtx", action="store_true", help="also build unet and unet_plain with TensorRT-RTX"
    )
    p.add_argument("--out", type=Path, default=None, help="keep the engine folders here (default: temporary)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON-lines file to append to")
    args = p.parse_args(argv)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in args.precisions if s not in ("fp32", "fp16")]
    if bad:
        p.error(f"unknown precisions {bad}: use fp32 and/or fp16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from gligen_rt.benchmarks.env import environment
    from gligen_rt.core.errors import GligenError

    work = args.out or Path(tempfile.mkdtemp(prefix="gligen-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    status = 0
    result: dict[str, Any] = {"benchmark": "export_sd14", "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        result.update(export_all(args, work))
        if args.build_rtx:
            precision = "fp16" if "fp16" in result["precisions"] else next(iter(result["precisions"]))
            result["rtx_precision"] = precision
            result["rtx"] = build_rtx(Path(result["precisions"][precision]["folder"]), RTX_ENGINES)
        print(report(result))
    except GligenError as e:
        print(f"error: {e}", file=sys.stderr)
        result["error"] = str(e)
        status = e.exit_code
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    try:
        result["environment"] = environment()
    except ImportError as e:  # psutil missing
        result["environment"] = {"error": f"{e}"}
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(result, sort_keys=True) + "\n")
    log.info("result appended to %s", args.results)
    return status


if __name__ == "__main__":
    sys.exit(main())
