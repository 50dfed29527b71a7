"""The PyTorch reference behind the backend interface (parity checks): engine name -> GLIGENModel method.

torch and gligen_ref are imported here only, when this backend is created; the rest of the runtime
stays torch-free. On the CPU, inputs and outputs are numpy arrays (float32; int32 token ids), like
ort-cpu. On a CUDA device they are CuPy arrays exchanged with torch through DLPack (no copies), and
torch runs on the CuPy stream of the loop (``torch.cuda.ExternalStream``), so this backend also
exercises the device-resident loop of the GPU backends.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gligen_rt.core.errors import BackendUnavailable, EngineError
from gligen_rt.engines.spec import (
    GROUNDING,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    UNET_SHALLOW_GROUNDED,
    VAE_DECODER,
    VAE_ENCODER,
)

from .arrays import Array, CupyArrays
from .backend import Backend
from .folder import EngineFolder


def _call(model: Any, engine: str, t: dict[str, Any], deep: bool = False) -> tuple[Any, ...]:
    """One engine as a GLIGENModel method; returns the outputs in spec order (``deep``: the UNets'
    feature-cache output too)."""
    if engine == TEXT_ENCODER:
        return model.encode_text(t["input_ids"].long())
    if engine == IMAGE_ENCODER:
        return (model.encode_images(t["pixel_values"]),)
    if engine == GROUNDING:
        tokens, extra = model.grounding_tokens(**t)
        return (tokens,) if extra is None else (tokens, extra)
    if engine == UNET:
        out = model.unet_grounded(
            t["sample"], t["timestep"], t["context"], t["tokens"], t["gate"], t.get("extra"), deep
        )
        return out if deep else (out,)
    if engine == UNET_PLAIN:
        out = model.unet_plain(t["sample"], t["timestep"], t["context"], t.get("extra"), deep)
        return out if deep else (out,)
    if engine == UNET_SHALLOW:
        return (model.unet_shallow(t["sample"], t["timestep"], t["context"], t["deep"], t.get("extra")),)
    if engine == UNET_SHALLOW_GROUNDED:
        return (
            model.unet_shallow_grounded(
                t["sample"], t["timestep"], t["context"], t["tokens"], t["gate"], t["deep"], t.get("extra")
            ),
        )
    if engine == VAE_DECODER:
        return (model.vae_decode(t["latents"]),)
    if engine == VAE_ENCODER:
        return model.vae_encode(t["images"])
    raise EngineError(f"the torch backend has no engine {engine!r}")


class TorchBackend(Backend):
    """model: a gligen_ref GLIGENModel (float32); None builds the folder's model from its manifest
    (random-weight presets record their preset name and seed). device: "cpu" or "cuda[:i]"."""

    name = "torch"

    def __init__(self, *, model: Any = None, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch is not installed: pip install 'gligen-rt[export]'") from None
        self._torch = torch
        self.model = model
        self.device = device
        if str(device).startswith("cuda"):
            index = int(str(device).partition(":")[2] or 0)
            self.arrays = CupyArrays(index)
            self._stream = torch.cuda.ExternalStream(
                self.arrays.stream.ptr, device=torch.device("cuda", index)
            )
        if threads:
            torch.set_num_threads(int(threads))
        self._lock = threading.Lock()

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        if self.model is None:
            self.model = model_from_folder(folder)
        if self.model.config.key != folder.config.key:
            raise EngineError(
                f"the torch model is {self.model.config.key} but {folder.path} holds {folder.config.key}"
            )
        self.model = self.model.eval().to(self.device)
        for name in engines:
            self.specs[name] = folder.specs[name]

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self._check_loaded(engine)
        torch = self._torch
        names = self.specs[engine].output_names
        deep = "deep" in names
        if not self.arrays.on_device:
            t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
            with self._lock, torch.no_grad():
                outs = _call(self.model, engine, t, deep)
            return {n: o.detach().float().numpy() for n, o in zip(names, outs)}
        cp = self.arrays.xp
        with self._lock, torch.no_grad(), torch.cuda.stream(self._stream), self.arrays.scope():
            t = {k: torch.from_dlpack(cp.ascontiguousarray(cp.asarray(v))) for k, v in inputs.items()}
            outs = _call(self.model, engine, t, deep)
            out = {n: cp.from_dlpack(o.detach().float().contiguous()) for n, o in zip(names, outs)}
        return out

    def close(self) -> None:
        self.specs.clear()


_PRESET_SOURCE = re.compile(r"^(?P<preset>tiny-random|sd14) preset, random weights, seed (?P<seed>\d+)$")


def model_from_folder(folder: EngineFolder) -> Any:
    """The GLIGENModel an engine folder was exported from, when its manifest says how to rebuild it:
    a random-weight preset (the exporter's ``source``: "tiny-random preset, random weights, seed 0", or
    {"preset": "tiny-random", "seed": 0}). Checkpoint exports record only the checkpoint's sha256: pass
    ``model=`` (or use ``gligen-rt generate --checkpoint``) for those."""
    source = folder.manifest.extra.get("source")
    seed = None
    if isinstance(source, str) and (m := _PRESET_SOURCE.match(source)):
        seed = int(m["seed"])
    elif isinstance(source, Mapping) and "preset" in source:
        seed = int(source.get("seed", 0))
    if seed is None:
        raise EngineError(
            f"{folder.path} does not record how to rebuild its model (source {source!r}): the torch backend "
            "needs model=... (or use `gligen-rt generate --checkpoint ...` for the reference)"
        )
    from gligen_ref.model import build_model

    return build_model(folder.config, seed)
