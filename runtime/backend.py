"""Backends behind three verbs: ``load`` the engines of a folder, ``run`` one of them, ``close``.

A backend hides everything library-specific: sessions, compiled models, plans, device buffers,
streams. The denoising loop only sees ``run(engine, {input: array}) -> {output: array}`` with arrays
of the backend's ``arrays`` library (numpy, or CuPy on GPU backends) and the engine's boundary
dtypes (float32; int32 token ids).

Thread-safety contract: ``run`` may be called from several threads at once. ONNX Runtime sessions
are thread-safe; OpenVINO keeps a pool of infer requests; TensorRT contexts and the torch model are
serialized by a per-engine lock. ``load`` and ``close`` are not thread-safe.

| name          | library / device                          | artifacts used                               |
|---------------|-------------------------------------------|----------------------------------------------|
| ort-cpu       | ONNX Runtime, CPU provider                | DIR/<engine>.onnx (DIR/ort-cpu/ when built)   |
| ort-cuda      | ONNX Runtime, CUDA provider, IO binding   | DIR/<engine>.onnx (DIR/ort-cuda/ when built)  |
| ort-trt       | ONNX Runtime, TensorRT provider           | DIR/<engine>.onnx + DIR/ort-trt/ EP caches    |
| tensorrt      | TensorRT plans, CuPy buffers, CUDA graphs | DIR/tensorrt/<engine>.plan (required)         |
| tensorrt-rtx  | TensorRT-RTX plans, same runner           | DIR/tensorrt-rtx/<engine>.plan (required)     |
| openvino      | OpenVINO CPU, FP32                        | DIR/openvino/<engine>.xml IR + cache (built), else DIR/<engine>.onnx |
| openvino-bf16 | OpenVINO CPU, BF16                        | DIR/openvino-bf16/ (built), else DIR/<engine>.onnx |
| openvino-int8 | OpenVINO CPU, INT8 weights, BF16          | DIR/openvino-int8/ (required)                 |
| openvino-int8a| OpenVINO CPU, UNets W8A8, BF16 elsewhere  | DIR/openvino-int8a/ (required)                |
| torch         | the PyTorch reference (parity)            | the model the folder was exported from        |
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from gligen_rt.core.backends import BACKENDS, GPU_BACKENDS
from gligen_rt.core.errors import EngineError
from gligen_rt.engines.spec import EngineSpec

from .arrays import Array, HostArrays
from .folder import EngineFolder


class Backend(abc.ABC):
    """load / run / close over the engines of one folder.

    Attributes:
        name: the backend's name (``BACKENDS``).
        arrays: the array library of run()'s inputs and outputs.
        specs: {engine: EngineSpec} of the loaded engines (a built artifact's own envelope, e.g.
            static, where it is narrower than the folder's).
    """

    name = ""

    def __init__(self) -> None:
        self.arrays: HostArrays = HostArrays()
        self.specs: dict[str, EngineSpec] = {}

    @abc.abstractmethod
    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        """Verify and load `engines` of `folder` (EngineError / BackendUnavailable, one line)."""

    @abc.abstractmethod
    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one engine: {input name: array} -> {output name: array}; thread-safe."""

    def release(self, engines: Sequence[str]) -> None:
        """Unload `engines` (``--low-memory`` loads encoders and the VAE per stage); load brings
        them back. Backends that hold device memory per engine free it here."""
        for name in engines:
            self.specs.pop(name, None)

    def trim(self, engines: Sequence[str]) -> None:
        """Free what `engines` hold besides their weights (intermediate buffers), keeping them loaded:
        their next call allocates it again. ``--low-memory`` trims the UNets before the VAE decodes,
        so the two stages' buffers are never resident together. A no-op where a backend has nothing
        to free this way."""
        del engines  # nothing to free by default

    @abc.abstractmethod
    def close(self) -> None:
        """Release sessions, buffers and device memory; the backend cannot run afterwards."""

    def has(self, engine: str) -> bool:
        return engine in self.specs

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_loaded(self, engine: str) -> None:
        if engine not in self.specs:
            raise EngineError(
                f"engine {engine!r} is not loaded on {self.name}: loaded are {', '.join(self.specs)}"
            )


def make_backend(name: str, *, device_id: int | None = None, **options: Any) -> Backend:
    """A fresh, unloaded backend by name; options go to its constructor (e.g. threads=2).

    device_id: the CUDA device of a GPU backend (``--device N``; ignored by CPU backends, so one
    flag serves every backend). None: device 0.

    Libraries are imported here, lazily: a missing one raises BackendUnavailable (one line).
    """
    if device_id is not None and name in GPU_BACKENDS:
        options["device_id"] = int(device_id)
    if name in ("ort-cpu", "ort-cuda", "ort-trt"):
        from .backend_ort import OrtBackend

        return OrtBackend(name.removeprefix("ort-"), **options)
    if name in ("openvino", "openvino-bf16", "openvino-int8", "openvino-int8a"):
        from .backend_openvino import OpenVinoBackend

        return OpenVinoBackend(name, **options)
    if name in ("tensorrt", "tensorrt-rtx"):
        from .backend_tensorrt import TensorRtBackend

        return TensorRtBackend(name, **options)
    if name == "torch":
        from .backend_torch import TorchBackend

        return TorchBackend(**options)
    raise EngineError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
