"""Export one engine: PyTorch wrapper -> ONNX (-> FP16) -> checks -> files moved into place.

`export_engine` runs, in a temporary folder inside the output folder:

1. ``torch.onnx.export`` of the engine's wrapper (export/wrappers.py) at a small traced shape, with
   dynamic axes from the spec: the TorchScript exporter at opset < 23 (known good here), the dynamo
   exporter at opset >= 23 (the standard ``Attention`` op; dynamic shapes from the spec);
2. optionally the strongly typed FP16 conversion (export/fp16.py);
3. the weights in ``<engine>.onnx.data`` beside the graph when they exceed
   ``external_data_min_bytes`` (always above 2 GB, protobuf's limit);
4. ``onnx.checker`` on the file, the graph's inputs/outputs against the spec (names, order, dtypes,
   fixed dims, symbolic dims named as in the spec);
5. parity on ONNX Runtime CPU against the PyTorch reference (export/parity.py) at two shape points;
6. only when everything passed: the per-engine manifest, then ``os.replace`` of each file into the
   output folder. Any failure (or an interrupt) removes the temporary folder: nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from gligen_rt.core.errors import first_line
from gligen_rt.engines import manifest as M
from gligen_rt.engines import spec as S
from gligen_rt.export.fp16 import FP32_CONES, convert_fp16, save_model
from gligen_rt.export.gate_skip import skip_fusers
from gligen_rt.export.graph import (
    check_io,
    drop_initializer_identities,
    initializer_bytes,
    node_count,
    op_counts,
    stamp_io,
)
from gligen_rt.export.inputs import make_inputs, parity_cases, trace_point
from gligen_rt.export.parity import (
    FP16_ROUNDOFF,
    TOLERANCE,
    ExportError,
    ParityError,
    ParityReport,
    check_parity,
    ort_session,
)
from gligen_rt.export.wrappers import run_wrapper, wrap

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 23  # the Attention op; the TorchScript exporter stops before it
EXTERNAL_DATA_MIN_BYTES = 256 << 20  # weights above this go to <engine>.onnx.data
PROTOBUF_LIMIT = 2 << 30


@dataclass(frozen=True)
class ExportResult:
    """One exported engine, after it passed every check and was moved into place."""

    engine: str
    onnx_path: Path
    manifest: M.EngineManifest
    parity: ParityReport
    nodes: int
    nodes_fp32: int
    op_counts: dict[str, int] = field(default_factory=dict)
    nodes_unfused: int | None = None
    size_bytes: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# torch -> ONNX


def _torch_dynamic_shapes(spec: S.EngineSpec) -> dict[str, Any]:
    """dynamic_shapes for the dynamo exporter: one Dim per symbol, shared by every input; pixel and
    latent sizes derived from one Dim so the exporter knows they are multiples of 64 and 8."""
    from torch.export import Dim

    env = spec.envelope
    dims: dict[str, Any] = {}
    if env.batch and env.batch[0] != env.batch[2]:
        dims[S.BATCH] = Dim(S.BATCH, min=env.batch[0], max=env.batch[2])
    unit = 8 * env.latent_factor  # UNet levels need latent multiples of 8
    for pixel, latent in ((S.HEIGHT, S.HEIGHT_LATENT), (S.WIDTH, S.WIDTH_LATENT)):
        r = getattr(env, pixel)
        if r is None or r[0] == r[2]:
            continue
        if all(v % unit == 0 for v in r):
            k = Dim(f"{pixel}_blocks", min=r[0] // unit, max=r[2] // unit)
            dims[pixel], dims[latent] = unit * k, 8 * k
        else:
            k = Dim(latent, min=r[0] // env.latent_factor, max=r[2] // env.latent_factor)
            dims[pixel], dims[latent] = env.latent_factor * k, k
    return {
        t.name: ({i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str) and d in dims} or None)
        for t in spec.inputs
    }


def torch_export(
    wrapper: nn.Module, spec: S.EngineSpec, path: Path, inputs: Mapping[str, Any], opset: int
) -> None:
    """Export ``wrapper`` to ``path`` (weights may land in files beside it; use `onnx.load` on it)."""
    args = tuple(torch.as_tensor(inputs[n]) for n in spec.input_names)
    common = {
        "input_names": list(spec.input_names),
        "output_names": list(spec.output_names),
        "opset_version": opset,
    }
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if opset >= DYNAMO_MIN_OPSET:
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=True,
                dynamic_shapes=_torch_dynamic_shapes(spec),
                external_data=True,
                optimize=True,
                verbose=False,
                **common,
            )
        else:
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                dynamic_axes=S.onnx_dynamic_axes(spec),
                do_constant_folding=True,
                **common,
            )


# ---------------------------------------------------------------------------------------------
# One engine


def export_engine(
    model: nn.Module,
    spec: S.EngineSpec,
    out_dir: str | os.PathLike[str],
    *,
    config: Any,
    reference: nn.Module | None = None,
    precision: str = "fp32",
    flavor: str | None = None,
    opset: int = DEFAULT_OPSET,
    checkpoint_sha256: str | None = None,
    external_data_min_bytes: int = EXTERNAL_DATA_MIN_BYTES,
    unfused_model: nn.Module | None = None,
    export_info: Mapping[str, Any] | None = None,
    seed: int = 0,
    threads: int | None = None,
    gate_skip: bool = False,
) -> ExportResult:
    """Export engine ``spec.name`` of ``model`` into ``out_dir`` and return what was written.

    Args:
        model: the GLIGENModel to export (e.g. with fused fusers, export/fuse.py).
        spec: the engine's spec (engines/spec.py).
        out_dir: destination folder; ``<engine>.onnx`` [``.onnx.data``] and ``<engine>.json`` land in
            it only after every check passed.
        config: the model's ModelConfig (inputs, manifest).
        reference: the PyTorch model the parity check compares with (default: ``model``).
        precision: "fp32", or "fp16" (strongly typed FP16 graph unless ``flavor`` is
            "fp32-fp16-flag", which keeps the FP32 graph for a TensorRT-10 FP16 build).
        flavor: manifest flavor (engines/manifest.py FLAVORS); derived from precision when None.
        opset: ONNX opset; >= 23 uses the dynamo exporter.
        checkpoint_sha256: recorded in the manifest.
        external_data_min_bytes: weights above this go to ``<engine>.onnx.data``.
        unfused_model: when given, also export it (not kept) to record the node count before fusion
            (of the FP32 graph: compare it with ``nodes_fp32``).
        export_info: extra exporter settings recorded in the manifest's ``builder`` field.
        seed: seed of the trace and parity inputs.
        gate_skip: wrap every fuser in an ONNX If on ``gate != 0`` (export/gate_skip.py), so that
            the grounded UNet also serves the plain steps at the plain UNet's cost.
        threads: CPU threads for PyTorch and ONNX Runtime while exporting and checking (default:
            theirs). 1 is the robust choice on a small, busy machine (2 cores shared with other jobs
            make multi-threaded kernels wait on each other).

    Raises:
        ExportError: the exporter failed or the graph does not match the spec.
        ParityError: ONNX Runtime disagrees with PyTorch beyond the tolerance (nothing written).
    """
    with torch_threads(threads):
        return _export_engine(
            model,
            spec,
            Path(out_dir),
            config=config,
            reference=reference,
            precision=precision,
            flavor=flavor,
            opset=opset,
            checkpoint_sha256=checkpoint_sha256,
            external_data_min_bytes=external_data_min_bytes,
            unfused_model=unfused_model,
            export_info=export_info,
            seed=seed,
            threads=threads or 0,
            gate_skip=gate_skip,
        )


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (no change when n is None), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _export_engine(
    model: nn.Module,
    spec: S.EngineSpec,
    out_dir: Path,
    *,
    config: Any,
    reference: nn.Module | None,
    precision: str,
    flavor: str | None,
    opset: int,
    checkpoint_sha256: str | None,
    external_data_min_bytes: int,
    unfused_model: nn.Module | None,
    export_info: Mapping[str, Any] | None,
    seed: int,
    threads: int,
    gate_skip: bool = False,
) -> ExportResult:
    t0 = time.perf_counter()
    flavor = flavor or {"fp32": "fp32", "fp16": "fp16-strongly-typed"}[precision]
    if flavor not in M.FLAVORS:
        raise ValueError(f"flavor {flavor!r} is not one of {M.FLAVORS}")
    strongly_fp16 = flavor == "fp16-strongly-typed"
    name = spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = wrap(model, spec)
    ref_wrapper = wrap(reference if reference is not None else model, spec)
    b, h, w = trace_point(spec)
    trace_inputs = make_inputs(spec, config, b, h, w, seed=seed)

    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir))
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        raw = scratch / f"{name}.onnx"
        try:
            torch_export(wrapper, spec, raw, trace_inputs, opset)
        except Exception as e:  # the exporters raise many types; keep the first line
            raise ExportError(f"{name}: torch.onnx.export failed ({first_line(e)})") from e
        graph = onnx.load(str(raw))
        drop_initializer_identities(graph)
        stamp_io(graph, spec)
        nodes_fp32 = node_count(graph)
        big = initializer_bytes(graph) >= min(external_data_min_bytes, PROTOBUF_LIMIT)
        final = work / f"{name}.onnx"
        fp16_info: dict[str, Any] = {}
        if strongly_fp16:
            stamped = scratch / f"{name}.stamped.onnx"
            save_model(graph, stamped, external_data=big)
            del graph
            fp16_info = convert_fp16(stamped, final, external_data=big)
        else:
            save_model(graph, final, external_data=big)
            del graph
        shutil.rmtree(scratch)
        gate_skip_report = None
        if gate_skip:
            skipped, report_ = skip_fusers(onnx.load(str(final), load_external_data=False), inplace=True)
            onnx.save(skipped, str(final))  # weights stay in the untouched .onnx.data
            gate_skip_report = report_.to_dict()
            del skipped

        try:
            onnx.checker.check_model(str(final))
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{name}: the exported graph is invalid ({first_line(e)})") from None
        graph = onnx.load(str(final), load_external_data=False)
        problems = check_io(graph, spec)
        if problems:
            raise ExportError(f"{name}: graph I/O does not match the spec: {'; '.join(problems)}")
        nodes, ops = node_count(graph), op_counts(graph)
        del graph

        nodes_unfused = None
        if unfused_model is not None:
            nodes_unfused = _count_nodes_of(unfused_model, spec, trace_inputs, opset, work)

        tol = TOLERANCE["fp16" if strongly_fp16 else "fp32"]
        try:
            session = ort_session(final, threads)
        except Exception as e:  # an export that cannot be checked is not kept
            raise ExportError(f"{name}: ONNX Runtime CPU cannot load the graph ({first_line(e)})") from None
        report = check_parity(
            name,
            session,
            lambda x: run_wrapper(ref_wrapper, x),
            parity_cases(spec, config, seed),
            tol,
            expected_shapes=lambda x: _spec_shapes(spec, x),
            roundoff=FP16_ROUNDOFF if strongly_fp16 else None,
            exact_inputs=[cone for cone, _ in FP32_CONES],
        )
        del session
        if not report.passed:
            raise ParityError(
                f"{name}: ONNX Runtime differs from PyTorch by {report.max_rel_err:.3g} relative "
                f"({report.worst_case}; limit {report.worst_limit:.3g}): the export was not written"
            )
        log.info("%s: parity %.2e (limit %.3g), %d nodes", name, report.max_rel_err, report.limit, nodes)

        files = M.onnx_files(final)
        digest = M.onnx_sha256(final)
        builder = {
            "exporter": "torch.onnx dynamo" if opset >= DYNAMO_MIN_OPSET else "torch.onnx torchscript",
            "opset": opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "parity_backend": f"onnxruntime {_ort_version()} CPU",
            "nodes": nodes,
            "nodes_fp32_graph": nodes_fp32,
            "op_counts": ops,
            "gate_skip": gate_skip_report,
            "external_data": len(files) > 1,
            "trace_shape": [b, h, w],
            **({"nodes_unfused": nodes_unfused} if nodes_unfused is not None else {}),
            **({"fp16": fp16_info} if fp16_info else {}),
            **dict(export_info or {}),
        }
        manifest = M.EngineManifest(
            engine=name,
            backend=M.ONNX_BACKEND,
            artifact=final.name,
            artifact_sha256=digest,
            artifact_size=sum(f.stat().st_size for f in files),
            spec_fingerprint=S.fingerprint(spec),
            spec=S.spec_to_dict(spec),
            onnx_sha256=digest,
            model_config=_config_dict(config),
            precision="fp16" if strongly_fp16 else "fp32",  # the graph's own precision
            flavor=flavor,
            checkpoint_sha256=checkpoint_sha256,
            builder=builder,
            parity=report.to_manifest(),
        )
        M.write_manifest(work / f"{name}.json", manifest)
        mode = 0o666 & ~umask()  # temp files are created 0600; the engine folder is shared data
        for f in [*files, work / f"{name}.json"]:
            f.chmod(mode)
        # Into place: data before graph before manifest, each by os.replace (same file system).
        target = out_dir / final.name
        stale = out_dir / (final.name + ".data")
        for f in [*files[1:], files[0], work / f"{name}.json"]:
            os.replace(f, out_dir / f.name)
        if len(files) == 1 and stale.exists():
            stale.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        engine=name,
        onnx_path=target,
        manifest=manifest,
        parity=report,
        nodes=nodes,
        nodes_fp32=nodes_fp32,
        op_counts=ops,
        nodes_unfused=nodes_unfused,
        size_bytes=manifest.artifact_size,
        seconds=time.perf_counter() - t0,
    )


def _spec_shapes(spec: S.EngineSpec, inputs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The spec's output shapes at the point the inputs were made for."""
    values: dict[str, int] = {}
    for t in spec.inputs:
        for d, n in zip(t.dims, inputs[t.name].shape):
            if isinstance(d, str):
                values[d] = int(n)
    f = spec.envelope.latent_factor
    for pixel, latent in ((S.HEIGHT, S.HEIGHT_LATENT), (S.WIDTH, S.WIDTH_LATENT)):
        if pixel in values:
            values.setdefault(latent, values[pixel] // f)
        if latent in values:
            values.setdefault(pixel, values[latent] * f)
    return {t.name: tuple(d if isinstance(d, int) else values[d] for d in t.dims) for t in spec.outputs}


def _count_nodes_of(
    model: nn.Module, spec: S.EngineSpec, inputs: Mapping[str, Any], opset: int, work: Path
) -> int:
    """Node count of another export of the same engine (e.g. before fusion); the file is deleted."""
    tmp = work / "unfused"
    tmp.mkdir()
    try:
        path = tmp / f"{spec.name}.onnx"
        torch_export(wrap(model, spec), spec, path, inputs, opset)
        graph = onnx.load(str(path), load_external_data=False)
        drop_initializer_identities(graph)
        return node_count(graph)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _config_dict(config: Any) -> dict[str, Any]:
    from gligen_rt.core.config import to_dict

    return to_dict(config)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
