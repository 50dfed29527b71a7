"""The grounded denoising loop: one ``for`` over the per-step plan, on any backend's arrays.

Per step (gligen_ref/pipeline.py, step 6, the same arithmetic in the same order):

    inpainting:  x <- add_noise(z0, noise_i, i) * mask + x * (1 - mask)
    eps_fn(x_in, t):
        sample = [x_in; x_in]                     (2B, 4, h, w)   (B when guidance is 1: cond only)
        eps    = run(step.engine, sample, timestep (1,), context, tokens, gate (1,), extra)
        eps    = eps_u + s * (eps_c - eps_u)
    x <- scheduler.step(x, i, eps_fn)             (PLMS calls eps_fn twice on its first step)

With the feature cache (``request.feature_cache`` / ``feature_cache_grounded``), the plan's
``unet_shallow`` / ``unet_shallow_grounded`` steps take ``deep``, which the last whole-UNet step
returned beside ``eps`` (kept here, one array, replaced each time; the plan starts each phase whole).

The CFG blend and the inpainting blend are gligen_rt.core.flow's (shared with the reference).
The engine of a step and its gate come from the plan (``PlanStep``); what each engine takes is
read from its spec's input names, so the loop never branches on modality or backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gligen_rt.core.flow import inpaint_blend, make_eps_fn
from gligen_rt.core.schedule import PlanStep
from gligen_rt.core.schedulers import Scheduler

from .arrays import Array, HostArrays


@dataclass
class Conditioning:
    """Everything constant across steps, as backend arrays.

    context: (2B, 77, D) float32 [uncond x B; cond x B] (B rows when unguided).
    tokens: (2B, N, D) float32 grounding tokens [null; real].
    extra: (2B, k, h, w) float32 or None: spatial downsampler map, or inpainting [z0 * mask, mask].
    guidance: the CFG scale s; 1.0 runs the conditional half only.
    """

    context: Array
    tokens: Array
    extra: Array | None
    guidance: float

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0


@dataclass
class Inpainting:
    """The known region: z0 (B, 4, h, w) clean latent, mask (B, 1, h, w) (1 = keep), and the
    per-step re-noising draws noise (S, B, 4, h, w), all backend arrays."""

    z0: Array
    mask: Array
    noise: Array


EngineRun = Callable[[str, Mapping[str, Array]], dict[str, Array]]


def denoise(
    x: Array,
    plan: tuple[PlanStep, ...],
    scheduler: Scheduler,
    cond: Conditioning,
    run: EngineRun,
    input_names: Mapping[str, tuple[str, ...]],
    arrays: HostArrays,
    *,
    inpainting: Inpainting | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[Array, list[Any]]:
    """Run the plan from x_T.

    Args:
        x: (B, 4, h, w) float32 initial latent, already times ``scheduler.init_noise_sigma``.
        plan: the per-step (timestep, gate, engine) plan, in loop order.
        scheduler: a fresh scheduler over the plan's timesteps.
        cond: context, tokens, extra, guidance.
        run: ``run(engine, inputs) -> outputs`` (a backend's run, possibly timed).
        input_names: {engine: its input names in spec order} for "unet" / "unet_plain" /
            "unet_shallow" / "unet_shallow_grounded".
        arrays: the backend's array library.
        inpainting: the known region, or None.
        on_step: called as on_step(i, S) after each step.

    Returns:
        the denoised latent (B, 4, h, w) float32 and S + 1 marks of the backend's clock
        (``arrays.mark``) around the steps; nothing here waits for the device.
    """
    cache: dict[float, Array] = {}

    def scalar(v: float) -> Array:
        """(1,) float32 backend array, made once per value (timesteps, gates)."""
        if v not in cache:
            cache[v] = arrays.asarray(np.array([v], dtype=np.float32))
        return cache[v]

    for step in plan:
        scalar(float(step.timestep))
        scalar(step.gate)
    marks = [arrays.mark()]
    feeds_const: dict[str, Any] = {"context": cond.context, "tokens": cond.tokens}
    if cond.extra is not None:
        feeds_const["extra"] = cond.extra
    kept: dict[str, Array] = {}  # the feature cache: "deep" of the last whole-UNet call
    for step in plan:
        if inpainting is not None:
            known = scheduler.add_noise(inpainting.z0, inpainting.noise[step.index], step.index)
            x = inpaint_blend(x, known, inpainting.mask)
        gate = scalar(step.gate)
        names = input_names[step.engine]

        def unet(
            sample: Array, t: float, engine: str = step.engine, gate: Array = gate, names=names
        ) -> Array:
            available = {**feeds_const, "sample": sample, "timestep": scalar(float(t)), "gate": gate}
            if "deep" in names:
                if "deep" not in kept:
                    raise ValueError(
                        f"{engine} has no deep features yet: the plan must run a whole UNet first"
                    )
                available["deep"] = kept["deep"]
            out = run(engine, {n: available[n] for n in names})
            if "deep" in out:
                kept["deep"] = out["deep"]
            return out["eps"]

        x = scheduler.step(x, step.index, make_eps_fn(unet, cond.guidance, arrays.concat))
        marks.append(arrays.mark())
        if on_step is not None:
            on_step(step.index, len(plan))
    return x, marks
