"""The array library a backend's engines consume and produce: numpy on the host, CuPy on a GPU.

The denoising loop is written once against the small API numpy and CuPy share (operators with
python floats, slicing, ``concatenate``, ``isfinite``); each backend names its ``Arrays``
(see ARCHITECTURE.md, "Device arrays"). CuPy is imported only when a GPU backend asks for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gligen_rt.core.errors import BackendUnavailable

Array = Any  # numpy.ndarray or cupy.ndarray


class HostArrays:
    """numpy arrays in host memory (CPU backends)."""

    name = "numpy"
    on_device = False

    def __init__(self) -> None:
        self.xp = np

    def asarray(self, a: np.ndarray, dtype: Any = None) -> Array:
        """Host array -> backend array (C-contiguous; `dtype` float32 / int32 or None to keep)."""
        return np.ascontiguousarray(a, dtype=dtype)

    def to_host(self, x: Array) -> np.ndarray:
        """Backend array -> numpy array (no copy on the host)."""
        return np.asarray(x)

    def concat(self, xs: Sequence[Array], axis: int = 0) -> Array:
        """Concatenate along `axis`."""
        return np.concatenate(list(xs), axis=axis)

    def all_finite(self, x: Array) -> bool:
        return bool(np.isfinite(x).all())

    def empty(self, shape: Sequence[int], dtype: Any) -> Array:
        """An uninitialized C-contiguous array (device buffers of engines)."""
        return np.empty(tuple(shape), dtype=dtype)

    def pointer(self, x: Array) -> int:
        """The address of x's first element (what TensorRT / IO binding are given)."""
        return int(x.ctypes.data)

    def mark(self) -> Any:
        """A point in the request's timeline: a host clock here, a CUDA event on the stream on GPU."""
        return time.perf_counter()

    def elapsed(self, start: Any, end: Any) -> float:
        """Seconds between two marks; on GPU valid once the stream has passed `end` (after the
        request's one synchronize), so timing never makes the host wait."""
        return float(end - start)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the host)."""

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the loop's arithmetic runs (CuPy: the backend's device and stream)."""
        return contextlib.nullcontext()


class CupyArrays(HostArrays):
    """CuPy arrays in GPU memory, with CuPy's memory pool; `stream` is the current stream for all of
    the loop's arithmetic (a non-blocking stream owned by the backend)."""

    name = "cupy"
    on_device = True

    def __init__(self, device_id: int = 0) -> None:
        self.xp = import_cupy()
        self.device_id = int(device_id)
        with self.xp.cuda.Device(self.device_id):
            self.stream = self.xp.cuda.Stream(non_blocking=True)

    def asarray(self, a: np.ndarray, dtype: Any = None) -> Array:
        with self.xp.cuda.Device(self.device_id), self.stream:
            return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, x: Array) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        with self.stream:
            return self.xp.asnumpy(x, stream=self.stream)

    def concat(self, xs: Sequence[Array], axis: int = 0) -> Array:
        with self.stream:
            return self.xp.concatenate(list(xs), axis=axis)

    def all_finite(self, x: Array) -> bool:
        with self.stream:
            return bool(self.xp.isfinite(x).all())

    def empty(self, shape: Sequence[int], dtype: Any) -> Array:
        with self.xp.cuda.Device(self.device_id), self.stream:
            return self.xp.empty(tuple(shape), dtype=dtype)

    def pointer(self, x: Array) -> int:
        return int(x.data.ptr)

    def mark(self) -> Any:
        event = self.xp.cuda.Event()
        event.record(self.stream)
        return event

    def elapsed(self, start: Any, end: Any) -> float:
        return self.xp.cuda.get_elapsed_time(start, end) / 1000.0

    def synchronize(self) -> None:
        self.stream.synchronize()

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(self.xp.cuda.Device(self.device_id))
        stack.enter_context(self.stream)
        return stack

    def compute_capability(self) -> str:
        """ "major.minor" of the GPU, e.g. "8.9"."""
        cc = self.xp.cuda.Device(self.device_id).compute_capability  # e.g. "89"
        return f"{cc[:-1]}.{cc[-1]}"


def import_cupy() -> Any:
    """Import CuPy; BackendUnavailable (one line) when there is no GPU / driver (asked first: then
    installing CuPy would not help), when CuPy is missing, or when it sees no GPU."""
    from gligen_rt.engines.gpu import require_gpu

    require_gpu("a GPU backend (CuPy device arrays)")
    try:
        import cupy
    except ImportError:
        raise BackendUnavailable(
            "CuPy is not installed: pip install 'gligen-rt[cuda13]' (or [cuda12] for CUDA 12 / JetPack 6)"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError without a driver
        count = 0
    if count == 0:
        raise BackendUnavailable("no CUDA GPU is visible: GPU backends need an NVIDIA GPU and its driver")
    return cupy
