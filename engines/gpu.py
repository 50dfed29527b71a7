"""Is there an NVIDIA GPU with a working driver? Asked first by every GPU backend and build.

Without a GPU, the first thing a GPU backend trips on is a missing library (CuPy, TensorRT,
onnxruntime-gpu), and installing it would not help; the real blocker is the driver. This asks the
CUDA driver itself (``libcuda``: ``cuInit`` and ``cuDeviceGetCount`` through ctypes), which needs no
Python package and takes milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from gligen_rt.core.errors import BackendUnavailable

_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


@functools.lru_cache(maxsize=1)
def gpu_count() -> tuple[int, str]:
    """(number of CUDA devices the driver sees, why 0 when it is 0)."""
    lib = None
    for name in (*_LIBRARIES, ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "the CUDA driver library (libcuda) is not installed"
    try:
        status = lib.cuInit(0)
        if status != 0:
            return 0, f"the CUDA driver found no usable device (cuInit error {status})"
        count = ctypes.c_int(0)
        status = lib.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:  # a stub library without the entry points
        return 0, "libcuda is a stub without a driver behind it"
    if status != 0:
        return 0, f"the CUDA driver cannot count devices (error {status})"
    return int(count.value), "" if count.value else "the CUDA driver sees no device"


def require_gpu(what: str) -> None:
    """BackendUnavailable (one line) naming `what` when no NVIDIA GPU and driver are usable here."""
    count, why = gpu_count()
    if count == 0:
        raise BackendUnavailable(
            f"no NVIDIA GPU / driver found ({why}): {what} needs one; on this machine use "
            "--backend ort-cpu or openvino"
        )
