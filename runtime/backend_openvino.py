"""OpenVINO on the CPU: FP32 (``openvino``), BF16 (``openvino-bf16``), INT8 weights (``openvino-int8``),
INT8 activations in the UNets (``openvino-int8a``).

With a build (``gligen-rt build --backend B`` wrote DIR/B/) each engine is compiled from its IR
(read model released after compiling; the pages of the memory-mapped .bin / cache blob dropped
while and after compiling, and during and after the first inference, which is when the CPU plugin
copies some weights, e.g. a text encoder's: no second copy of the weights resident) with
compiled blobs in DIR/B/cache (OpenVINO's CACHE_DIR: later loads skip compilation). A static build
is compiled at its shape. A dynamic build's request-size engines (grounding, UNets, VAE) are
compiled static at the shape of their first call (reshaped from the IR; the blob is cached per
shape) and recompiled when a request of another size or batch comes: one compiled model per
engine at a time. Without a build, ``openvino`` and ``openvino-bf16`` compile the exported ONNX as
it is (dynamic shapes), with compiled blobs in $GLIGEN_RT_OPENVINO_CACHE/<precision hint> when it is
set (keyed on the graph's content; no cache otherwise); ``openvino-int8`` and
``openvino-int8a`` need their build.

An InferRequest is not thread-safe, so each compiled model keeps a pool: a call takes a free
request (or creates one), runs it, copies the outputs out and returns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.core.errors import EngineError
from gligen_rt.engines.manifest import installed_versions, verify
from gligen_rt.engines.openvino import (
    BUILDS,
    check_weights,
    compile_model,
    import_openvino,
    mapped_files,
    mapped_pages_dropped,
    onnx_blob_cache,
)
from gligen_rt.engines.spec import (
    GROUNDING,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    UNET_SHALLOW_GROUNDED,
    VAE_DECODER,
    VAE_ENCODER,
)

from .arrays import Array
from .backend import Backend
from .folder import EngineFolder

log = logging.getLogger(__name__)

# Engines whose shapes a request's size and image count fix: compiled static per shape.
PER_SHAPE = (GROUNDING, UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED, VAE_DECODER, VAE_ENCODER)


class _RequestPool:
    """Free InferRequests of one compiled model (grows to the number of concurrent callers).

    output_names: the spec's output names, in spec order; each is one of its port's names (OpenVINO
    may give a port another primary name, e.g. after fusing a boundary Cast).
    """

    def __init__(
        self,
        compiled: Any,
        output_names: Sequence[str],
        mapped: tuple[Sequence[Path], Sequence[Path]] = ((), ()),
    ) -> None:
        self.compiled = compiled
        ports = {n: p for p in compiled.outputs for n in p.get_names()}
        self.outputs = {n: ports[n] for n in output_names}
        self._free: list[Any] = []
        self._lock = threading.Lock()
        # (files, folders) whose mapped pages the first inference faults in: the CPU plugin copies
        # some weights into its own buffers only then (a text encoder's, converted to BF16), and
        # the pages it read them from would stay resident beside that copy.
        self._mapped: tuple[Sequence[Path], Sequence[Path]] | None = mapped

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._free.pop() if self._free else self.compiled.create_infer_request()
        try:
            if self._mapped is not None:  # the first inference (two under a race: harmless)
                mapped, self._mapped = self._mapped, None
                with mapped_pages_dropped(*mapped):
                    request.infer(inputs)
            else:
                request.infer(inputs)
            # The request's output tensors are reused by its next inference: copy them out.
            return {n: np.array(request.get_tensor(p).data, copy=True) for n, p in self.outputs.items()}
        finally:
            with self._lock:
                self._free.append(request)


class _Engine:
    """One engine: its graph, how to compile it, and the compiled model (per shape when reshaped)."""

    def __init__(self, name: str, path: Path, hint: str, cache_dir: Path | None, per_shape: bool) -> None:
        self.name, self.path, self.hint, self.cache_dir = name, path, hint, cache_dir
        self.per_shape = per_shape
        self.shapes: tuple | None = None  # the input shapes the pool was compiled for (per_shape)
        self.pool: _RequestPool | None = None
        self.lock = threading.Lock()


class OpenVinoBackend(Backend):
    """build: "openvino" | "openvino-bf16" | "openvino-int8" | "openvino-int8a" (engines/openvino.py BUILDS);
    threads: inference threads (None: all cores); static_shapes: compile a dynamic build's
    request-size engines at the request's shape (False: run them dynamic)."""

    def __init__(
        self,
        build: str = "openvino",
        *,
        threads: int | None = None,
        device: str = "CPU",
        static_shapes: bool = True,
    ) -> None:
        super().__init__()
        if build not in BUILDS:
            raise ValueError(f"OpenVINO build {build!r} is not one of {', '.join(BUILDS)}")
        self.name = build
        self.precision_hint = BUILDS[build][0]
        self.threads = threads
        self.device = device
        self.static_shapes = static_shapes
        import_openvino()
        self._engines: dict[str, _Engine] = {}

    def _compile(self, e: _Engine, shapes: Mapping[str, tuple[int, ...]] | None) -> _RequestPool:
        try:
            compiled = compile_model(
                e.path, self.device, e.hint, e.cache_dir, threads=self.threads, shapes=shapes
            )
        except RuntimeError as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EngineError(f"OpenVINO cannot compile {e.path} ({msg}): rebuild or re-export it") from None
        return _RequestPool(compiled, self.specs[e.name].output_names, mapped_files(e.path, e.cache_dir))

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        versions = installed_versions("openvino")
        for name in engines:
            spec = folder.specs[name]
            built = folder.built_spec(self.name, name)
            if built is not None:
                spec, manifest = built
                built_dir = folder.built_dir(self.name)
                path = built_dir / manifest.artifact
                verify(manifest, library_versions=versions, artifact_path=path)
                check_weights(path, manifest.builder.get("weights_size"))
                cache_dir = built_dir / str(manifest.builder.get("cache_dir") or "cache")
                hint = str(manifest.builder.get("precision_hint") or self.precision_hint)
                static = bool(manifest.builder.get("shapes"))
                engine = _Engine(
                    name, path, hint, cache_dir, self.static_shapes and not static and name in PER_SHAPE
                )
            elif self.name in ("openvino-int8", "openvino-int8a"):
                raise EngineError(
                    f"{folder.path} has no {self.name} build of {name}: "
                    f"run `gligen-rt build --onnx {folder.path} --backend {self.name}`"
                )
            else:
                engine = _Engine(
                    name,
                    folder.read_onnx(name),
                    self.precision_hint,
                    onnx_blob_cache(self.precision_hint),
                    False,
                )
            self.specs[name] = spec
            self._engines[name] = engine
            if not engine.per_shape:  # per-shape engines compile at their first call
                engine.pool = self._compile(engine, None)
                self._check_io(engine, spec)

    def _check_io(self, e: _Engine, spec: Any) -> None:
        assert e.pool is not None
        compiled = e.pool.compiled
        got = [i.get_any_name() for i in compiled.inputs]
        names_in = {n for i in compiled.inputs for n in i.get_names()}
        names_out = {n for o in compiled.outputs for n in o.get_names()}
        if (
            len(got) != len(spec.inputs)
            or not set(spec.input_names) <= names_in
            or not set(spec.output_names) <= names_out
        ):
            raise EngineError(f"{e.path.name} has inputs {got}, its spec {list(spec.input_names)}: rebuild")

    def _pool(self, e: _Engine, inputs: Mapping[str, np.ndarray]) -> _RequestPool:
        if not e.per_shape:
            assert e.pool is not None
            return e.pool
        shapes = tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items()))
        with e.lock:
            if e.shapes != shapes or e.pool is None:
                log.info("compiling %s for %s", e.name, dict(shapes))
                e.pool = None  # release the previous shape's compiled model first
                e.pool = self._compile(e, dict(shapes))
                e.shapes = shapes
                self._check_io(e, self.specs[e.name])
            return e.pool

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        arrays = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        return self._pool(self._engines[engine], arrays).run(arrays)

    def trim(self, engines: Sequence[str]) -> None:
        """Release the intermediate tensors of `engines`' compiled models (CompiledModel.release_memory:
        the CPU plugin's per-request buffers; the weights stay compiled). The buffers of a gate-skip
        UNet's If bodies are the plugin's own and stay (benchmarks/results/low_memory/README.md)."""
        for name in engines:
            e = self._engines.get(name)
            if e is not None and e.pool is not None:
                with e.lock:
                    e.pool.compiled.release_memory()

    def release(self, engines: Sequence[str]) -> None:
        """Drop the compiled models of `engines` (--low-memory)."""
        for name in engines:
            self._engines.pop(name, None)
            self.specs.pop(name, None)

    def close(self) -> None:
        self._engines.clear()
        self.specs.clear()
