"""gligen_rt.runtime: exported GLIGEN engines -> images, without torch.

    from gligen_rt.runtime import GligenPipeline
    pipe = GligenPipeline.from_engines("engines/", backend="ort-cpu")   # or GligenPipeline.tiny_random()
    result = pipe(request)            # GenerationResult: images (N, H, W, 3) uint8, timings

Imports numpy, pillow, tokenizers and (lazily, per backend) onnxruntime / openvino / tensorrt /
cupy; never torch, diffusers or transformers (the `torch` parity backend imports them itself).
"""

from __future__ import annotations

from .backend import BACKENDS, Backend, make_backend
from .folder import EngineFolder
from .pipeline import GenerationResult, GligenPipeline

__all__ = ["BACKENDS", "Backend", "EngineFolder", "GenerationResult", "GligenPipeline", "make_backend"]
