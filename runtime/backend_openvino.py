"""OpenVINO on the CPU: FP32 (precision hint f32) or BF16 (hint bf16, the CPU's AMX/AVX512_BF16 units).

Reads the exported ONNX directly; with a built DIR/openvino/ (``gligen-rt build --backend
openvino``) compiled blobs come from DIR/openvino/cache and static builds are compiled at their
shape. An InferRequest is not thread-safe, so each engine keeps a pool: a call takes a free
request (or creates one), runs it, copies the outputs out and returns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.errors import EngineError
from gligen_rt.engines.manifest import installed_versions, verify
from gligen_rt.engines.openvino import compile_model, import_openvino

from .arrays import Array
from .backend import Backend
from .folder import EngineFolder

log = logging.getLogger(__name__)


class _RequestPool:
    """Free InferRequests of one compiled model (grows to the number of concurrent callers).

    output_names: the spec's output names, in spec order; each is one of its port's names (OpenVINO
    may give a port another primary name, e.g. after fusing a boundary Cast).
    """

    def __init__(self, compiled: Any, output_names: Sequence[str]) -> None:
        self.compiled = compiled
        ports = {n: p for p in compiled.outputs for n in p.get_names()}
        self.outputs = {n: ports[n] for n in output_names}
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._free.pop() if self._free else self.compiled.create_infer_request()
        try:
            request.infer({k: np.ascontiguousarray(v) for k, v in inputs.items()})
            # The request's output tensors are reused by its next inference: copy them out.
            return {n: np.array(request.get_tensor(p).data, copy=True) for n, p in self.outputs.items()}
        finally:
            with self._lock:
                self._free.append(request)


class OpenVinoBackend(Backend):
    """precision_hint: "f32" | "bf16"; threads: inference threads (None: all cores)."""

    def __init__(
        self, precision_hint: str = "f32", *, threads: int | None = None, device: str = "CPU"
    ) -> None:
        super().__init__()
        if precision_hint not in ("f32", "bf16"):
            raise ValueError(f"precision hint {precision_hint!r} is not f32 or bf16")
        self.precision_hint = precision_hint
        self.name = "openvino" if precision_hint == "f32" else "openvino-bf16"
        self.threads = threads
        self.device = device
        import_openvino()
        self._pools: dict[str, _RequestPool] = {}

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        versions = installed_versions("openvino")
        for name in engines:
            spec = folder.specs[name]
            cache_dir = None
            shapes = None
            built = folder.built_spec("openvino", name)
            if built is not None:
                spec, manifest = built
                verify(manifest, library_versions=versions)
                cache_dir = folder.built_dir("openvino") / str(manifest.builder.get("cache_dir") or "cache")
                given = manifest.builder.get("shapes")
                shapes = {k: tuple(v) for k, v in given.items()} if given else None
            try:
                compiled = compile_model(
                    folder.onnx_path(name),
                    self.device,
                    self.precision_hint,
                    cache_dir,
                    threads=self.threads,
                    shapes=shapes,
                )
            except RuntimeError as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise EngineError(
                    f"OpenVINO cannot compile {folder.onnx_path(name)} ({msg}): re-export it"
                ) from None
            got = [i.get_any_name() for i in compiled.inputs]
            names_in = {n for i in compiled.inputs for n in i.get_names()}
            names_out = {n for o in compiled.outputs for n in o.get_names()}
            if (
                len(got) != len(spec.inputs)
                or not set(spec.input_names) <= names_in
                or not set(spec.output_names) <= names_out
            ):
                raise EngineError(
                    f"{name}.onnx has inputs {got}, its spec {list(spec.input_names)}: re-export"
                )
            self._pools[name] = _RequestPool(compiled, spec.output_names)
            self.specs[name] = spec

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        return self._pools[engine].run(inputs)

    def close(self) -> None:
        self._pools.clear()
        self.specs.clear()
