"""Where an OpenVINO build's resident memory goes, engine by engine:
``python -m gligen_rt.benchmarks.openvino_memory DIR/<openvino build> [--engines a,b] [--unroll-if]``.

Each engine of the build is compiled as the runtime compiles it (engines/openvino.py
``compile_model``: the IR's compiled blob from the build's cache, the mapped weight pages dropped)
and kept, like the runtime keeps it, then run twice on constant inputs at the build's static shapes
(``gate`` 0.5: a gate-skip UNet runs its fusers). Per engine it prints the change of this process's
resident memory at each step: compiling, the first inference, the second, and
``CompiledModel.release_memory`` (what the runtime's ``trim`` frees). ``--unroll-if`` compiles the
UNets with every ``If`` resolved to its then-branch (no compiled blob), which measures what the
gate-skip Ifs cost: the CPU plugin gives each If body buffers of its own, allocated when it
compiles, which ``release_memory`` does not free.

One process per measurement (a freed model's memory is not always given back to the system, so a
second measurement in the same process would read low); figures are this process's RSS, so
compare them only within one run and one machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.benchmarks.measure import rss_bytes as rss

GiB = 2**30


def constant_inputs(compiled: Any, batch: int = 2) -> dict[str, np.ndarray]:
    """Inputs at the compiled model's shapes (a dynamic dimension gets ``batch``): floats 0.5,
    integers 1 (token ids, a gate of 0.5)."""
    feeds = {}
    for port in compiled.inputs:
        shape = [d.get_length() if d.is_static else batch for d in port.get_partial_shape()]
        dtype = port.get_element_type().to_dtype()
        feeds[port.get_any_name()] = np.full(shape, 0.5 if dtype.kind == "f" else 1, dtype)
    return feeds


def resolve_ifs(model: Any, branch: bool = True) -> int:
    """Replace every top-level If's condition of ``model`` (an ov.Model) by the constant ``branch``:
    the CPU plugin then inlines that branch. Returns how many Ifs there were."""
    import openvino as ov

    constant = ov.opset13.constant(np.array(branch)).output(0)
    ifs = [op for op in model.get_ops() if op.get_type_name() == "If"]
    for op in ifs:
        op.input(0).replace_source_output(constant)
    model.validate_nodes_and_infer_types()
    return len(ifs)


def _compile_unrolled(xml: Path, hint: str, threads: int | None) -> Any:
    """The IR compiled with every top-level If's condition replaced by a constant True (the plugin
    then inlines the then-branch); no blob cache, so it compiles from the IR."""
    import openvino as ov

    from gligen_rt.engines.openvino import compile_config, mapped_files, mapped_pages_dropped

    core = ov.Core()
    with mapped_pages_dropped(*mapped_files(xml, None)):
        model = core.read_model(str(xml))
        resolve_ifs(model)
        compiled = core.compile_model(model, "CPU", compile_config(hint, None, threads))
        del model
    return compiled


def measure(build: Path, engines: list[str] | None, unroll_if: bool, threads: int | None) -> list[str]:
    """The report's lines (module docstring)."""
    from gligen_rt.engines.manifest import load_manifest
    from gligen_rt.engines.openvino import compile_model, mapped_files, mapped_pages_dropped
    from gligen_rt.engines.spec import UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED

    manifests = {p.stem: load_manifest(p) for p in sorted(build.glob("*.json"))}
    if not manifests:
        raise SystemExit(f"error: {build} holds no built engines: give a DIR/<openvino build> folder")
    names = engines or list(manifests)
    missing = [n for n in names if n not in manifests]
    if missing:
        raise SystemExit(
            f"error: {build} has no build of {', '.join(missing)}: choose from {', '.join(manifests)}"
        )
    lines = [
        f"OpenVINO build {build.name}: resident memory per engine, GiB "
        f"({'Ifs unrolled, ' if unroll_if else ''}threads {threads or 'all'})",
        f"  {'engine':<22} {'IR weights':>10} {'compile':>8} {'1st run':>8} {'2nd run':>8} {'trim':>8}",
    ]
    kept: list[Any] = []
    start = rss()
    for name in names:
        m = manifests[name]
        xml = build / m.artifact
        cache = build / str(m.builder.get("cache_dir") or "cache")
        hint = str(m.builder.get("precision_hint") or "f32")
        unrolled = unroll_if and name in (UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED)
        a = rss()
        compiled = (
            _compile_unrolled(xml, hint, threads)
            if unrolled
            else compile_model(xml, "CPU", hint, cache, threads=threads)
        )
        b = rss()
        if any(not d.is_static for port in compiled.inputs for d in list(port.get_partial_shape())[1:]):
            raise SystemExit(
                f"error: {name} of {build} was built for dynamic sizes: rebuild it with "
                f"`gligen-rt build --static 1,H,W` to measure it at one size"
            )
        request = compiled.create_infer_request()
        feeds = constant_inputs(compiled)
        with mapped_pages_dropped(*mapped_files(xml, cache)):  # as the runtime's first inference
            request.infer(feeds)
        c = rss()
        request.infer(feeds)
        d = rss()
        compiled.release_memory()
        e = rss()
        request.infer(feeds)  # back to its working state, as the next request finds it
        kept.append((compiled, request))
        weights = xml.with_suffix(".bin").stat().st_size
        lines.append(
            f"  {name + (' (unrolled)' if unrolled else ''):<22} {weights / GiB:>10.3f} {(b - a) / GiB:>+8.3f} "
            f"{(c - b) / GiB:>+8.3f} {(d - c) / GiB:>+8.3f} {(e - d) / GiB:>+8.3f}"
        )
    lines.append(
        f"  all {len(names)} compiled and run: {(rss() - start) / GiB:.3f} GiB above the process's start"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gligen_rt.benchmarks.openvino_memory",
        description="Resident memory per engine of an OpenVINO build (compile, first and second inference, "
        "release_memory).",
    )
    p.add_argument("build", type=Path, help="a build folder, DIR/openvino[-bf16|-int8|-int8a]")
    p.add_argument("--engines", default=None, help="comma-separated engines (default: every built one)")
    p.add_argument("--unroll-if", action="store_true", help="compile the UNets with their Ifs resolved")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    args = p.parse_args(argv)
    if not args.build.is_dir():
        print(f"error: {args.build} is not a folder: give a DIR/<openvino build> folder", file=sys.stderr)
        return 2
    engines = [e for e in args.engines.split(",") if e] if args.engines else None
    for line in measure(args.build, engines, args.unroll_if, args.threads):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
