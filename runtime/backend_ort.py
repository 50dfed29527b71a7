"""ONNX Runtime: CPU, CUDA and TensorRT execution providers.

CPU: ``session.run`` with numpy arrays. CUDA / TensorRT providers: CuPy arrays bound with IO binding
(``bind_input`` on the array's device pointer; outputs allocated by ORT on the device and wrapped as
CuPy arrays that keep the OrtValue alive), so latents never leave the GPU between steps. A binding
is made per call, so concurrent calls share nothing but the (thread-safe) session.

One stream, no host waits: the providers compute on the backend's own CuPy stream
(``user_compute_stream``, on the backend's ``device_id``), the stream of the loop's arithmetic, so
a run is ordered after the CuPy work that produced its inputs and before the work that reads its
outputs; runs are made with ``disable_synchronize_execution_providers`` so ORT does not wait for
the device at their end. The pipeline synchronizes once per request.

Precision: the TensorRT provider runs FP16 kernels only where the manifests say so (the built
manifest, else the export's); never by default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.errors import EngineError, first_line
from gligen_rt.engines.manifest import installed_versions, runs_fp16, verify
from gligen_rt.engines.ort import import_ort, make_session

from .arrays import Array, CupyArrays
from .backend import Backend
from .folder import EngineFolder

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OrtBackend(Backend):
    """provider: "cpu" | "cuda" | "trt"; threads: intra-op threads (None: ORT's default)."""

    def __init__(self, provider: str = "cpu", *, threads: int | None = None, device_id: int = 0) -> None:
        super().__init__()
        if provider not in ("cpu", "cuda", "trt"):
            raise ValueError(f"unknown ONNX Runtime provider {provider!r}")
        self.provider = provider
        self.name = f"ort-{provider}"
        self.threads = threads
        self.device_id = int(device_id)
        self._ort = import_ort()
        if provider != "cpu":
            self.arrays = CupyArrays(self.device_id)
        self._sessions: dict[str, Any] = {}
        self._outputs: dict[str, list[str]] = {}
        self.fp16: dict[str, bool] = {}  # {engine: runs FP16 kernels}, as loaded
        self._run_options: Any = None
        if provider != "cpu":
            self._run_options = self._ort.RunOptions()
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        ep = {"cpu": "cpu", "cuda": "cuda", "trt": "tensorrt"}[self.provider]
        versions = installed_versions("onnxruntime")
        for name in engines:
            spec = folder.specs[name]
            built = folder.built_spec(self.name, name)
            cache_dir = None
            fp16 = runs_fp16(folder.onnx_manifests[name])  # as exported
            if built is not None:
                spec, manifest = built
                verify(manifest, library_versions=versions)
                cache_dir = folder.built_dir(self.name)
                fp16 = runs_fp16(manifest)  # as built
            log.debug("loading %s on %s", name, self.name)
            try:
                session = make_session(
                    folder.read_onnx(name),
                    ep,
                    optimized_cache_dir=cache_dir,
                    threads=self.threads,
                    spec=spec,
                    fp16=fp16,
                    device_id=self.device_id,
                    stream=self.arrays.stream.ptr if self.arrays.on_device else None,
                )
            except self._ort_errors() as e:
                raise EngineError(
                    f"ONNX Runtime cannot load {folder.onnx_path(name)} ({first_line(e)}): re-export it"
                ) from None
            got = [i.name for i in session.get_inputs()]
            if got != list(spec.input_names):
                raise EngineError(
                    f"{name}.onnx has inputs {got}, its spec {list(spec.input_names)}: re-export"
                )
            self._sessions[name] = session
            self._outputs[name] = [o.name for o in session.get_outputs()]
            self.specs[name] = spec
            self.fp16[name] = fp16
            log.debug("%s on %s (fp16 kernels: %s)", name, self.name, fp16)

    def _ort_errors(self) -> tuple[type[BaseException], ...]:
        capi = getattr(self._ort, "capi", None)
        pybind = getattr(getattr(capi, "onnxruntime_pybind11_state", None), "RuntimeException", None)
        fail = getattr(getattr(capi, "onnxruntime_pybind11_state", None), "Fail", None)
        return tuple(e for e in (pybind, fail, RuntimeError) if isinstance(e, type))

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        session = self._sessions[engine]
        names = self._outputs[engine]
        if not self.arrays.on_device:
            outs = session.run(names, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
            return dict(zip(names, outs))
        return self._run_bound(session, names, inputs)

    def _run_bound(self, session: Any, names: list[str], inputs: Mapping[str, Array]) -> dict[str, Array]:
        """IO binding on device arrays; outputs stay on the device. No host wait: the provider
        computes on our stream, after the work that made the inputs."""
        cp = self.arrays.xp
        binding = session.io_binding()
        keep = []
        for name, value in inputs.items():
            a = self.arrays.asarray(value)  # C-contiguous on our device (no copy when it is)
            keep.append(a)
            binding.bind_input(
                name, "cuda", self.device_id, a.dtype.type, tuple(a.shape), self.arrays.pointer(a)
            )
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        session.run_with_iobinding(binding, self._run_options)
        out = {}
        for name, value in zip(names, binding.get_outputs()):
            dtype = np.dtype(_ORT_DTYPES[value.data_type()])
            shape = tuple(value.shape())
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            mem = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, value, self.device_id)
            out[name] = cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))
        del keep
        return out

    def release(self, engines: Sequence[str]) -> None:
        """Drop the sessions of `engines` (--low-memory); work queued on the stream finishes first."""
        self.arrays.synchronize()
        for name in engines:
            self._sessions.pop(name, None)
            self._outputs.pop(name, None)
            self.specs.pop(name, None)

    def close(self) -> None:
        self._sessions.clear()
        self._outputs.clear()
        self.specs.clear()
