"""Stand-ins for TensorRT and a CUDA stream, for testing the TensorRT runner without a GPU.

FakeTrt is the slice of the TensorRT Python API the runtime uses; FakeEngine runs a Python kernel
on the bound buffers; FakeDeviceArrays are numpy arrays posing as device arrays whose stream
records what the host asked of it (waits, captures, graph launches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gligen_rt.engines.spec import EngineSpec
from gligen_rt.runtime.arrays import HostArrays

Kernel = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class FakeStream:
    """Records synchronize (waits), capture and graph launches; `ptr` is what engines are given."""

    ptr = 7

    def __init__(self) -> None:
        self.waits = 0
        self.launches = 0
        self.capturing: list[Callable[[], None]] | None = None

    def synchronize(self) -> None:
        self.waits += 1

    def begin_capture(self) -> None:
        self.capturing = []

    def end_capture(self) -> FakeGraph:
        ops, self.capturing = self.capturing or [], None
        return FakeGraph(ops)


class FakeGraph:
    def __init__(self, ops: list[Callable[[], None]]) -> None:
        self.ops = ops

    def launch(self, stream: FakeStream) -> None:
        stream.launches += 1
        for op in self.ops:
            op()


class FakeDeviceArrays(HostArrays):
    """numpy arrays that play device arrays: `memory` maps pointers to the buffers made by empty()."""

    name = "fake-device"
    on_device = True

    def __init__(self) -> None:
        super().__init__()
        self.stream = FakeStream()
        self.memory: dict[int, np.ndarray] = {}
        self.host_copies = 0

    def empty(self, shape: Any, dtype: Any) -> np.ndarray:
        a = np.zeros(tuple(shape), dtype=dtype)
        self.memory[self.pointer(a)] = a
        return a

    def to_host(self, x: Any) -> np.ndarray:
        self.host_copies += 1
        return np.asarray(x)

    def synchronize(self) -> None:
        self.stream.synchronize()


class FakeRuntimeCache:
    def __init__(self) -> None:
        self.blob = b""

    def serialize(self) -> bytes:
        return self.blob

    def deserialize(self, data: bytes) -> bool:
        self.blob = bytes(data)
        return True


class FakeRuntimeConfig:
    def __init__(self) -> None:
        self.cuda_graph_strategy: Any = None
        self.runtime_cache: Any = None
        self.strategy: Any = None

    def create_runtime_cache(self) -> FakeRuntimeCache:
        return FakeRuntimeCache()

    def set_runtime_cache(self, cache: Any) -> None:
        self.runtime_cache = cache

    def set_execution_context_allocation_strategy(self, strategy: Any) -> None:
        self.strategy = strategy


class FakeTrt:
    __version__ = "0.0-fake"
    plans: dict[bytes, FakeEngine] = {}  # what Runtime.deserialize_cuda_engine returns per plan

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class ExecutionContextAllocationStrategy:
        STATIC, ON_PROFILE_CHANGE, USER_MANAGED = "static", "on-profile-change", "user-managed"

    class CudaGraphStrategy:
        DISABLED, WHOLE_GRAPH_CAPTURE = "disabled", "whole-graph"

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            return FakeTrt.plans.get(bytes(data))


class FakeEngine:
    """An engine with the spec's I/O whose enqueue runs `kernel` on the bound buffers (at enqueue,
    or at graph launch when it was enqueued during a capture)."""

    def __init__(self, spec: EngineSpec, arrays: FakeDeviceArrays, kernel: Kernel, scratch: int = 0) -> None:
        self.spec = spec
        self.arrays = arrays
        self.kernel = kernel
        self.device_memory_size_v2 = scratch
        self.names = [t.name for t in spec.inputs] + [t.name for t in spec.outputs]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_dtype(self, name: str) -> Any:
        return np.dtype(self.spec.tensor(name).dtype)

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.spec.input_names else "output"

    def create_execution_context(self, arg: Any = None) -> FakeContext:
        return FakeContext(self, arg)

    def create_runtime_config(self) -> FakeRuntimeConfig:
        return FakeRuntimeConfig()


class FakeContext:
    def __init__(self, engine: FakeEngine, arg: Any) -> None:
        self.engine = engine
        self.config = arg if isinstance(arg, FakeRuntimeConfig) else None
        self.strategy = self.config.strategy if self.config else arg
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []
        self.device_memory: tuple[int, int] | None = None

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.device_memory = (ptr, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        batch = self.engine.spec.envelope.batch
        if batch and not batch[0] <= shape[0] <= batch[2]:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.engine.spec.input_names[0]]  # the toy: outputs shaped like input 0

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def _compute(self) -> None:
        memory = self.engine.arrays.memory
        feeds = {n: memory[self.addresses[n]] for n in self.engine.spec.input_names}
        for name, value in self.engine.kernel(feeds).items():
            np.copyto(memory[self.addresses[name]], value, casting="unsafe")

    def execute_async_v3(self, stream: int) -> bool:
        self.streams.append(stream)
        capturing = self.engine.arrays.stream.capturing
        if capturing is not None:
            capturing.append(self._compute)
        else:
            self._compute()
        return True
