"""Calibration inputs for INT8 activations (``gligen-rt build --backend openvino-int8a``).

INT8 activations need each quantized tensor's range, and the ranges a UNet sees depend on where it
is in a trajectory (the timestep), on the prompt and on the grounding. So the inputs are the UNets'
own, recorded while this runtime generates calibration requests on the exported FP32 graphs
(OpenVINO FP32): every call of ``unet``, ``unet_plain``, ``unet_shallow`` and ``unet_shallow_grounded``
along each request's
trajectory (classifier-free guidance batch, the request's sampler and steps), then ``samples`` of
them per engine spread evenly over the calls; a UNet that runs both phases (a gate-skip ``unet``,
or ``unet`` at gate 0) takes half of them from its grounded calls, where its fusers run.

Default requests (text-box models, one image, the folder's default size unless a size is given):
``DEFAULT_REQUESTS``, four everyday scenes with one to three boxes, 20 PLMS steps, SD's guidance
7.5; a folder exported with the feature cache runs them with it on both phases (K 3), so
``unet_shallow`` and ``unet_shallow_grounded`` are seen. Give
requests like the ones you will run (``--calibration REQUEST.json ...``): a model's ranges follow
its prompts, and other modalities need their own inputs (keypoints, maps, images).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import Modality
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.engines.spec import UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED

from .arrays import Array
from .backend import Backend, make_backend
from .folder import EngineFolder

UNETS = (UNET, UNET_PLAIN, UNET_SHALLOW, UNET_SHALLOW_GROUNDED)
DEFAULT_SAMPLES = 16  # per engine; 12 over two trajectories gave benchmarks/results/int8_activations
_SCENES = (
    (
        "a cozy living room with a sofa, a lamp and a painting, photo",
        (("a grey sofa", (0.05, 0.55, 0.70, 0.95)), ("a floor lamp", (0.75, 0.15, 0.95, 0.90))),
    ),
    ("a dog sitting on a beach at sunset", (("a dog", (0.30, 0.35, 0.75, 0.90)),)),
    (
        "a street with a red car and a bicycle, city, daytime",
        (
            ("a red car", (0.05, 0.50, 0.55, 0.90)),
            ("a bicycle", (0.60, 0.45, 0.90, 0.90)),
            ("a traffic light", (0.70, 0.05, 0.80, 0.40)),
        ),
    ),
    ("a bowl of fruit on a wooden table", (("a bowl of fruit", (0.20, 0.30, 0.80, 0.75)),)),
)
DEFAULT_REQUESTS = tuple(
    GenerationRequest(
        prompt=prompt,
        objects=tuple(GroundedObject(phrase=p, box=b) for p, b in objects),
        seed=101 + i,
        steps=20,
        guidance=7.5,
    )
    for i, (prompt, objects) in enumerate(_SCENES)
)


class _Recording(Backend):
    """A backend that runs another and keeps a copy of every input of the engines it records."""

    def __init__(self, inner: Backend, engines: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.arrays = inner.arrays
        self.specs = inner.specs  # the same dict: load / release fill and empty it
        self.recorded: dict[str, list[dict[str, np.ndarray]]] = {e: [] for e in engines}

    def load(self, folder: EngineFolder, engines: Sequence[str]) -> None:
        self.inner.load(folder, engines)

    def run(self, engine: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        if engine in self.recorded:
            self.recorded[engine].append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return self.inner.run(engine, inputs)

    def release(self, engines: Sequence[str]) -> None:
        self.inner.release(engines)

    def close(self) -> None:
        self.inner.close()


def default_requests(folder: EngineFolder, size: tuple[int, int] | None = None) -> list[GenerationRequest]:
    """DEFAULT_REQUESTS at ``size`` (height, width; default: the model's size), with the feature cache
    where the folder has ``unet_shallow`` (and on the grounded steps where it has
    ``unet_shallow_grounded``); RequestError for a model that is not text-box."""
    config = folder.config
    if config.modality is not Modality.TEXT_BOX or config.inpaint:
        kind = f"{'inpainting ' if config.inpaint else ''}{config.modality.value}"
        raise RequestError(
            f"the default calibration requests are text-box: give a {kind} model its own "
            "with --calibration REQUEST.json ..."
        )
    h, w = size if size is not None else (config.default_size, config.default_size)
    cache = 3 if UNET_SHALLOW in folder.specs else 0
    grounded = 3 if UNET_SHALLOW_GROUNDED in folder.specs else 0
    return [
        dataclasses.replace(r, height=h, width=w, feature_cache=cache, feature_cache_grounded=grounded)
        for r in DEFAULT_REQUESTS
    ]


def read_requests(paths: Sequence[str | os.PathLike[str]]) -> list[GenerationRequest]:
    """Calibration requests from request JSON files (the `generate --request` schema)."""
    from gligen_rt.core.request import request_from_json

    return [request_from_json(p) for p in paths]


def collect(
    path: str | os.PathLike[str],
    requests: Sequence[GenerationRequest] | None = None,
    *,
    engines: Sequence[str] = UNETS,
    samples: int = DEFAULT_SAMPLES,
    size: tuple[int, int] | None = None,
    threads: int | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """{engine: calibration inputs} for the UNets among ``engines`` that the folder at ``path`` holds.

    Each request is generated on OpenVINO FP32 from the folder's exported graphs; every call of a
    recorded engine is kept, then ``samples`` per engine, evenly spread over the calls (all of them
    when there are fewer; half from the grounded calls of a UNet that also runs plain steps). requests: default ``default_requests(folder, size)``. A request whose
    guidance is 1 runs the UNets at batch 1 and a feature-cache request needs the folder's
    ``unet_shallow``; every request must give the UNets the same shapes (one size, one image count).
    """
    from .pipeline import GligenPipeline

    if samples < 1:
        raise RequestError(f"calibration samples {samples}: give at least 1")
    folder = EngineFolder.open(path)
    wanted = [e for e in engines if e in UNETS and e in folder.specs]
    if not wanted:
        return {}
    requests = list(requests) if requests is not None else default_requests(folder, size)
    if not requests:
        raise RequestError("no calibration requests: give at least one")
    recorder = _Recording(make_backend("openvino", threads=threads), wanted)
    with GligenPipeline(folder, recorder) as pipe:
        for request in requests:
            pipe.check_request(request)
            pipe(request)
    chosen: dict[str, list[dict[str, np.ndarray]]] = {}
    for engine, calls in recorder.recorded.items():
        if not calls:
            continue
        shapes = {tuple(sorted((k, v.shape) for k, v in c.items())) for c in calls}
        if len(shapes) > 1:
            raise RequestError(
                f"calibration requests give {engine} inputs of {len(shapes)} shapes: "
                "use one size and one image count for every request"
            )
        chosen[engine] = _spread(calls, samples)
    return chosen


def _spread(calls: list[dict[str, np.ndarray]], samples: int) -> list[dict[str, np.ndarray]]:
    """``samples`` of ``calls`` evenly spread; a UNet that runs both phases (gate-skip, or
    ``unet`` at gate 0) gets half of them from its grounded calls, so the fusers' ranges (seen on
    those only) are not left to the few grounded steps of a short beta."""

    def even(items: list[dict[str, np.ndarray]], n: int) -> list[dict[str, np.ndarray]]:
        if n <= 0 or not items:
            return []
        pick = np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)
        return [items[i] for i in sorted(set(pick.tolist()))]

    is_grounded = ["gate" in c and float(np.asarray(c["gate"]).ravel()[0]) != 0.0 for c in calls]
    grounded = [c for c, g in zip(calls, is_grounded, strict=True) if g]
    plain = [c for c, g in zip(calls, is_grounded, strict=True) if not g]
    if not grounded or not plain:
        return even(calls, samples)
    first = even(grounded, (samples + 1) // 2)
    return first + even(plain, samples - len(first))


def describe(calibration: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """What a build records of its calibration: inputs per engine and their shapes."""
    return {
        engine: {
            "samples": len(feeds),
            "shapes": {k: list(np.shape(v)) for k, v in feeds[0].items()} if feeds else {},
        }
        for engine, feeds in calibration.items()
    }


def for_build(
    onnx_dir: Path,
    request_paths: Sequence[Path] | None,
    samples: int,
    static: tuple[int, int, int] | None,
    threads: int | None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """``gligen-rt build --backend openvino-int8a``'s calibration (engines/build.py ``Calibrate``):
    the given requests or the defaults, at the static build's image count and size when there is one."""
    folder = EngineFolder.open(onnx_dir)
    if request_paths:
        requests = read_requests(request_paths)
    else:
        size = (static[1], static[2]) if static is not None else None
        requests = default_requests(folder, size)
    if static is not None:
        requests = [dataclasses.replace(r, num_images=static[0]) for r in requests]
    return collect(onnx_dir, requests, samples=samples, threads=threads)
