"""TensorRT and TensorRT-RTX: one code path for building plans and running them.

`backend` is "tensorrt" (module `tensorrt`, 10.x) or "tensorrt-rtx" (module `tensorrt_rtx`). Both
expose the same Python API for what is used here; the differences are handled in one place each:

- TensorRT-RTX networks are strongly typed only (FP16 must be in the ONNX graph) and its timing
  cache calls are no-ops, so it gets neither BuilderFlag.FP16 nor a timing cache. It JIT-compiles
  kernels at load; a runtime cache file (optional) keeps them across processes.
- TensorRT 10 builds FP32 graphs strongly typed, FP16 graphs (Cast nodes at the boundary) strongly
  typed, and FP32 graphs with BuilderFlag.FP16 weakly typed ("fp32-fp16-flag").

The builder runs without a GPU for TensorRT-RTX (the plan is portable across RTX GPUs); TensorRT
needs one. Running any plan needs an NVIDIA GPU and cuda-python (`cuda.bindings`, imported lazily).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.core.errors import BackendUnavailable, EngineError
from gligen_rt.engines.manifest import (
    FLAVORS,
    EngineManifest,
    atomic_write_bytes,
    load_manifest,
    manifest_path_for,
    onnx_sha256,
    verify,
    write_manifest,
)
from gligen_rt.engines.spec import EngineSpec, fingerprint, spec_to_dict, static, trt_profile

log = logging.getLogger(__name__)

BACKENDS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
PLAN_SUFFIX = ".plan"
_EXTRA = {"tensorrt": "trt", "tensorrt-rtx": "trt-rtx"}


def import_trt(backend: str = "tensorrt") -> Any:
    """Import the TensorRT module of `backend`; BackendUnavailable (one line) when it is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown TensorRT backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    module = BACKENDS[backend]
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailable(
            f"{module} is not installed: pip install 'gligen-rt[{_EXTRA[backend]}]' (needs an NVIDIA GPU)"
        ) from None


def is_rtx(backend: str) -> bool:
    return backend == "tensorrt-rtx"


def choose_flavor(backend: str, onnx_precision: str, precision: str | None = None) -> str:
    """How a graph exported at `onnx_precision` is built for `precision` (default: as exported)."""
    precision = precision or onnx_precision
    if onnx_precision == "fp16":
        if precision != "fp16":
            raise EngineError(
                "the ONNX graphs are FP16 and cannot be built as FP32: "
                "re-export with `gligen-rt export --precision fp32`"
            )
        return "fp16-strongly-typed"
    if precision == "fp32":
        return "fp32"
    if is_rtx(backend):
        raise EngineError(
            "TensorRT-RTX is strongly typed: FP16 must be in the graph; "
            "re-export with `gligen-rt export --precision fp16`"
        )
    return "fp32-fp16-flag"


def _make_logger(trt: Any) -> Any:
    """TensorRT's built-in logger (prints to stderr), at WARNING, or VERBOSE when DEBUG is on.

    Not a Python ILogger subclass on purpose: TensorRT calls its logger from its own threads while
    holding internal locks, and a Python callback there (it needs the GIL) deadlocked the builder.
    """
    level = trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING
    return trt.Logger(level)


def _parser_errors(parser: Any) -> str:
    msgs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() or (f"#{e.node()}" if e.node() >= 0 else "")
        op = e.node_operator()
        where = f"node {node} ({op}): " if node or op else ""
        msgs.append(where + " ".join(e.desc().split()))
    return "; ".join(msgs) or "unknown parser error"


