"""OpenVINO: compiles the exported ONNX graphs directly (the fastest CPU path measured, ENV_NOTES).

`precision_hint` "bf16" uses the CPU's BF16 units (about 2x over f32 on AVX512_BF16 CPUs) with a
larger error (relative L2 of eps ~2.6e-2 on the UNet): measure the final image before making it a
default. With `cache_dir`, compiled blobs are kept there and later loads skip compilation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import BackendUnavailable

log = logging.getLogger(__name__)

PRECISION_HINTS = ("f32", "bf16", "f16")


def import_openvino() -> Any:
    """Import openvino; BackendUnavailable (one line) when it is missing."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino is not installed: pip install 'gligen-rt[openvino]'") from None
    return openvino


def compile_config(
    precision_hint: str = "f32", cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """The properties passed to Core.compile_model."""
    if precision_hint not in PRECISION_HINTS:
        raise ValueError(f"precision hint {precision_hint!r} is not one of {PRECISION_HINTS}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY"}
    if cache_dir is not None:
        config["CACHE_DIR"] = str(Path(cache_dir))
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compile_model(
    onnx_path: str | os.PathLike[str],
    device: str = "CPU",
    precision_hint: str = "f32",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Any:
    """An openvino.CompiledModel for one exported graph.

    device: an OpenVINO device name ("CPU", "GPU", "AUTO"); precision_hint: "f32" | "bf16" | "f16";
    cache_dir: folder for compiled blobs (created); threads: inference threads (None: all cores);
    shapes: {input: shape} to compile a static model (otherwise the graph's dynamic dims stay).
    Call the result with {input name: array}; it returns outputs indexable by name.
    """
    ov = import_openvino()
    core = ov.Core()
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    config = compile_config(precision_hint, cache_dir, threads)
    if shapes:
        model = core.read_model(str(onnx_path))
        model.reshape({name: list(shape) for name, shape in shapes.items()})
        return core.compile_model(model, device, config)
    # Compiling from the path lets a cached blob skip reading the model at all.
    return core.compile_model(str(onnx_path), device, config)
