"""TensorRT (and TensorRT-RTX) plans with CuPy device buffers and, for static engines, CUDA graphs.

Plans come from ``gligen-rt build --onnx DIR --backend tensorrt`` (DIR/tensorrt/<engine>.plan and
its manifest, verified against the spec, the installed TensorRT and the GPU's compute capability).
Every engine owns device buffers for its inputs and outputs at the current shape set; a call
copies its (device) inputs into them on the backend's stream (skipped for an input that is the
same array object as in the previous call, e.g. the context and grounding tokens across steps),
enqueues the engine, and returns device copies of the outputs. A static engine (min = opt = max)
is captured into a CUDA graph at load and replayed on every call.

Only GPU machines run this; it is written against TensorRT 10's documented Python API
(``execute_async_v3``, ``set_input_shape``, ``set_tensor_address``) and CuPy's stream capture
(``Stream.begin_capture`` / ``end_capture`` -> ``Graph.launch``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.errors import EngineError
from gligen_rt.engines.manifest import verify
from gligen_rt.engines.spec import EngineSpec, concrete_shapes, is_static
from gligen_rt.engines.tensorrt import BACKENDS as TRT_MODULES
from gligen_rt.engines.tensorrt import PLAN_SUFFIX, import_trt, is_rtx

from .arrays import Array, CupyArrays
from .backend import Backend
from .folder import EngineFolder

log = logging.getLogger(__name__)


def _logger(trt: Any) -> Any:
    """A trt.ILogger forwarding to `logging` and keeping the first line of every error."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append((msg.strip().splitlines() or [msg])[0])
                log.error("%s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("%s", msg)

    return _Logger()


class _PlanRunner:
    """One deserialized plan, its execution context, device buffers and optional CUDA graph."""

    def __init__(
        self, trt: Any, runtime: Any, plan: bytes, spec: EngineSpec, arrays: CupyArrays, rtx: bool
    ) -> None:
        self.spec = spec
        self.arrays = arrays
        self.cp = arrays.xp
        self.lock = threading.Lock()
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError(
                f"TensorRT could not deserialize {spec.name}: rebuild it with `gligen-rt build`"
            )
        self.static = is_static(spec)
        if rtx and hasattr(self.engine, "create_runtime_config"):
            config = self.engine.create_runtime_config()
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"no execution context for {spec.name} (out of GPU memory?)")
        self.dtypes: dict[str, np.dtype] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        if self.inputs != list(spec.input_names):
            raise EngineError(
                f"{spec.name} plan has inputs {self.inputs}, its spec {list(spec.input_names)}: rebuild"
            )
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.buffers: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.graph: Any = None
        if self.static:
            self._capture()

    def _set_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Resize: new buffers (CuPy pool), tensor addresses, no graph (it holds old addresses)."""
        for name in self.inputs:
            if not self.context.set_input_shape(name, shapes[name]):
                raise EngineError(
                    f"{self.spec.name}: input {name} shape {shapes[name]} is outside the plan's profile"
                )
        with self.arrays.stream:
            for name in self.inputs:
                self.buffers[name] = self.cp.empty(shapes[name], dtype=self.dtypes[name])
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                self.buffers[name] = self.cp.empty(shape, dtype=self.dtypes[name])
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, int(buf.data.ptr))
        self.shapes = {n: tuple(shapes[n]) for n in self.inputs}
        self.last.clear()
        self.graph = None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.arrays.stream.ptr):
            raise EngineError(f"TensorRT failed to enqueue {self.spec.name}: see the log")

    def _capture(self) -> None:
        """Static engine: buffers at its one shape, one plain enqueue, then capture a CUDA graph."""
        env = self.spec.envelope
        point = [r[0] if r else 1 for r in (env.batch, env.height, env.width)]
        self._set_shapes({n: s for n, s in concrete_shapes(self.spec, *point).items() if n in self.inputs})
        with self.arrays.stream:
            for name in self.inputs:
                self.buffers[name].fill(0)
        self._enqueue()  # TensorRT needs one enqueue after shapes are set before a capture
        self.arrays.stream.synchronize()
        self.arrays.stream.begin_capture()
        try:
            self._enqueue()
        finally:
            self.graph = self.arrays.stream.end_capture()

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        cp = self.cp
        with self.lock:
            shapes = {n: tuple(inputs[n].shape) for n in self.inputs}
            if shapes != self.shapes:
                if self.static:
                    raise EngineError(
                        f"{self.spec.name} was built static for {self.shapes}, got {shapes}: "
                        "rebuild without --static or request the built size"
                    )
                self._set_shapes(shapes)
            with self.arrays.stream:
                for name in self.inputs:
                    src = inputs[name]
                    if self.last.get(name) is src:
                        continue
                    if not isinstance(src, cp.ndarray):
                        src = cp.asarray(np.asarray(src))
                    self.buffers[name][...] = src.astype(self.dtypes[name], copy=False)
                    self.last[name] = inputs[name]
                if self.graph is not None:
                    self.graph.launch(self.arrays.stream)
                else:
                    self._enqueue()
                out = {name: self.buffers[name].copy() for name in self.outputs}
            self.arrays.stream.synchronize()  # engine time is measured per call
        return out


class TensorRtBackend(Backend):
    """name: "tensorrt" | "tensorrt-rtx"; check_sha256: hash every plan at load (GBs: seconds)."""

    def __init__(self, name: str = "tensorrt", *, check_sha256: bool = True, device_id: int = 0) -> None:
        super().__init__()
        if name not in TRT_MODULES:
            raise ValueError(f"unknown TensorRT backend {name!r}")
        self.name = name
        self.check_sha256 = check_sha256
        self._trt = import_trt(name)
        self.arrays = CupyArrays(device_id)
        self._runtime = None
        self._runners: dict[str, _PlanRunner] = {}

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        trt = self._trt
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        rtx = is_rtx(self.name)
        fix = f"run `gligen-rt build --onnx {folder.path} --backend {self.name}`"
        for name in engines:
            plan = folder.built_dir(self.name) / f"{name}{PLAN_SUFFIX}"
            built = folder.built_spec(self.name, name)
            if built is None or not plan.is_file():
                raise EngineError(f"{folder.built_dir(self.name)} holds no TensorRT plan for {name}: {fix}")
            spec, manifest = built
            verify(
                manifest,
                library_versions={TRT_MODULES[self.name]: str(trt.__version__)},
                gpu_cc=None if rtx else self.arrays.compute_capability(),
                artifact_path=plan,
                check_sha256=self.check_sha256,
            )
            self._runners[name] = _PlanRunner(trt, self._runtime, plan.read_bytes(), spec, self.arrays, rtx)
            self.specs[name] = spec

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        return self._runners[engine].run(inputs)

    def close(self) -> None:
        self._runners.clear()
        self.specs.clear()
        self._runtime = None