def gpu_compute_capability() -> str | None:
    """ "major.minor" of the current CUDA device through cuda-python, or None (no GPU or library)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, dev = cudart.cudaGetDevice()
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    attr = cudart.cudaDeviceAttr
    err1, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, dev)
    err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, dev)
    if err1 != cudart.cudaError_t.cudaSuccess or err2 != cudart.cudaError_t.cudaSuccess:
        return None
    return f"{major}.{minor}"


def _check_io(trt: Any, network: Any, spec: EngineSpec, onnx_name: str) -> None:
    """The parsed network's I/O names (in order) and boundary dtypes must be the spec's."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    got_in = [t.name for t in tensors[: network.num_inputs]]
    got_out = [t.name for t in tensors[network.num_inputs :]]
    if got_in != list(spec.input_names) or got_out != list(spec.output_names):
        raise EngineError(
            f"{onnx_name} does not match the {spec.name} spec: inputs {got_in} outputs {got_out}, "
            f"expected {list(spec.input_names)} -> {list(spec.output_names)}: re-export the engine folder"
        )
    dtypes = {"float32": trt.float32, "int32": trt.int32}
    for t in tensors:
        want = spec.tensor(t.name).dtype
        if t.dtype != dtypes[want]:
            raise EngineError(
                f"{onnx_name}: {t.name} is {t.dtype} but the {spec.name} spec says {want} "
                "(engine I/O stays float32/int32 at every precision): re-export the engine folder"
            )


