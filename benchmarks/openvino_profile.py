"""Where an OpenVINO build's UNet step goes, node by node:
``python -m gligen_rt.benchmarks.openvino_profile DIR/<openvino build> [--engine unet] [--gate G]``.

The engine is compiled from the build's IR with OpenVINO's per-node performance counters
(``PERF_COUNT``, a compile setting, so without the build's compiled-blob cache) and run on constant
inputs at the build's static shapes: one warm-up, then ``--runs`` timed inferences; the counters
are those of the last one. A gate-skip graph's Ifs are resolved to the branch that ``--gate``
selects (the fusers where it is not 0), because the runtime graph does not show inside an If; the
step is also timed with the Ifs kept, as the runtime runs it, so the two can be compared.

Every node of the runtime graph goes to one part:

- attention: a node that executes a Softmax of the source graph (OpenVINO's fused multi-head
  attention kernel, with both matrix products, or a stand-alone Softmax);
- convolution, and matmul (``FullyConnected``, ``MatMul`` and their quantized forms);
- other: normalisations, elementwise fusions, layout changes (``Reorder``, ``Transpose``) ...

and is counted as a GLIGEN fuser's when it comes from a ``/fuser/`` scope (the exporter's node
names). The report gives each part's time with its fuser share, the time per kernel (the plugin's
exec type, which says AMX / AVX-512 and the precision), and the slowest nodes. Compare figures only
within one run and one machine.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gligen_rt.benchmarks.openvino_memory import constant_inputs, resolve_ifs

MATMUL_TYPES = frozenset({"FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Gemm"})
PARTS = ("attention", "convolution", "matmul", "other")


def _ops_with_bodies(model: Any) -> Iterator[Any]:
    """The ops of ``model`` and of its If bodies, recursively."""
    for op in model.get_ops():
        yield op
        if op.get_type_name() == "If":
            for body in (op.get_then_body(), op.get_else_body()):
                yield from _ops_with_bodies(body)


def _name(port: Any) -> str:
    """A port's name as the engine spec gives it (a graph input may carry several)."""
    names = sorted(port.get_names())
    return next((n for n in names if "/" not in n), names[0] if names else "?")


def part_of(layer_type: str, originals: list[str], source_types: dict[str, str]) -> str:
    """The part (module docstring) of a runtime node of ``layer_type`` that executes the source
    nodes ``originals``."""
    if layer_type == "Softmax" or any(source_types.get(n) == "Softmax" for n in originals):
        return "attention"
    if layer_type == "Convolution":
        return "convolution"
    if layer_type in MATMUL_TYPES:
        return "matmul"
    return "other"


def _timed(request: Any, feeds: dict[str, Any], runs: int) -> float:
    request.infer(feeds)  # warm-up: first-inference allocations
    best = float("inf")
    for _ in range(runs):
        tic = time.perf_counter()
        request.infer(feeds)
        best = min(best, time.perf_counter() - tic)
    return best


