"""TensorRT and TensorRT-RTX: one code path for building plans and running them.

`backend` is "tensorrt" (module `tensorrt`, 10.x) or "tensorrt-rtx" (module `tensorrt_rtx`). Both
expose the same Python API for what is used here; the differences are handled in one place each:

- TensorRT-RTX networks are strongly typed only (FP16 must be in the ONNX graph) and its timing
  cache calls are no-ops, so it gets neither BuilderFlag.FP16 nor a timing cache. It JIT-compiles
  kernels at load; a runtime cache file (optional) keeps them across processes.
- TensorRT 10 builds FP32 graphs strongly typed, FP16 graphs (Cast nodes at the boundary) strongly
  typed, and FP32 graphs with BuilderFlag.FP16 weakly typed ("fp32-fp16-flag").

The builder runs without a GPU for TensorRT-RTX (the plan is portable across RTX GPUs); TensorRT
needs one. Plans run in the runtime (runtime/backend_tensorrt.py, CuPy buffers on one stream); the
execution-context settings they share with tools (CUDA-graph strategy, RTX runtime cache, shared
scratch memory) and the one logger live here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gligen_rt.core.backends import TRT_MODULES
from gligen_rt.core.errors import BackendUnavailable, EngineError
from gligen_rt.engines.manifest import (
    FLAVORS,
    EngineManifest,
    atomic_write_bytes,
    manifest_path_for,
    onnx_sha256,
    write_manifest,
)
from gligen_rt.engines.spec import EngineSpec, fingerprint, spec_to_dict, static, trt_profile

log = logging.getLogger(__name__)

BACKENDS = TRT_MODULES  # {backend name: Python module}, from gligen_rt.core.backends
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


def make_logger(trt: Any) -> Any:
    """The one TensorRT logger of builders, tools and the runtime: TensorRT's built-in logger (prints to stderr), at WARNING, or VERBOSE when DEBUG is on.

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


def gpu_compute_capability(device_id: int = 0) -> str | None:
    """ "major.minor" of CUDA device `device_id` through CuPy, or None (no GPU or no CuPy)."""
    try:
        import cupy

        cc = cupy.cuda.Device(int(device_id)).compute_capability  # e.g. "89"
    except Exception:  # ImportError, or CUDARuntimeError without a driver / device
        return None
    return f"{cc[:-1]}.{cc[-1]}"


# Layer types of data-dependent control flow (ONNX If / Loop). A CUDA graph records one path
# through such an engine (the one taken at capture) and replays it for every input: never capture.
CONTROL_FLOW_LAYERS = (
    "CONDITION",
    "CONDITIONAL_INPUT",
    "CONDITIONAL_OUTPUT",
    "TRIP_LIMIT",
    "RECURRENCE",
    "ITERATOR",
    "LOOP_OUTPUT",
)


def control_flow_layers(trt: Any, network: Any) -> list[str]:
    """The sorted control-flow layer types (CONTROL_FLOW_LAYERS) of a parsed network; [] when none."""
    kinds = {getattr(trt.LayerType, k, None): k for k in CONTROL_FLOW_LAYERS}
    kinds.pop(None, None)
    found = {
        kinds[network.get_layer(i).type]
        for i in range(network.num_layers)
        if network.get_layer(i).type in kinds
    }
    return sorted(found)


def cuda_graph_allowed(builder: Mapping[str, Any]) -> bool:
    """May a plan be captured into a CUDA graph? Only when its build recorded no control flow
    (`builder["control_flow"] == []`); plans built before that was recorded are never captured."""
    return builder.get("control_flow") == []


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


def _scratch_bytes(trt: Any, logger: Any, data: memoryview) -> int | None:
    """The built plan's scratch memory (device_memory_size_v2), when a GPU here can load it."""
    if gpu_compute_capability() is None:
        return None
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        return None if engine is None else device_memory_size(engine)
    except Exception as e:  # reporting only: the plan itself is fine
        log.info("could not read the plan's scratch size: %s", e)
        return None


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
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    strongly_typed = is_rtx(backend) or flavor != "fp32-fp16-flag"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (<engine>.onnx.data) relative to the file.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(f"{BACKENDS[backend]} could not parse {onnx_path.name}: {_parser_errors(parser)}")
    _check_io(trt, network, spec, onnx_path.name)
    control_flow = control_flow_layers(trt, network)

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
    scratch = _scratch_bytes(trt, logger, data)
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
        # Data-dependent control flow (e.g. the gate-skip UNet's If layers): never CUDA-graph captured.
        "control_flow": control_flow,
        # Scratch (activation) bytes a context needs; None where no GPU could load the plan here.
        "device_memory": scratch,
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
# Execution contexts: the one place that knows TensorRT vs TensorRT-RTX at run time

RUNTIME_CACHE = "runtime.cache"  # TensorRT-RTX's JIT-compiled kernels, beside the plans


def device_memory_size(engine: Any) -> int:
    """Bytes of scratch (activation) memory an execution context of `engine` needs at most."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


class RuntimeCache:
    """TensorRT-RTX's runtime cache in one file: kernels JIT-compiled in one process are reused by
    the next (without it every process compiles them again at load). Shared by a folder's plans."""

    def __init__(self, engine: Any, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.cache = engine.create_runtime_config().create_runtime_cache()
        if self.path.is_file() and not self.cache.deserialize(self.path.read_bytes()):
            log.info("runtime cache %s does not match this GPU/driver: starting anew", self.path)

    def save(self) -> None:
        """Write the cache atomically; a read-only folder only loses the speed-up (a warning)."""
        try:
            atomic_write_bytes(self.path, memoryview(self.cache.serialize()))
        except OSError as e:
            log.warning("could not save the TensorRT-RTX runtime cache %s: %s", self.path, e)


def create_context(
    trt: Any,
    engine: Any,
    backend: str,
    *,
    cuda_graph: bool = False,
    runtime_cache: RuntimeCache | None = None,
    user_memory: bool = False,
) -> Any:
    """An execution context for `engine`, configured the same way for every caller.

    cuda_graph: TensorRT-RTX captures and replays CUDA graphs itself (WHOLE_GRAPH_CAPTURE); for
        TensorRT the caller captures (runtime/backend_tensorrt.py). Pass it only for engines
        `cuda_graph_allowed` says may be captured.
    runtime_cache: TensorRT-RTX only: JIT-compiled kernels kept across processes.
    user_memory: the context gets no scratch memory of its own (ExecutionContextAllocationStrategy
        USER_MANAGED); the caller hands it one shared buffer with `set_device_memory`.
    """
    strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED if user_memory else None
    if is_rtx(backend) and hasattr(engine, "create_runtime_config"):
        config = engine.create_runtime_config()
        graphs = trt.CudaGraphStrategy
        config.cuda_graph_strategy = graphs.WHOLE_GRAPH_CAPTURE if cuda_graph else graphs.DISABLED
        if runtime_cache is not None:
            config.set_runtime_cache(runtime_cache.cache)
        if strategy is not None:
            config.set_execution_context_allocation_strategy(strategy)
        return engine.create_execution_context(config)
    if strategy is not None:
        return engine.create_execution_context(strategy)
    return engine.create_execution_context()