def build_engine(
    onnx_path: str | os.PathLike[str],
    spec: EngineSpec,
    out_path: str | os.PathLike[str],
    *,
    backend: str = "tensorrt",
    precision: str = "fp32",
    flavor: str = "fp32",
    timing_cache_path: str | os.PathLike[str] | None = None,
    static_shape: tuple[int, int, int] | None = None,
    workspace: int | None = None,
    source: EngineManifest | None = None,
) -> Path:
    """Parse `onnx_path`, build a serialized plan for `spec`, write it and its manifest atomically.

    precision: "fp32" | "fp16" (recorded); flavor: one of manifest.FLAVORS (see choose_flavor).
    static_shape: (batch, height, width) builds min = opt = max (CUDA-graph engines); the manifest
        then records the static spec's fingerprint.
    workspace: builder workspace limit in bytes (default: TensorRT's, the device memory).
    source: the exported graph's manifest (DIR/<engine>.json): model config, checkpoint sha256 and
        ONNX sha256 are copied from it; without it the ONNX is hashed here.
    Returns the plan path. Raises EngineError (one line) when parsing or building fails.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor {flavor!r} is not one of {FLAVORS}")
    trt = import_trt(backend)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if static_shape is not None:
        spec = static(spec, *static_shape)
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    strongly_typed = is_rtx(backend) or flavor != "fp32-fp16-flag"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (<engine>.onnx.data) relative to the file.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(f"{BACKENDS[backend]} could not parse {onnx_path.name}: {_parser_errors(parser)}")
    _check_io(trt, network, spec, onnx_path.name)

    config = builder.create_builder_config()
    if flavor == "fp32-fp16-flag":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineError(
                f"TensorRT {trt.__version__} is strongly typed only: "
                "re-export with `gligen-rt export --precision fp16`"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))

    profile = builder.create_optimization_profile()
    shapes = trt_profile(spec)
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        lo, opt, hi = shapes[name]
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    use_cache = timing_cache_path is not None and not is_rtx(backend)
    if use_cache:
        cache_path = Path(timing_cache_path)  # type: ignore[arg-type]
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):
            log.warning("timing cache %s does not match this GPU/TensorRT: starting a new one", cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), False)

    log.info("building %s (%s, %s) from %s", spec.name, backend, flavor, onnx_path.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"{BACKENDS[backend]} could not build {spec.name} (its log above says why): "
            "check the GPU memory and the ONNX graph, or re-export the engine folder"
        )
    if use_cache:
        atomic_write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()))

    data = memoryview(serialized)
    old_manifest = manifest_path_for(out_path)
    old_manifest.unlink(missing_ok=True)  # a plan is never paired with a stale manifest
    atomic_write_bytes(out_path, data)
    builder_settings = {
        "strongly_typed": strongly_typed,
        "fp16_flag": flavor == "fp32-fp16-flag",
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "workspace": workspace,
        "timing_cache": use_cache,
        "builder_optimization_level": getattr(config, "builder_optimization_level", None),
    }
    write_manifest(
        old_manifest,
        EngineManifest(
            engine=spec.name,
            backend=backend,
            artifact=out_path.name,
            artifact_sha256=hashlib.sha256(data).hexdigest(),
            artifact_size=data.nbytes,
            spec_fingerprint=fingerprint(spec),
            spec=spec_to_dict(spec),
            onnx_sha256=source.onnx_sha256 if source else onnx_sha256(onnx_path),
            model_config=dict(source.model_config) if source else {},
            precision=precision,
            flavor=flavor,
            checkpoint_sha256=source.checkpoint_sha256 if source else None,
            builder=builder_settings,
            library_versions={BACKENDS[backend]: str(trt.__version__)},
            # TensorRT plans are tied to the GPU they were built on; TensorRT-RTX plans are portable.
            gpu_compute_capability=None if is_rtx(backend) else gpu_compute_capability(),
            parity=dict(source.parity) if source else {},
        ),
    )
    return out_path


# ---------------------------------------------------------------------------------------------
# Running (GPU only)


class CudaDevice:
    """Device memory, one stream and CUDA graphs through cuda-python's runtime API (`cuda.bindings`).

    cuda-python is chosen over torch (the runtime is torch-free), CuPy (large) and PyCUDA (a
    context of its own): it is NVIDIA's thin binding to the CUDA runtime that TensorRT's samples use.
    Every call returns an error code first; `_check` turns a failure into a one-line EngineError.
    """

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendUnavailable(
                "cuda-python is not installed: pip install cuda-python (needs an NVIDIA GPU)"
            ) from None
        self.rt = cudart
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count == 0:
            raise BackendUnavailable("no CUDA GPU is visible: running TensorRT engines needs an NVIDIA GPU")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, msg = self.rt.cudaGetErrorString(err)
            text = msg.decode() if isinstance(msg, bytes) else str(msg)
            raise EngineError(f"CUDA error in {what}: {text}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def compute_capability(self) -> str | None:
        return gpu_compute_capability()

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to device memory at `ptr` (ordered on the stream)."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        """Copy device memory at `ptr` into a C-contiguous host array (complete after synchronize)."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def capture(self, enqueue: Any) -> Any:
        """Capture what `enqueue()` puts on the stream into an instantiated CUDA graph."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self._check(self.rt.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self._check(self.rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        try:
            return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    def destroy_graph(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def close(self) -> None:
        if self.stream is not None:
            self._check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class TrtEngineRunner:
    """One TensorRT / TensorRT-RTX plan behind load / run / close.

    run() takes and returns numpy arrays with the engine's boundary dtypes (float32, int32 ids):
    inputs are copied to persistent device buffers (grown on demand), the engine is enqueued with
    execute_async_v3 on the device's stream, outputs are copied back. With `cuda_graph=True`:
    TensorRT captures one CUDA graph per input-shape set (meant for static engines, where there is
    one); TensorRT-RTX uses its own whole-graph capture strategy. `runtime_cache_path` (RTX only)
    keeps JIT-compiled kernels across processes.
    """

    def __init__(
        self,
        plan_path: str | os.PathLike[str],
        *,
        backend: str = "tensorrt",
        spec: EngineSpec | None = None,
        cuda_graph: bool = False,
        check_sha256: bool = True,
        runtime_cache_path: str | os.PathLike[str] | None = None,
        device: Any = None,
        trt_module: Any = None,
    ) -> None:
        self.plan_path = Path(plan_path)
        self.backend = backend
        self.spec = spec
        self.cuda_graph = cuda_graph
        self.check_sha256 = check_sha256
        self.runtime_cache_path = Path(runtime_cache_path) if runtime_cache_path else None
        self._device = device
        self._owns_device = device is None
        self._trt = trt_module
        self._engine: Any = None
        self._context: Any = None
        self._runtime_cache: Any = None
        self._inputs: dict[str, np.dtype] = {}
        self._outputs: dict[str, np.dtype] = {}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}

    def load(self) -> None:
        """Verify the manifest, deserialize the plan and create the execution context."""
        trt = self._trt or import_trt(self.backend)
        self._trt = trt
        if self._device is None:
            self._device = CudaDevice()
        manifest_path = manifest_path_for(self.plan_path)
        if manifest_path.is_file():
            verify(
                load_manifest(manifest_path),
                spec=self.spec,
                library_versions={BACKENDS[self.backend]: str(trt.__version__)},
                gpu_cc=self._device.compute_capability(),
                artifact_path=self.plan_path,
                check_sha256=self.check_sha256,
            )
        elif self.spec is not None:
            raise EngineError(f"{manifest_path} is missing: rebuild with `gligen-rt build`")
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"could not load {self.plan_path.name} (TensorRT's log above says why): "
                "rebuild with `gligen-rt build`"
            )
        self._context = self._create_context(trt)
        if self._context is None:
            raise EngineError(
                f"could not create an execution context for {self.plan_path.name} (GPU memory?)"
            )
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = dtype

    def _create_context(self, trt: Any) -> Any:
        if not is_rtx(self.backend) or not hasattr(self._engine, "create_runtime_config"):
            return self._engine.create_execution_context()
        config = self._engine.create_runtime_config()
        if self.cuda_graph:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self.runtime_cache_path is not None:
            cache = config.create_runtime_cache()
            if self.runtime_cache_path.is_file() and not cache.deserialize(
                self.runtime_cache_path.read_bytes()
            ):
                log.info(
                    "runtime cache %s does not match this GPU/driver: starting anew", self.runtime_cache_path
                )
            config.set_runtime_cache(cache)
            self._runtime_cache = cache
        return self._engine.create_execution_context(config)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self._device.free(ptr)
            self._drop_graphs()  # captured graphs hold the old addresses
            ptr = self._device.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
            self._context.set_tensor_address(name, ptr)
        return ptr

    def _drop_graphs(self) -> None:
        for g in self._graphs.values():
            self._device.destroy_graph(g)
        self._graphs.clear()

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._device.stream_handle):
            raise EngineError(
                f"{self.plan_path.name}: TensorRT failed to enqueue the engine (its log above says why)"
            )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: {name: array} for every engine input -> {name: array} for every output."""
        if self._context is None:
            raise EngineError(f"{self.plan_path.name} is not loaded: call load() first")
        missing = [n for n in self._inputs if n not in inputs]
        extra = [n for n in inputs if n not in self._inputs]
        if missing or extra:
            raise EngineError(f"{self.plan_path.name}: missing inputs {missing}, unexpected inputs {extra}")
        host: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs.items():
            a = np.ascontiguousarray(inputs[name], dtype=dtype)
            if self._shapes.get(name) != a.shape:
                if not self._context.set_input_shape(name, a.shape):
                    raise EngineError(
                        f"{self.plan_path.name}: input {name} shape {a.shape} is outside the engine's "
                        f"profile: rebuild with a wider envelope"
                    )
                self._shapes[name] = a.shape
            host[name] = a
        for name, a in host.items():
            self._device.to_device(self._buffer(name, a.nbytes), a)
        outputs: dict[str, np.ndarray] = {}
        for name, dtype in self._outputs.items():
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=dtype)
            self._buffer(name, outputs[name].nbytes)
        if self.cuda_graph and not is_rtx(self.backend):
            key = tuple(self._shapes[n] for n in self._inputs)
            if key not in self._graphs:
                self._enqueue()  # TensorRT needs one plain enqueue after a shape change before capture
                self._device.synchronize()
                self._graphs[key] = self._device.capture(self._enqueue)
            self._device.launch(self._graphs[key])
        else:
            self._enqueue()
        for name, out in outputs.items():
            self._device.to_host(out, self._buffers[name][0])
        self._device.synchronize()
        return outputs

    def close(self) -> None:
        """Free device memory and TensorRT objects; save the RTX runtime cache when one is used."""
        if self._runtime_cache is not None and self.runtime_cache_path is not None:
            atomic_write_bytes(self.runtime_cache_path, memoryview(self._runtime_cache.serialize()))
            self._runtime_cache = None
        if self._device is not None:
            self._drop_graphs()
            for ptr, _ in self._buffers.values():
                self._device.free(ptr)
            if self._owns_device:
                self._device.close()
                self._device = None
        self._buffers.clear()
        self._shapes.clear()
        self._context = None
        self._engine = None

    def __enter__(self) -> TrtEngineRunner:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