def profile(
    build: Path,
    engine: str,
    gate: float,
    runs: int,
    threads: int | None,
    top: int,
    properties: dict[str, str] | None = None,
) -> list[str]:
    """The report's lines (module docstring); ``properties``: more compile properties (e.g.
    ``SNIPPETS_MODE``: ``DISABLE`` runs attention as separate MatMul / Softmax nodes)."""
    import numpy as np
    import openvino as ov

    from gligen_rt.engines.manifest import load_manifest
    from gligen_rt.engines.openvino import compile_config, mapped_files, mapped_pages_dropped

    manifest = build / f"{engine}.json"
    if not manifest.is_file():
        built = ", ".join(p.stem for p in sorted(build.glob("*.json"))) or "none"
        raise SystemExit(f"error: {build} has no build of {engine}: choose from {built}")
    m = load_manifest(manifest)
    xml = build / m.artifact
    hint = str(m.builder.get("precision_hint") or "f32")
    core = ov.Core()
    config = {**compile_config(hint, None, threads), **(properties or {})}

    def compiled_with(resolve: bool) -> tuple[Any, int, dict[str, str]]:
        with mapped_pages_dropped(*mapped_files(xml, None)):
            model = core.read_model(str(xml))
            ifs = resolve_ifs(model, gate != 0.0) if resolve else 0
            types = {op.get_friendly_name(): op.get_type_name() for op in _ops_with_bodies(model)}
            try:
                compiled = core.compile_model(model, "CPU", {**config, "PERF_COUNT": resolve})
            except RuntimeError as e:  # an unknown property or value: OpenVINO's message is long
                first = next((s for s in str(e).splitlines() if s.strip()), "?").strip()
                raise SystemExit(
                    f"error: OpenVINO refused to compile {engine} with {properties or config}: {first}"
                ) from None
            del model
        return compiled, ifs, types

    compiled, ifs, types = compiled_with(True)
    if any(not d.is_static for port in compiled.inputs for d in list(port.get_partial_shape())[1:]):
        raise SystemExit(
            f"error: {engine} of {build} was built for dynamic sizes: rebuild it with "
            "`gligen-rt build --static 1,H,W` to profile it at one size"
        )
    shapes = ", ".join(f"{_name(p)} {list(p.get_shape())}" for p in compiled.inputs)
    feeds = constant_inputs(compiled)
    for port in compiled.inputs:
        if "gate" in port.get_names():
            feeds[port.get_any_name()] = np.full_like(feeds[port.get_any_name()], gate)
    request = compiled.create_infer_request()
    step = _timed(request, feeds, runs)
    originals = {
        op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str).split(",")
        for op in compiled.get_runtime_model().get_ops()
    }
    nodes = []  # (ms, part, fuser, layer type, exec type, name)
    for info in request.get_profiling_info():
        ms = info.real_time.total_seconds() * 1e3
        names = originals.get(info.node_name, [info.node_name])
        fuser = any("/fuser/" in n for n in names)
        nodes.append(
            (ms, part_of(info.node_type, names, types), fuser, info.node_type, info.exec_type, info.node_name)
        )
    del request, compiled
    kept_step = None
    if ifs:  # the same step with its Ifs, as the runtime runs it
        compiled, _, _ = compiled_with(False)
        request = compiled.create_infer_request()
        kept_step = _timed(request, feeds, runs)
        del request, compiled

    total = sum(n[0] for n in nodes)
    by_part = collections.Counter()
    by_fuser = collections.Counter()
    for ms, part, fuser, *_ in nodes:
        by_part[part] += ms
        if fuser:
            by_fuser[part] += ms
    by_kernel = collections.Counter()
    for ms, _, _, layer, kernel, _ in nodes:
        by_kernel[(layer, kernel)] += ms
    resolved = f"{ifs} Ifs resolved to {'the fusers' if gate != 0.0 else 'the skip'}" if ifs else "no Ifs"
    lines = [
        f"OpenVINO build {build.name}, engine {engine}, gate {gate:g} ({resolved}), hint {hint}, "
        f"threads {threads or 'all'}"
        + "".join(f", {k} {v}" for k, v in (properties or {}).items())
        + f"; inputs {shapes}",
        f"  step {step * 1e3:.1f} ms (best of {runs})"
        + (
            f"; with its Ifs, as the runtime runs it: {kept_step * 1e3:.1f} ms"
            if kept_step is not None
            else ""
        )
        + f"; the nodes' counters sum to {total:.1f} ms",
        f"  {'part':<12} {'ms':>9} {'share':>7} {'fusers ms':>10}",
    ]
    for part in PARTS:
        share = by_part[part] / total if total else 0.0
        lines.append(f"  {part:<12} {by_part[part]:>9.1f} {share:>7.1%} {by_fuser[part]:>10.1f}")
    lines.append(f"  {'all':<12} {total:>9.1f} {1:>7.1%} {sum(by_fuser.values()):>10.1f}")
    lines.append("  per kernel (layer type, exec type):")
    for (layer, kernel), ms in by_kernel.most_common(top):
        lines.append(f"    {ms:>9.1f} ms  {layer} {kernel}")
    lines.append(f"  the {top} slowest nodes:")
    for ms, part, fuser, layer, kernel, name in sorted(nodes, reverse=True)[:top]:
        lines.append(f"    {ms:>9.2f} ms  {part:<11} {'fuser ' if fuser else ''}{layer} {kernel}  {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gligen_rt.benchmarks.openvino_profile",
        description="Per-node profile of one engine of a static OpenVINO build: time per part "
        "(attention, convolution, matmul, other) with the fusers' share, per kernel, slowest nodes.",
    )
    p.add_argument("build", type=Path, help="a build folder, DIR/openvino[-bf16|-int8|-int8a]")
    p.add_argument("--engine", default="unet", help="the engine to profile (default: unet)")
    p.add_argument("--gate", type=float, default=1.0, help="the gate input (default 1: a grounded step)")
    p.add_argument("--runs", type=int, default=3, help="timed inferences after one warm-up (default 3)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--top", type=int, default=12, help="kernels and nodes listed (default 12)")
    p.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another compile property, e.g. SNIPPETS_MODE=DISABLE (repeatable)",
    )
    args = p.parse_args(argv)
    if not args.build.is_dir():
        print(f"error: {args.build} is not a folder: give a DIR/<openvino build> folder", file=sys.stderr)
        return 2
    if args.runs < 1 or args.top < 1:
        print("error: --runs and --top must be at least 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.gate <= 1.0:
        print(f"error: --gate {args.gate:g} is outside [0, 1]", file=sys.stderr)
        return 2
    bad = [item for item in args.property if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        print(f"error: --property {bad[0]!r} is not KEY=VALUE", file=sys.stderr)
        return 2
    properties = dict(item.split("=", 1) for item in args.property)
    for line in profile(args.build, args.engine, args.gate, args.runs, args.threads, args.top, properties):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
