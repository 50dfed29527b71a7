"""TensorRT (and TensorRT-RTX) plans on one CUDA stream, with CuPy device buffers, one shared
scratch buffer and, where it is safe, CUDA graphs.

Plans come from ``gligen-rt build --onnx DIR --backend tensorrt`` (DIR/tensorrt/<engine>.plan and
its manifest, verified against the spec, the installed TensorRT and the GPU's compute capability).

- One stream: every engine is enqueued on the backend's stream (``arrays.stream``), which is also
  the stream of the loop's CuPy arithmetic, so a call never waits for the device; the pipeline
  synchronizes once per request (runtime/pipeline.py).
- One scratch buffer: execution contexts are created without device memory of their own
  (USER_MANAGED) and share one buffer sized to the largest engine's need (engines run one after
  another on the stream, so they never use it at the same time), as NVIDIA's diffusion demo does.
- Buffers: every engine owns device buffers for its inputs and outputs at the current shape set;
  a call copies its inputs into them (skipped for the same array object as in the previous call,
  e.g. the context and grounding tokens across steps), enqueues, and returns device copies of the
  outputs.
- CUDA graphs: a static engine (min = opt = max) without data-dependent control flow (the build
  records its control-flow layers: ``cuda_graph_allowed``) is captured at load and replayed. An
  engine with ``If`` layers (the gate-skip UNet) is never captured: a graph would replay the branch
  taken at capture for every gate. TensorRT-RTX captures by itself (its CUDA-graph strategy), set
  in engines/tensorrt.py ``create_context``, the one place shared with tools; so is its runtime
  cache (DIR/tensorrt-rtx/runtime.cache), which keeps JIT-compiled kernels across processes.

Only GPU machines run this for real; tests drive it with stand-ins for TensorRT and the stream. It
is written against TensorRT 10's Python API (``execute_async_v3``, ``set_input_shape``,
``set_tensor_address``, ``set_device_memory``) and CuPy's stream capture.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.backends import TRT_MODULES
from gligen_rt.core.errors import EngineError
from gligen_rt.engines.manifest import verify
from gligen_rt.engines.spec import EngineSpec, concrete_shapes, is_static
from gligen_rt.engines.tensorrt import (
    PLAN_SUFFIX,
    RUNTIME_CACHE,
    RuntimeCache,
    create_context,
    cuda_graph_allowed,
    device_memory_size,
    import_trt,
    is_rtx,
    make_logger,
)

from .arrays import Array, CupyArrays, HostArrays
from .backend import Backend
from .folder import EngineFolder

log = logging.getLogger(__name__)


class PlanRunner:
    """One deserialized plan: its execution context, device buffers and optional CUDA graph.

    builder: the plan manifest's builder settings (``control_flow`` decides capture).
    scratch: the shared scratch buffer (uint8 array on the device), or None for the context's own.
    """

    def __init__(
        self,
        trt: Any,
        engine: Any,
        spec: EngineSpec,
        builder: Mapping[str, Any],
        arrays: HostArrays,
        backend: str = "tensorrt",
        *,
        runtime_cache: RuntimeCache | None = None,
        scratch: Array | None = None,
    ) -> None:
        self.spec = spec
        self.arrays = arrays
        self.lock = threading.Lock()
        self.engine = engine
        self.static = is_static(spec)
        self.graph_allowed = self.static and cuda_graph_allowed(builder)
        rtx = is_rtx(backend)
        self.context = create_context(
            trt,
            engine,
            backend,
            cuda_graph=rtx and self.graph_allowed,
            runtime_cache=runtime_cache,
            user_memory=scratch is not None,
        )
        if self.context is None:
            raise EngineError(f"no execution context for {spec.name} (out of GPU memory?)")
        self.graph: Any = None
        self.scratch = None
        if scratch is not None:
            self.set_scratch(scratch)
        self.dtypes: dict[str, np.dtype] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        if self.inputs != list(spec.input_names):
            raise EngineError(
                f"{spec.name} plan has inputs {self.inputs}, its spec {list(spec.input_names)}: rebuild"
            )
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.buffers: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        # We capture TensorRT plans ourselves; TensorRT-RTX does it inside (its CUDA-graph strategy).
        self.capture = self.graph_allowed and not rtx
        if self.static:
            env = spec.envelope
            point = [r[0] if r else 1 for r in (env.batch, env.height, env.width)]
            shapes = concrete_shapes(spec, *point)
            self._set_shapes({n: s for n, s in shapes.items() if n in self.inputs})
            if self.capture:
                self._capture()

    def set_scratch(self, scratch: Array) -> None:
        """Give the context (a new) shared scratch buffer; a captured graph is captured again."""
        ptr, size = self.arrays.pointer(scratch), int(scratch.nbytes)
        if hasattr(self.context, "set_device_memory"):
            self.context.set_device_memory(ptr, size)
        else:  # TensorRT 10.0
            self.context.device_memory = ptr
        self.scratch = scratch
        if self.graph is not None:
            self._capture()

    def _set_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Resize: new buffers (CuPy pool), tensor addresses, no graph (it holds old addresses)."""
        for name in self.inputs:
            if not self.context.set_input_shape(name, shapes[name]):
                raise EngineError(
                    f"{self.spec.name}: input {name} shape {shapes[name]} is outside the plan's profile"
                )
        for name in self.inputs:
            self.buffers[name] = self.arrays.empty(shapes[name], self.dtypes[name])
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = self.arrays.empty(shape, self.dtypes[name])
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, self.arrays.pointer(buf))
        self.shapes = {n: tuple(shapes[n]) for n in self.inputs}
        self.last.clear()
        self.graph = None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.arrays.stream.ptr):
            raise EngineError(f"TensorRT failed to enqueue {self.spec.name}: see the log")

    def _capture(self) -> None:
        """Capture one enqueue into a CUDA graph (inputs zero-filled: the engine has no control flow,
        so the graph is the same for every input)."""
        stream = self.arrays.stream
        capturable = getattr(self.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(stream.ptr):
            log.info("%s cannot be captured on this stream: enqueued without a CUDA graph", self.spec.name)
            self.capture = False
            return
        with self.arrays.scope():
            for name in self.inputs:
                self.buffers[name].fill(0)
            self._enqueue()  # TensorRT needs one enqueue after shapes are set before a capture
        stream.synchronize()  # load time only
        stream.begin_capture()
        try:
            self._enqueue()
        finally:
            self.graph = stream.end_capture()

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Enqueue the engine on the stream; outputs are device arrays, ready in stream order."""
        with self.lock:
            shapes = {n: tuple(inputs[n].shape) for n in self.inputs}
            if shapes != self.shapes:
                if self.static:
                    raise EngineError(
                        f"{self.spec.name} was built static for {self.shapes}, got {shapes}: "
                        "rebuild without --static or request the built size"
                    )
                self._set_shapes(shapes)
            with self.arrays.scope():
                for name in self.inputs:
                    src = inputs[name]
                    if self.last.get(name) is src:
                        continue
                    if isinstance(src, np.ndarray):
                        src = self.arrays.asarray(src)
                    self.buffers[name][...] = src.astype(self.dtypes[name], copy=False)
                    self.last[name] = inputs[name]
                if self.graph is not None:
                    self.graph.launch(self.arrays.stream)
                else:
                    self._enqueue()
                return {name: self.buffers[name].copy() for name in self.outputs}


class TensorRtBackend(Backend):
    """name: "tensorrt" | "tensorrt-rtx"; check_sha256: hash every plan at load (GBs: seconds);
    device_id: the CUDA device (``--device N``); arrays: an array library to run on instead of a
    fresh CupyArrays (tests pass stand-ins)."""

    def __init__(
        self,
        name: str = "tensorrt",
        *,
        check_sha256: bool = True,
        device_id: int = 0,
        trt_module: Any = None,
        arrays: HostArrays | None = None,
    ) -> None:
        super().__init__()
        if name not in TRT_MODULES:
            raise ValueError(f"unknown TensorRT backend {name!r}")
        self.name = name
        self.check_sha256 = check_sha256
        self.device_id = int(device_id)
        self._trt = trt_module if trt_module is not None else import_trt(name)
        self.arrays = arrays if arrays is not None else CupyArrays(self.device_id)
        self._runtime: Any = None
        self._runtime_cache: RuntimeCache | None = None
        self._runners: dict[str, PlanRunner] = {}
        self.scratch: Array | None = None  # shared by every context
        self.memory: dict[str, dict[str, int]] = {}  # {engine: {"weights": bytes, "scratch": bytes}}

    def _gpu_cc(self) -> str | None:
        cc = getattr(self.arrays, "compute_capability", None)
        return cc() if cc is not None else None

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        trt = self._trt
        if self._runtime is None:
            self._runtime = trt.Runtime(make_logger(trt))
        rtx = is_rtx(self.name)
        fix = f"run `gligen-rt build --onnx {folder.path} --backend {self.name}`"
        loaded: dict[str, tuple[Any, EngineSpec, Any]] = {}
        for name in engines:
            plan = folder.built_dir(self.name) / f"{name}{PLAN_SUFFIX}"
            built = folder.built_spec(self.name, name)
            if built is None or not plan.is_file():
                raise EngineError(f"{folder.built_dir(self.name)} holds no TensorRT plan for {name}: {fix}")
            spec, manifest = built
            verify(
                manifest,
                library_versions={TRT_MODULES[self.name]: str(trt.__version__)},
                gpu_cc=None if rtx else self._gpu_cc(),
                artifact_path=plan,
                check_sha256=self.check_sha256,
            )
            engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise EngineError(f"TensorRT could not deserialize {name}: rebuild it: {fix}")
            loaded[name] = (engine, spec, manifest)
            self.memory[name] = {"weights": plan.stat().st_size, "scratch": device_memory_size(engine)}
        if not loaded:
            return
        if rtx and self._runtime_cache is None:
            first = next(iter(loaded.values()))[0]
            self._runtime_cache = RuntimeCache(first, folder.built_dir(self.name) / RUNTIME_CACHE)
        need = max(device_memory_size(e) for e, _, _ in loaded.values())
        if self.scratch is None or self.scratch.nbytes < need:
            self.scratch = self.arrays.empty((max(need, 1),), np.uint8)
            for runner in self._runners.values():
                runner.set_scratch(self.scratch)
        for name, (engine, spec, manifest) in loaded.items():
            self._runners[name] = PlanRunner(
                trt,
                engine,
                spec,
                manifest.builder,
                self.arrays,
                self.name,
                runtime_cache=self._runtime_cache,
                scratch=self.scratch,
            )
            self.specs[name] = spec

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        return self._runners[engine].run(inputs)

    def release(self, engines: Sequence[str]) -> None:
        """Free the contexts, buffers and weights of `engines` (--low-memory); the scratch stays."""
        self.arrays.synchronize()  # their queued work must finish before their memory is reused
        for name in engines:
            self._runners.pop(name, None)
            self.specs.pop(name, None)

    def close(self) -> None:
        if self._runtime_cache is not None:
            self._runtime_cache.save()
            self._runtime_cache = None
        self._runners.clear()
        self.specs.clear()
        self.scratch = None
        self._runtime = None


def run_plan(
    plan: str | Any,
    spec: EngineSpec,
    inputs: Mapping[str, np.ndarray],
    *,
    backend: str = "tensorrt",
    builder: Mapping[str, Any] | None = None,
    device_id: int = 0,
) -> dict[str, np.ndarray]:
    """Run one plan file once on host arrays (tools and tests): the runtime's runner on a fresh
    stream of device `device_id`; outputs come back as numpy arrays."""
    from pathlib import Path

    trt = import_trt(backend)
    arrays = CupyArrays(device_id)
    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise EngineError(f"TensorRT could not deserialize {plan}: rebuild it with `gligen-rt build`")
    with arrays.scope():
        runner = PlanRunner(trt, engine, spec, builder or {}, arrays, backend)
        out = runner.run({k: arrays.asarray(v) for k, v in inputs.items()})
        arrays.synchronize()
        return {k: arrays.to_host(v) for k, v in out.items()}
