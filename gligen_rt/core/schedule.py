"""Scheduled sampling as data: per-step fuser gates and the per-step plan.

GLIGEN turns grounding off late in sampling ("scheduled sampling"). Two ways to say how:

- the original repository's ``alpha_type`` [a, b, c] (``alpha_generator``): a fraction a of the
  steps fully grounded (gate 1), a fraction b decaying linearly, the rest plain SD (gate 0);
- diffusers' ``beta`` (``beta_gates``): the first int(beta * steps) steps grounded, then plain.

Both reproduce their source's float expressions exactly (``int()`` truncation, ``np.arange`` decay),
so the gates are bit-identical to the original / diffusers for the same inputs.

``make_plan`` joins the scheduler's timesteps and the gates into one tuple of ``PlanStep``: the
denoising loop is a single ``for`` over it, nothing is flipped mid-loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gligen_rt.core.errors import RequestError

ENGINE_GROUNDED = "unet"  # UNet with fusers; the gate multiplies every fuser's residual
ENGINE_PLAIN = "unet_plain"  # SD without fusers (what gate 0 computes, cheaper)
ENGINE_SHALLOW = "unet_shallow"  # the feature cache's reuse steps: first and last UNet levels only
ENGINE_SHALLOW_GROUNDED = "unet_shallow_grounded"  # the same on grounded steps, with their fusers

_SUM_TOLERANCE = 1e-6


def _check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise RequestError(f"the number of sampling steps must be a positive integer, got {length!r}")
    return int(length)


def _check_fraction(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise RequestError(f"{name} {value!r} is outside [0, 1]")
    return v


def alpha_generator(length: int, alpha_type: Sequence[float]) -> tuple[float, ...]:
    """The original GLIGEN per-step gates ``alphas`` for ``alpha_type`` = [a, b, c].

    n0 = int(a * length) steps of 1.0, then n1 = int(b * length) steps of
    ``np.arange(0, 1, 1 / n1)[::-1]`` (starts below 1, ends at 0; empty if n1 == 0), then the
    remaining ``length - n0 - n1`` steps of 0.0.

    Args:
        length: number of sampling steps (``len(scheduler.timesteps)``), >= 1.
        alpha_type: three fractions in [0, 1] summing to 1 (within 1e-6; the original demands
            exact equality, which rejects e.g. [0.1, 0.2, 0.7]).

    Returns:
        ``length`` python floats in [0, 1].

    Raises:
        RequestError: invalid length or alpha_type, or a decay length for which ``np.arange``
            yields one value too many (float rounding, e.g. n1 = 49): the original fails an
            assertion there.
    """
    length = _check_length(length)
    values = list(alpha_type) if not isinstance(alpha_type, (str, bytes)) else []
    if len(values) != 3:
        raise RequestError(f"alpha_type must be 3 numbers [a, b, c], got {alpha_type!r}")
    a, b, c = (_check_fraction(v, "alpha_type entry") for v in values)
    if abs(a + b + c - 1.0) > _SUM_TOLERANCE:
        raise RequestError(f"alpha_type {values!r} must sum to 1 (grounded, decaying, plain fractions)")

    n0 = int(a * length)
    n1 = int(b * length)
    n2 = length - n0 - n1
    decay = [float(v) for v in np.arange(0, 1, 1 / n1)[::-1]] if n1 != 0 else []
    if len(decay) != n1 or n2 < 0:
        raise RequestError(
            f"alpha_type {values!r} over {length} steps gives a decay of {n1} steps that the original's "
            f"np.arange(0, 1, 1/{n1}) cannot produce exactly: change b or the step count slightly"
        )
    return tuple([1.0] * n0 + decay + [0.0] * n2)


def beta_gates(length: int, beta: float) -> tuple[float, ...]:
    """diffusers' scheduled sampling: ``int(beta * length)`` steps of gate 1.0, then 0.0.

    Same float expression as diffusers (``int(0.29 * 100) == 28``).

    Args:
        length: number of sampling steps, >= 1.
        beta: grounded fraction in [0, 1].

    Returns:
        ``length`` python floats, each 1.0 or 0.0.
    """
    length = _check_length(length)
    beta = _check_fraction(beta, "beta")
    grounded = int(beta * length)
    return tuple([1.0] * grounded + [0.0] * (length - grounded))


@dataclass(frozen=True)
class PlanStep:
    """One denoising step.

    index: position in the loop (0 = first, noisiest); ``scheduler.step(x, index, eps_fn)``.
    timestep: the scheduler's model timestep for this step (int for plms/ddim/dpmpp_2m; a float
        for euler, whose timesteps are fractional).
    gate: multiplies every fuser's residual (the original's per-step ``scale``), in [0, 1].
    engine: ``"unet"`` (grounded, uses ``gate``), ``"unet_plain"`` (gate is 0) or, with the feature
        cache, ``"unet_shallow"`` (gate is 0; reuses the ``deep`` output of the last plain step that
        ran a whole UNet) or ``"unet_shallow_grounded"`` (uses ``gate``; reuses the ``deep`` of the
        last grounded step that ran the whole ``"unet"``).
    """

    index: int
    timestep: int | float
    gate: float
    engine: str


def make_plan(
    timesteps: Sequence[float] | np.ndarray,
    gates: Sequence[float],
    plain_available: bool,
    feature_cache: int = 0,
    feature_cache_grounded: int = 0,
) -> tuple[PlanStep, ...]:
    """Join timesteps and gates into the per-step plan.

    Steps with gate 0 run ``"unet_plain"`` when that engine exists, else ``"unet"`` with gate 0.
    With ``feature_cache`` K >= 2, of the gate-0 steps the 1st, (K+1)-th, (2K+1)-th ... run so (and
    give ``deep``), the others ``"unet_shallow"`` (DeepCache's uniform interval). With
    ``feature_cache_grounded`` K >= 2 the grounded steps do the same with ``"unet"`` and
    ``"unet_shallow_grounded"``. Each run of one phase counts from its first step, which runs whole.

    Args:
        timesteps: (S,) the scheduler's timesteps, in loop order (descending).
        gates: S gates in [0, 1] (``alpha_generator`` / ``beta_gates``).
        plain_available: whether a plain-SD UNet engine was built.
        feature_cache: the interval K on the plain steps (0 or 1: off).
        feature_cache_grounded: the interval K on the grounded steps (0 or 1: off).

    Returns:
        S ``PlanStep`` in loop order.
    """
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or len(ts) != len(gates):
        raise ValueError(f"timesteps {ts.shape} and gates ({len(gates)},) must be 1-D of equal length")
    integral = np.issubdtype(ts.dtype, np.integer)
    plan = []
    run = 0  # steps since the phase (grounded / plain) last changed: a shallow step reuses `deep`
    # of a whole step of its own phase, so each run of one phase starts whole
    for i, (t, g) in enumerate(zip(ts.tolist(), gates)):
        gate = float(g)
        if not (0.0 <= gate <= 1.0) or math.isnan(gate):
            raise ValueError(f"gate {g!r} at step {i} is outside [0, 1]")
        if i and (gate == 0.0) != (plan[-1].gate == 0.0):
            run = 0
        engine = ENGINE_PLAIN if gate == 0.0 and plain_available else ENGINE_GROUNDED
        k = feature_cache if gate == 0.0 else feature_cache_grounded
        if k >= 2 and run % k != 0:
            engine = ENGINE_SHALLOW if gate == 0.0 else ENGINE_SHALLOW_GROUNDED
        run += 1
        plan.append(PlanStep(index=i, timestep=int(t) if integral else float(t), gate=gate, engine=engine))
    return tuple(plan)


def request_gates(beta: float | None, alpha_type, modality, inpaint: bool, steps: int) -> tuple[float, ...]:
    """Per-step fuser gates of a request: diffusers' `beta` fraction, else the original `alpha_type`
    [a, b, c], else the modality's default from the original repository."""
    from gligen_rt.core.modality import default_alpha_type

    if beta is not None:
        return beta_gates(steps, beta)
    return alpha_generator(steps, alpha_type or default_alpha_type(modality, inpaint))
